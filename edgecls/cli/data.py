"""`edgecls data split|verify|augment|import|stats|pack`: dataset tools (argument parsing and printing only).

Each subcommand's flags are generated from its settings dataclass below; the tools are edgecls.data.tools'.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from edgecls.cli.common import run_cli
from edgecls.data.tools.pack import PackConfig
from edgecls.errors import UserError
from edgecls.settings import (
    POSITIONAL,
    SWITCH,
    DefaultsHelpFormatter,
    add_settings,
    check,
    flag_names,
    parse_size,
    setting,
)

LAYOUT_HELP = "DIR/train|val|test/<class>/ or DIR/<class>/"


@dataclass
class SplitCommand:
    dir: str | None = setting(
        None, "a folder of class folders, or a dataset with train/", kind=POSITIONAL, metavar="DIR"
    )
    val_fraction: float = setting(0.2, "share of each class for val/", group="split", parse=float, within="(0, 1)")
    test_fraction: float = setting(
        0.0, "share of each class for test/ (0: no test/)", group="split", parse=float, within="[0, 1)"
    )
    seed: int = setting(0, "same seed, same split", group="split", parse=int)
    move: bool = setting(False, "DIR/<class>/ input: move instead of copying", group="safety", kind=SWITCH)
    force: bool = setting(
        False,
        "re-split when val/ or test/ exist (their images go back into the pool first)",
        group="safety",
        kind=SWITCH,
    )


@dataclass
class VerifyCommand:
    dir: str | None = setting(None, LAYOUT_HELP, kind=POSITIONAL, metavar="DIR")
    min_size: int = setting(
        8, "images with a side below this many pixels are 'tiny'", group="checks", parse=int, at_least=1
    )
    pixel_hash: bool = setting(
        False,
        "find duplicates by decoded pixels (catches re-encoded copies; slower) instead of file bytes",
        group="checks",
        kind=SWITCH,
    )
    workers: int | None = setting(
        None, "processes (default: number of cores, at most 32)", group="checks", parse=int, at_least=1
    )
    no_cache: bool = setting(False, "decode every file again instead of using the cache", group="checks", kind=SWITCH)
    json: str | None = setting(None, "also write the full report as JSON here", group="output", metavar="PATH")
    limit: int = setting(20, "problems shown per kind in the text report", group="output", parse=int, at_least=0)
    quarantine: str | None = setting(
        None,
        "move flagged files to QDIR/<same relative path> (never deletes, never overwrites)",
        group="output",
        metavar="QDIR",
    )
    quarantine_kinds: str = setting(
        "zero-byte,unsupported,corrupt,tiny,duplicate,leakage,label-conflict",
        "which problem kinds --quarantine moves (for duplicates, every copy but the first: "
        "train before val before test; each copy has its own kind against that first file)",
        group="output",
    )
    strict: bool = setting(
        False,
        "exit 1 when problems remain, including anything train.py would refuse (for CI)",
        group="output",
        kind=SWITCH,
    )


@dataclass
class AugmentCommand:
    """The numbers other than `seed` are checked by augment_dataset itself, for every caller."""

    dir: str | None = setting(None, LAYOUT_HELP, kind=POSITIONAL, metavar="DIR")
    target_per_class: int | None = setting(
        None, "images per class after augmentation", group="augmentation", parse=int, required=True
    )
    seed: int = setting(0, "same seed, same images", group="augmentation", parse=int, at_least=0)
    ops: str = setting(
        "distort,hflip,rotate,crop,erase",
        "operations to draw from: distort,hflip,vflip,rotate,crop,erase",
        group="augmentation",
    )
    probability: float = setting(
        0.5, "chance of each operation (at least one always)", group="augmentation", parse=float
    )
    max_rotation: float = setting(15.0, "degrees, either way", group="augmentation", parse=float)
    crop_scale: float = setting(0.75, "smallest crop side, as a share of the image", group="augmentation", parse=float)
    erase_area: float = setting(0.2, "largest erased area, as a share of the image", group="augmentation", parse=float)
    resize: tuple[int, int] | None = setting(
        None,
        "resize every written image (originals too) to HxW",
        group="augmentation",
        parse=parse_size,
        metavar="HxW",
    )
    out: str | None = setting(
        None, "output folder (must be empty, outside DIR)", group="output", metavar="OUT", required=True
    )
    force: bool = setting(
        False,
        "write into a non-empty --out, replacing the augmented files of an earlier run there",
        group="output",
        kind=SWITCH,
    )


@dataclass
class ImportCommand:
    csv: str | None = setting(None, "", kind=POSITIONAL, metavar="LIST.csv")
    out: str | None = setting(None, "dataset folder to fill", group="download", metavar="DIR", required=True)
    timeout: float = setting(
        10.0, "seconds per connection/read (body: 3x)", group="download", parse=float, within="(0, inf)"
    )
    retries: int = setting(
        2,
        "extra attempts on timeouts, resets and HTTP 408, 429, 500, 502, 503, 504",
        group="download",
        parse=int,
        at_least=0,
    )
    max_bytes: int = setting(20_000_000, "largest accepted image file", group="download", parse=int, at_least=1)
    workers: int = setting(8, "parallel downloads", group="download", parse=int, at_least=1)
    report: str | None = setting(
        None, "JSON report (default: OUT/import_report.json)", group="download", metavar="PATH"
    )


@dataclass
class StatsCommand:
    dir: str | None = setting(None, LAYOUT_HELP, kind=POSITIONAL, metavar="DIR")
    png: str | None = setting(None, "histogram file (default: DIR/class_histogram.png)", group="output", metavar="PATH")
    no_png: bool = setting(False, "print the table only", group="output", kind=SWITCH)
    json: str | None = setting(None, "also write the counts as JSON here", group="output", metavar="PATH")
    force: bool = setting(
        False,
        "replace an existing --png or --json file (without it, an existing file is refused)",
        group="output",
        kind=SWITCH,
    )


SUBCOMMANDS = {  # name: (settings, one-line help, description)
    "split": (
        SplitCommand,
        "stratified, seeded train/val(/test) split",
        "Split DIR/<class>/ into DIR/train|val[|test]/<class>/ (copies unless --move), "
        "or move a share of DIR/train/<class>/ into val/ (and test/). Image counts are checked "
        "before = after; nothing is deleted (after a copy, the report says how to remove the originals).",
    ),
    "verify": (
        VerifyCommand,
        "find bad, tiny and duplicate images; counts and sizes",
        "Report zero-byte, unsupported, corrupt and tiny images, files outside any class folder, duplicates "
        "(also across splits: leakage; across classes: label conflicts), everything train.py would refuse "
        "(too few classes, a val/ class unknown to train/, no readable train/ or val/ images), class folders "
        "beside train/ (a second copy), class counts, imbalance and image sizes.",
    ),
    "augment": (
        AugmentCommand,
        "offline augmentation to balance classes",
        "Top every class up to --target-per-class images in OUT, a separate folder. "
        "OUT gets a copy of the originals too, so it is a complete balanced dataset; with "
        "DIR/train/ only train/ is augmented and val/ test/ are copied unchanged. DIR is only read.",
    ),
    "import": (
        ImportCommand,
        "download images listed as url,class,split",
        "Download the images of LIST.csv (url,class[,split]; header optional; split "
        "defaults to train) into OUT/<split>/<class>/. Re-run after an interruption to resume; "
        "failures are retried on the next run.",
    ),
    "stats": (
        StatsCommand,
        "counts per class and split, a class-histogram PNG",
        "Count image files per class and split (no decoding) and plot them; warn about class folders beside "
        "train/ (a second copy of the data).",
    ),
    "pack": (
        PackConfig,
        "pack a dataset into WebDataset tar shards (+ index.json) that train.py reads",
        "Write DIR/train|val|test/<class>/ as WebDataset tar shards of about --shard-size bytes "
        "plus SHARDS/index.json (classes, counts and sha256 per shard, the image size if resized). Images are "
        "verified first (bad ones reported and left out) and shuffled over the shards; shards are written in "
        "parallel, and an interrupted pack resumes when run again. Then: train.py SHARDS.",
    ),
}
FLAGS = flag_names(*(cls for cls, _, _ in SUBCOMMANDS.values()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="edgecls data",
        description="Dataset tools: split, verify, augment, "
        "import, stats, pack. Layouts: DIR/train|val|test/<class>/ or DIR/<class>/.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{split,verify,augment,import,stats,pack}")
    sub.required = True
    for name, (cls, help_, description) in SUBCOMMANDS.items():
        p = sub.add_parser(
            name, allow_abbrev=False, formatter_class=DefaultsHelpFormatter, help=help_, description=description
        )
        add_settings(p, cls)
    return parser


def _split(s: SplitCommand) -> int:
    from edgecls.data.tools.split import format_split_report, split_dataset

    result = split_dataset(s.dir, s.val_fraction, s.test_fraction, s.seed, move=s.move, force=s.force)
    print(format_split_report(result))
    return 0


def _verify(s: VerifyCommand) -> int:
    from edgecls.data.tools.verify_report import KINDS, format_report, quarantine, verify_dataset, write_json

    kinds = [k.strip() for k in s.quarantine_kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise UserError(f"`quarantine_kinds` {unknown}: choose from {','.join(KINDS)}")
    report = verify_dataset(
        s.dir, min_size=s.min_size, pixel_hash=s.pixel_hash, workers=s.workers, use_cache=not s.no_cache
    )
    if s.quarantine:
        quarantine(report, s.quarantine, kinds)
    if s.json:
        write_json(report, s.json)
    print(format_report(report, limit=s.limit))
    moved = {q["from"] for q in report["quarantined"]}
    remaining = [p for p in report["problems"] if p["path"] not in moved]
    return 1 if s.strict and (remaining or report["dataset_problems"]) else 0


def _augment(s: AugmentCommand) -> int:
    from edgecls.data.tools.augment import augment_dataset, format_augment_report

    ops = tuple(o.strip() for o in s.ops.split(",") if o.strip())
    result = augment_dataset(
        s.dir,
        s.out,
        s.target_per_class,
        seed=s.seed,
        operations=ops,
        probability=s.probability,
        max_rotation=s.max_rotation,
        crop_scale=s.crop_scale,
        erase_area=s.erase_area,
        resize=s.resize,
        force=s.force,
    )
    print(format_augment_report(result))
    return 0


def _import(s: ImportCommand) -> int:
    from edgecls.data.tools.importer import format_import_report, import_images

    report = import_images(
        s.csv,
        s.out,
        timeout=s.timeout,
        retries=s.retries,
        max_bytes=s.max_bytes,
        workers=s.workers,
        report_path=s.report,
    )
    print(format_import_report(report))
    return 0


def _stats(s: StatsCommand) -> int:
    from pathlib import Path

    from edgecls.atomic import atomic_write_text
    from edgecls.data.tools.stats import dataset_stats, format_stats, plot_histogram, refuse_existing

    png = None if s.no_png else Path(s.png) if s.png else Path(s.dir) / "class_histogram.png"
    # the default chart is this tool's own file, replaced on each run; a path you name is checked
    refuse_existing({"json": Path(s.json) if s.json else None, "png": png if s.png else None}, force=s.force)
    stats = dataset_stats(s.dir)
    print(format_stats(stats))
    if s.json:
        atomic_write_text(json.dumps(stats, indent=2) + "\n", Path(s.json))
    if png is not None:
        print(f"histogram: {plot_histogram(stats, png)}")
    return 0


def _pack(s: PackConfig) -> int:
    from edgecls.data.tools.pack import format_pack_report, pack_dataset

    print(format_pack_report(pack_dataset(s)))
    return 0


COMMANDS = {"split": _split, "verify": _verify, "augment": _augment, "import": _import, "stats": _stats, "pack": _pack}


def parse(argv: list[str] | None):
    """The chosen subcommand's settings, checked."""
    values = vars(build_parser().parse_args(argv))
    command = values.pop("command")
    settings = SUBCOMMANDS[command][0](**values)
    check(settings)
    return command, settings


def main(argv: list[str] | None = None) -> int:
    command, settings = parse(argv)
    return COMMANDS[command](settings)


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(cli())
