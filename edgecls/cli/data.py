"""`edgecls data split|verify|augment|import|stats|pack`: dataset tools (argument parsing only)."""

from __future__ import annotations

import argparse
import json
import sys

from edgecls.cli.common import DefaultsHelpFormatter, parse_size, require_at_least, require_in, run_cli
from edgecls.data.tools.pack import PackConfig
from edgecls.errors import UserError
from edgecls.settings import add_settings, flag_names

FMT = DefaultsHelpFormatter
FLAGS = flag_names(PackConfig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="edgecls data",
        description="Dataset tools: split, verify, augment, "
        "import, stats, pack. Layouts: DIR/train|val|test/<class>/ or DIR/<class>/.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{split,verify,augment,import,stats,pack}")
    sub.required = True

    p = sub.add_parser(
        "split",
        allow_abbrev=False,
        formatter_class=FMT,
        help="stratified, seeded train/val(/test) split",
        description="Split DIR/<class>/ into DIR/train|val[|test]/<class>/ (copies unless --move), "
        "or move a share of DIR/train/<class>/ into val/ (and test/). Image counts are checked "
        "before = after; nothing is deleted.",
    )
    p.add_argument("dir", metavar="DIR", help="a folder of class folders, or a dataset with train/")
    g = p.add_argument_group("split")
    g.add_argument("--val-fraction", type=float, default=0.2, help="share of each class for val/")
    g.add_argument("--test-fraction", type=float, default=0.0, help="share of each class for test/ (0: no test/)")
    g.add_argument("--seed", type=int, default=0, help="same seed, same split")
    g = p.add_argument_group("safety")
    g.add_argument("--move", action="store_true", help="DIR/<class>/ input: move instead of copying")
    g.add_argument(
        "--force",
        action="store_true",
        help="re-split when val/ or test/ exist (their images go back into the pool first)",
    )

    p = sub.add_parser(
        "verify",
        allow_abbrev=False,
        formatter_class=FMT,
        help="find bad, tiny and duplicate images; counts and sizes",
        description="Report zero-byte, unsupported, corrupt and tiny images, duplicates (also across "
        "splits: leakage; across classes: label conflicts), class counts, imbalance and image sizes.",
    )
    p.add_argument("dir", metavar="DIR", help="DIR/train|val|test/<class>/ or DIR/<class>/")
    g = p.add_argument_group("checks")
    g.add_argument("--min-size", type=int, default=8, help="images with a side below this many pixels are 'tiny'")
    g.add_argument(
        "--pixel-hash",
        action="store_true",
        help="find duplicates by decoded pixels (catches re-encoded copies; slower) instead of file bytes",
    )
    g.add_argument("--workers", type=int, default=None, help="processes (default: number of cores, at most 32)")
    g.add_argument("--no-cache", action="store_true", help="decode every file again instead of using the cache")
    g = p.add_argument_group("output")
    g.add_argument("--json", metavar="PATH", default=None, help="also write the full report as JSON here")
    g.add_argument("--limit", type=int, default=20, help="problems shown per kind in the text report")
    g.add_argument(
        "--quarantine",
        metavar="QDIR",
        default=None,
        help="move flagged files to QDIR/<same relative path> (never deletes, never overwrites)",
    )
    g.add_argument(
        "--quarantine-kinds",
        default="zero-byte,unsupported,corrupt,tiny,duplicate,leakage,label-conflict",
        help="which problem kinds --quarantine moves (for duplicates, every copy but the first: "
        "train before val before test; each copy has its own kind against that first file)",
    )
    g.add_argument("--strict", action="store_true", help="exit 1 when problems remain (for CI)")

    p = sub.add_parser(
        "augment",
        allow_abbrev=False,
        formatter_class=FMT,
        help="offline augmentation to balance classes",
        description="Top every class up to --target-per-class images in OUT, a separate folder. "
        "OUT gets a copy of the originals too, so it is a complete balanced dataset; with "
        "DIR/train/ only train/ is augmented and val/ test/ are copied unchanged. DIR is only read.",
    )
    p.add_argument("dir", metavar="DIR", help="DIR/train|val|test/<class>/ or DIR/<class>/")
    g = p.add_argument_group("augmentation")
    g.add_argument("--target-per-class", type=int, required=True, help="images per class after augmentation")
    g.add_argument("--seed", type=int, default=0, help="same seed, same images")
    g.add_argument(
        "--ops",
        default="distort,hflip,rotate,crop,erase",
        help="operations to draw from: distort,hflip,vflip,rotate,crop,erase",
    )
    g.add_argument("--probability", type=float, default=0.5, help="chance of each operation (at least one always)")
    g.add_argument("--max-rotation", type=float, default=15.0, help="degrees, either way")
    g.add_argument("--crop-scale", type=float, default=0.75, help="smallest crop side, as a share of the image")
    g.add_argument("--erase-area", type=float, default=0.2, help="largest erased area, as a share of the image")
    g.add_argument(
        "--resize",
        type=parse_size,
        default=None,
        metavar="HxW",
        help="resize every written image (originals too) to HxW",
    )
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, metavar="OUT", help="output folder (must be empty, outside DIR)")
    g.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty --out, replacing the augmented files of an earlier run there",
    )

    p = sub.add_parser(
        "import",
        allow_abbrev=False,
        formatter_class=FMT,
        help="download images listed as url,class,split",
        description="Download the images of LIST.csv (url,class[,split]; header optional; split "
        "defaults to train) into OUT/<split>/<class>/. Re-run after an interruption to resume; "
        "failures are retried on the next run.",
    )
    p.add_argument("csv", metavar="LIST.csv")
    g = p.add_argument_group("download")
    g.add_argument("--out", required=True, metavar="DIR", help="dataset folder to fill")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds per connection/read (body: 3x)")
    g.add_argument(
        "--retries",
        type=int,
        default=2,
        help="extra attempts on timeouts, resets and HTTP 408, 429, 500, 502, 503, 504",
    )
    g.add_argument("--max-bytes", type=int, default=20_000_000, help="largest accepted image file")
    g.add_argument("--workers", type=int, default=8, help="parallel downloads")
    g.add_argument("--report", metavar="PATH", default=None, help="JSON report (default: OUT/import_report.json)")

    p = sub.add_parser(
        "stats",
        allow_abbrev=False,
        formatter_class=FMT,
        help="counts per class and split, a class-histogram PNG",
        description="Count image files per class and split (no decoding) and plot them.",
    )
    p.add_argument("dir", metavar="DIR", help="DIR/train|val|test/<class>/ or DIR/<class>/")
    g = p.add_argument_group("output")
    g.add_argument("--png", metavar="PATH", default=None, help="histogram file (default: DIR/class_histogram.png)")
    g.add_argument("--no-png", action="store_true", help="print the table only")
    g.add_argument("--json", metavar="PATH", default=None, help="also write the counts as JSON here")
    g.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --png or --json file (without it, an existing file is refused)",
    )

    p = sub.add_parser(
        "pack",
        allow_abbrev=False,
        formatter_class=FMT,
        help="pack a dataset into WebDataset tar shards (+ index.json) that train.py reads",
        description="Write DIR/train|val|test/<class>/ as WebDataset tar shards of about --shard-size bytes "
        "plus SHARDS/index.json (classes, counts and sha256 per shard, the image size if resized). Images are "
        "verified first (bad ones reported and left out) and shuffled over the shards; shards are written in "
        "parallel, and an interrupted pack resumes when run again. Then: train.py SHARDS.",
    )
    add_settings(p, PackConfig, config=False)
    return parser


def _split(args) -> int:
    from edgecls.data.tools.split import format_split_report, split_dataset

    require_in(args, {"val_fraction": "(0, 1)", "test_fraction": "[0, 1)"})
    result = split_dataset(args.dir, args.val_fraction, args.test_fraction, args.seed, move=args.move, force=args.force)
    print(format_split_report(result))
    return 0


def _verify(args) -> int:
    from edgecls.data.tools.verify_report import KINDS, format_report, quarantine, verify_dataset, write_json

    require_at_least(args, {"min_size": 1, "limit": 0})
    if args.workers is not None:
        require_at_least(args, {"workers": 1})
    kinds = [k.strip() for k in args.quarantine_kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise UserError(f"--quarantine-kinds {unknown}: choose from {','.join(KINDS)}")
    report = verify_dataset(
        args.dir, min_size=args.min_size, pixel_hash=args.pixel_hash, workers=args.workers, use_cache=not args.no_cache
    )
    if args.quarantine:
        quarantine(report, args.quarantine, kinds)
    if args.json:
        write_json(report, args.json)
    print(format_report(report, limit=args.limit))
    moved = {q["from"] for q in report["quarantined"]}
    remaining = [p for p in report["problems"] if p["path"] not in moved]
    return 1 if args.strict and remaining else 0


def _augment(args) -> int:
    from edgecls.data.tools.augment import augment_dataset, format_augment_report

    require_at_least(args, {"seed": 0})  # the other numbers: augment_dataset checks them, for every caller
    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip())
    result = augment_dataset(
        args.dir,
        args.out,
        args.target_per_class,
        seed=args.seed,
        operations=ops,
        probability=args.probability,
        max_rotation=args.max_rotation,
        crop_scale=args.crop_scale,
        erase_area=args.erase_area,
        resize=args.resize,
        force=args.force,
    )
    print(format_augment_report(result))
    return 0


def _import(args) -> int:
    from edgecls.data.tools.importer import format_import_report, import_images

    require_at_least(args, {"retries": 0, "max_bytes": 1, "workers": 1})
    require_in(args, {"timeout": "(0, inf)"})
    report = import_images(
        args.csv,
        args.out,
        timeout=args.timeout,
        retries=args.retries,
        max_bytes=args.max_bytes,
        workers=args.workers,
        report_path=args.report,
    )
    print(format_import_report(report))
    return 0


def _stats(args) -> int:
    from pathlib import Path

    from edgecls.atomic import atomic_write_text
    from edgecls.data.tools.stats import dataset_stats, format_stats, plot_histogram, refuse_existing

    png = None if args.no_png else Path(args.png) if args.png else Path(args.dir) / "class_histogram.png"
    # the default chart is this tool's own file, replaced on each run; a path you name is checked
    refuse_existing(
        {"--json": Path(args.json) if args.json else None, "--png": png if args.png else None}, force=args.force
    )
    stats = dataset_stats(args.dir)
    print(format_stats(stats))
    if args.json:
        atomic_write_text(json.dumps(stats, indent=2) + "\n", Path(args.json))
    if png is not None:
        print(f"histogram: {plot_histogram(stats, png)}")
    return 0


def _pack(args) -> int:
    from edgecls.data.tools.pack import format_pack_report, pack_dataset

    values = {k: v for k, v in vars(args).items() if k in PackConfig.__dataclass_fields__}
    print(format_pack_report(pack_dataset(PackConfig(**values))))
    return 0


COMMANDS = {"split": _split, "verify": _verify, "augment": _augment, "import": _import, "stats": _stats, "pack": _pack}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(cli())
