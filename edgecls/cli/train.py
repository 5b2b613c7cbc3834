"""`train.py DATASET_DIR`: Kneron's flags and defaults, plus resume, seed, presets, AMP, config.

The flags are generated from TrainConfig (edgecls.engine.config); this module only parses and calls fit.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from edgecls.cli.common import run_cli, threads_setting
from edgecls.engine.config import HARDWARE, STOP, TrainConfig
from edgecls.engine.recipes import RECIPE_FIELDS, defaults_text
from edgecls.settings import build_parser, flag_names, parse_command_line, setting


@dataclass
class TrainCommand(TrainConfig):
    """train.py's settings: the training's, plus the run folder to resume."""

    resume: str | None = setting(
        None, "continue a run folder (its last.pth) or a last.pth file", group=STOP, metavar="RUN_OR_CKPT"
    )
    threads: int = threads_setting(
        HARDWARE,
        workers=" (and the DataLoader workers when they decode every epoch)",
        note=". Logged at the start; may change on --resume",
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


def parse_command(argv: list[str]) -> tuple[TrainCommand, dict, set[str]]:
    """(the command's settings, every training field's value, the fields the user gave)."""
    values, given = parse_command_line(TrainCommand, get_args_parser(), argv)
    command = TrainCommand(**values)
    for name in ("resume", "threads"):  # the command's own: not training settings, never recorded
        values.pop(name)
    return command, values, given


def parse(argv: list[str]) -> tuple[TrainConfig, str | None, dict, set[str]]:
    """(the settings, the run to resume or None, every field's value, the fields the user gave)."""
    command, values, given = parse_command(argv)
    return TrainConfig(**values), command.resume, values, given


def resume_command(run_dir: Path, data: str | None) -> str:
    """The command that continues run_dir on its dataset, spelled as this one was started (train.py or edgecls
    train)."""
    script = sys.argv[0] if Path(sys.argv[0]).name == "train.py" else None
    prog = f"python {shlex.quote(script)}" if script else "edgecls train"
    dataset = f" {shlex.quote(str(data))}" if data else ""
    return f"{prog}{dataset} --resume {shlex.quote(str(run_dir))}"


def interrupted_text(stop) -> str:
    """What a Ctrl-C'd run prints: where it stopped and the exact command that continues it."""
    if stop.epochs_done == 0:
        return (
            f"interrupted in epoch 1: no epoch finished, so {stop.run_dir} holds no checkpoint; "
            "run the same command again to start over"
        )
    return (
        f"interrupted: {stop.run_dir / 'last.pth'} holds epoch {stop.epochs_done} of {stop.epochs} (the last "
        f"complete one); continue with:\n  {resume_command(stop.run_dir, stop.data)}"
    )


def quit_now(stop) -> None:
    """A second Ctrl-C: the hint, then exit at once (from the signal handler: no exception to unwind)."""
    print(interrupted_text(stop), file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(130)


def main(argv: list[str] | None = None) -> int:
    from edgecls.engine.budget import ApplyThreadBudget
    from edgecls.engine.interrupt import StopOnCtrlC, TrainingInterrupted
    from edgecls.engine.trainer import fit, resume

    argv = sys.argv[1:] if argv is None else argv
    command, values, given = parse_command(argv)
    cfg = TrainConfig(**values)
    command.check()
    stopper = StopOnCtrlC(quit=quit_now)
    hooks = [ApplyThreadBudget(command.threads), stopper]
    try:
        with stopper:
            if command.resume:
                resume(command.resume, {k: values[k] for k in given if k in values}, callbacks=hooks)
            else:
                fit(cfg, callbacks=hooks)
    except TrainingInterrupted as stop:
        print(interrupted_text(stop), file=sys.stderr, flush=True)
        return 130
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)
