"""`train.py DATASET_DIR`: Kneron's flags and defaults, plus resume, seed, presets, AMP, config.

The flags are generated from TrainConfig (edgecls.engine.config); this module only parses and calls fit.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from edgecls.cli.common import run_cli
from edgecls.engine.config import STOP, TrainConfig
from edgecls.engine.recipes import RECIPE_FIELDS, defaults_text
from edgecls.settings import build_parser, flag_names, parse_command_line, setting


@dataclass
class TrainCommand(TrainConfig):
    """train.py's settings: the training's, plus the run folder to resume."""

    resume: str | None = setting(
        None, "continue a run folder (its last.pth) or a last.pth file", group=STOP, metavar="RUN_OR_CKPT"
    )


FLAGS = flag_names(TrainCommand)


def get_args_parser() -> argparse.ArgumentParser:
    return build_parser(
        TrainCommand,
        prog="train.py",
        description="Train an image classifier on DATASET_DIR/train/<class>/ and validate on DATASET_DIR/val/<class>/.",
        epilog="Distributed: torchrun --nproc-per-node N train.py ... (gloo on CPU, NCCL with --gpu). "
        "Backbones: python -m edgecls models.",
        help_notes={field: f"default by recipe: {defaults_text(field)}" for field in RECIPE_FIELDS},
    )


def parse(argv: list[str]) -> tuple[TrainConfig, str | None, dict, set[str]]:
    """(the settings, the run to resume or None, every field's value, the fields the user gave)."""
    values, given = parse_command_line(TrainCommand, get_args_parser(), argv)
    target = values.pop("resume")
    return TrainConfig(**values), target, values, given


def main(argv: list[str] | None = None) -> int:
    import sys

    from edgecls.engine.trainer import fit, resume

    argv = sys.argv[1:] if argv is None else argv
    cfg, target, values, given = parse(argv)
    cfg.check()
    if target:
        resume(target, {k: values[k] for k in given if k in values})
    else:
        fit(cfg)
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)
