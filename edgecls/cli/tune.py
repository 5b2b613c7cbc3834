"""`edgecls tune DATA --trials N`: resumable hyperparameter search (Optuna), on one machine or many.

The flags are generated from TuneConfig (edgecls.tune.settings): the search's own, plus every train.py
flag that sets what each trial starts from. This module only parses, calls edgecls.tune and prints.
"""

from __future__ import annotations

import argparse

from edgecls.cli.common import run_cli
from edgecls.settings import build_parser, flag_names, parse_command_line
from edgecls.tune.settings import SEARCH, TuneConfig

FLAGS = flag_names(TuneConfig)


def get_args_parser() -> argparse.ArgumentParser:
    parser = build_parser(
        TuneConfig,
        prog="edgecls tune",
        description="Search train.py's settings on DATASET_DIR with Optuna (TPE, Hyperband pruning). Running the "
        "same command again continues the study; several processes (--storage for several machines) share it.",
        epilog="The other flags are train.py's: they set what every trial starts from, and the search space "
        "(--space) overrides the ones it searches. Study folder, space file format, multi-machine setup: "
        "docs/tune.md.",
        config_at="trials",  # --config among the search's own flags
    )
    # --help lists the search's own flags first, then train.py's (argparse prints groups in creation order)
    groups = parser._action_groups
    groups.sort(key=lambda g: 0 if g.title in ("positional arguments", "options") else 1 if g.title == SEARCH else 2)
    return parser


def main(argv: list[str] | None = None) -> int:
    import sys

    from edgecls.tune.study import tune

    argv = sys.argv[1:] if argv is None else argv
    values, _ = parse_command_line(TuneConfig, get_args_parser(), argv)
    summary = tune(TuneConfig(**values), log=lambda line: print(line, flush=True))
    c = summary.counts
    best = "no complete trial" if summary.best_number is None else (
        f"best {summary.best_value:.4f} (trial {summary.best_number})")  # fmt: skip
    print(
        f"\nstudy {summary.study!r}: {c['complete'] + c['pruned'] + c['failed']} of {summary.trials} trials finished "
        f"({c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed, {c['retried']} retried); {best}"
    )
    print(f"study folder {summary.study_dir}: {summary.disk_mb:.1f} MB (trials.csv, best.yaml, best.pth, plots)")
    for note in summary.notes:
        print(f"note: {note}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)
