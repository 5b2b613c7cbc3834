"""`edgecls demo-data` (also `python -m edgecls.data.demo`): write the bundled demo digits as an image folder."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from edgecls.cli.common import run_cli
from edgecls.settings import build_parser, check, flag_names, setting


@dataclass
class DemoCommand:
    out: str = setting("demo_data", "output folder (default: demo_data)")
    source: str = setting("mnist", "(default: mnist)", choices=("mnist", "digits"))
    val_fraction: float = setting(
        0.2,
        "share of each class for val/, between 0 and 1 exclusive (default: 0.2)",
        parse=float,
        within="(0, 1)",
    )
    seed: int = setting(0, "(default: 0)", parse=int, at_least=0)
    limit: int | None = setting(None, "keep only N images, N >= 1 (default: all)", parse=int, at_least=1)


FLAGS = flag_names(DemoCommand)


def get_args_parser():
    return build_parser(
        DemoCommand,
        prog="edgecls demo-data",
        description="Write the bundled demo digits as an image-folder dataset.",
        config=False,
    )


def main(argv: list[str] | None = None) -> int:
    from edgecls.data.demo import build_demo_dataset

    s = DemoCommand(**vars(get_args_parser().parse_args(argv)))
    check(s)
    out = build_demo_dataset(s.out, s.source, s.val_fraction, s.seed, s.limit)
    print(f"wrote demo dataset to {out}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(cli())
