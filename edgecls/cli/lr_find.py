"""`edgecls lr-find DATASET_DIR [train.py flags]`: the learning-rate range test, its chart and a suggestion.

It takes train.py's flags (backbone, recipe, batch size ...), sweeps the rate for --steps optimizer
steps with the model restored afterwards, prints the suggested rate and writes the loss-vs-rate PNG.
`train.py --lr auto` runs the same test before training.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from edgecls.cli.common import run_cli
from edgecls.engine.config import TrainConfig
from edgecls.errors import UserError
from edgecls.settings import SWITCH, build_parser, flag_names, parse_command_line, setting

RANGE = "range test"


@dataclass
class LrFindCommand(TrainConfig):
    steps: int = setting(100, "optimizer steps of the sweep", group=RANGE, parse=int, at_least=5)
    start_lr: float = setting(1e-7, "the rate the sweep starts at", group=RANGE, parse=float, within="(0, inf)")
    end_lr: float = setting(10.0, "the rate the sweep ends at", group=RANGE, parse=float, within="(0, inf)")
    out: str = setting("lr_find.png", "the loss-vs-rate chart", group=RANGE)
    force: bool = setting(
        False, "replace an existing --out file that is not this tool's chart", group=RANGE, kind=SWITCH
    )


FLAGS = flag_names(LrFindCommand)


def get_args_parser():
    return build_parser(
        LrFindCommand,
        prog="edgecls lr-find",
        description="Learning-rate range test: a short sweep of rising rates on DATASET_DIR, the loss recorded, "
        "a suggested --lr printed and a chart written. The model is restored after; nothing else is written.",
    )


def main(argv: list[str] | None = None) -> int:
    from edgecls.engine.lr_find import find_lr, plot_range_test

    values, _ = parse_command_line(LrFindCommand, get_args_parser(), argv)
    own = {f.name for f in fields(LrFindCommand)} - {f.name for f in fields(TrainConfig)}
    extra = {k: values.pop(k) for k in own}
    cfg = TrainConfig(**values)
    LrFindCommand(**values, **extra).check()
    out = Path(extra["out"])
    if out.exists() and (out.is_dir() or (out.name != "lr_find.png" and not extra["force"])):
        raise UserError(f"`out` {out}: already exists; pass `force` to replace it or choose another `out`")
    if extra["end_lr"] <= extra["start_lr"]:
        raise UserError(f"`end_lr` {extra['end_lr']:g}: must be above `start_lr` {extra['start_lr']:g}")
    result = find_lr(cfg, steps=extra["steps"], start=extra["start_lr"], end=extra["end_lr"])
    plot_range_test(result, out, f"{cfg.backbone} on {cfg.data}: lr range test")
    stopped = " (stopped when the loss diverged)" if result.stopped_early else ""
    if result.suggestion is None:
        print(f"no suggestion: only {result.steps} steps{stopped}; see {out}")
        return 1
    print(f"swept {result.lrs[0]:.1e} .. {result.lrs[-1]:.1e} over {result.steps} steps{stopped}")
    print(f"suggested lr: {result.suggestion:.3g}   (train.py ... --lr {result.suggestion:.3g}, or --lr auto)")
    print(f"wrote {out}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)
