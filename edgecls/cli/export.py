"""`pytorch2onnx.py` / `edgecls export`: checkpoint -> verified, NPU-ready ONNX (+ INT8).

The flags are generated from ExportOptions (edgecls.export.options); the pipeline is edgecls.export's.
Exit status: 0 all steps passed; 1 verification or the chip-profile check failed; 2 bad input.
"""

from __future__ import annotations

import sys

from edgecls.cli.common import run_cli
from edgecls.export.options import ExportOptions
from edgecls.settings import build_parser as build_settings_parser
from edgecls.settings import flag_names, parse_command_line

FLAGS = flag_names(ExportOptions)


def build_parser():
    return build_settings_parser(
        ExportOptions,
        prog="pytorch2onnx.py",
        description="Export a trained checkpoint to ONNX that gives PyTorch's answers, is small, and uses only "
        "operators the chosen NPU runs; optionally quantize to INT8.",
        config_at="force",
    )


def main(argv: list[str] | None = None) -> int:
    from edgecls.export.pipeline import run_export
    from edgecls.threads import configure

    values, _ = parse_command_line(ExportOptions, build_parser(), argv)
    opts = ExportOptions(**values)
    opts.check()
    configure(log=print)  # the process's thread budget (edgecls/threads.py), for the verification forwards
    result = run_export(opts)
    print(result.summary())
    return 0 if result.ok else 1


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(cli())
