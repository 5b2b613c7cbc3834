"""`pytorch2onnx.py` / `edgecls export`: checkpoint -> verified, NPU-ready ONNX (+ INT8).

Exit status: 0 all steps passed; 1 verification or the chip-profile check failed; 2 bad input.
"""

from __future__ import annotations

import argparse
import sys

from edgecls.cli.common import (
    DefaultsHelpFormatter,
    add_config_flag,
    parse_size,
    parse_with_config,
    require_at_least,
    run_cli,
)
from edgecls.export.onnx_export import DEFAULT_OPSET, SUPPORTED_OPSETS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="pytorch2onnx.py",
        formatter_class=DefaultsHelpFormatter,
        description="Export a trained checkpoint to ONNX that gives PyTorch's answers, is small, and uses only "
        "operators the chosen NPU runs; optionally quantize to INT8.",
    )
    src = p.add_argument_group("model (Kneron flags)")
    src.add_argument(
        "--snapshot", required=True, help="checkpoint (.pth) from train.py, or a bare state_dict with --backbone"
    )
    src.add_argument("--backbone", default=None, help="backbone name; read from the checkpoint when omitted")
    src.add_argument(
        "--num_classes",
        "--num-classes",
        dest="num_classes",
        type=int,
        default=None,
        help="number of classes; read from the checkpoint when omitted",
    )
    src.add_argument("--model-def-path", default="./models/", help="folder of user model definitions (plugins)")
    src.add_argument("--save-path", default=None, help="output .onnx (default: the snapshot path with .onnx)")
    src.add_argument("--force", action="store_true", help="overwrite existing output files")
    add_config_flag(src)

    graph = p.add_argument_group("graph")
    graph.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        choices=SUPPORTED_OPSETS,
        help="ONNX opset; 13 is the newest NPU toolchains read and the first with per-channel "
        "QuantizeLinear (INT8 --quantize); use 11 for older converters",
    )
    graph.add_argument(
        "--input-size", type=parse_size, default=None, help="H or HxW; default the checkpoint's training size"
    )
    graph.add_argument("--dynamic-batch", action="store_true", help="dynamic batch axis (NPUs want fixed batch 1)")
    graph.add_argument("--softmax", action="store_true", help="append Softmax so the graph outputs probabilities")
    graph.add_argument("--no-simplify", dest="simplify", action="store_false", help="skip onnxsim/onnxslim")
    graph.add_argument(
        "--no-bn-fusion",
        dest="bn_fusion",
        action="store_false",
        help="keep BatchNormalization nodes (workaround for compilers that choke on fused names)",
    )

    check = p.add_argument_group("checks")
    check.add_argument("--profile", default="kl520", help="chip profile: kl520, kl720, generic, or a profile .yaml")
    check.add_argument(
        "--verify-dir",
        default=None,
        help="images to compare ONNX Runtime with PyTorch on (default: the run's val/ images, else generated)",
    )
    check.add_argument(
        "--verify-count",
        type=int,
        default=200,
        help="at most this many verification images, spread over the folder (at most 32 generated)",
    )

    q = p.add_argument_group("INT8")
    q.add_argument("--quantize", choices=["int8"], default=None, help="also write an INT8 (QDQ) model")
    q.add_argument("--calib-dir", default=None, help="calibration images (e.g. DATASET/train)")
    q.add_argument(
        "--calib-count", type=int, default=100, help="at most this many calibration images, spread over --calib-dir"
    )
    q.add_argument("--int8-save-path", default=None, help="INT8 output (default: SAVE_PATH with .int8.onnx)")
    return p


def main(argv: list[str] | None = None) -> int:
    from edgecls.export.pipeline import ExportOptions, run_export

    args = parse_with_config(build_parser(), argv)
    require_at_least(args, {"verify_count": 1, "calib_count": 1})
    opts = ExportOptions(**{k: v for k, v in vars(args).items() if k != "config"})
    result = run_export(opts)
    print(result.summary())
    return 0 if result.ok else 1


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
