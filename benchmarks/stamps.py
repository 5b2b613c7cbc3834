#!/usr/bin/env python3
"""Real photo-like images as class folders, from Debian's tuxpaint-stamps-default (no download).

Tux Paint's stamps are RGBA cut-outs (many of them photographs) filed by category. Each image is
composited onto white and saved as a JPEG; cartoon drawings are left out. Two datasets with disjoint
categories, so a recipe tuned on one is checked on the other:

    tune:    town, vehicles, household, clothes, seasonal, money       (6 classes, ~196 images)
    heldout: birds, mammals, food, plants, space                       (5 classes, ~205 images)
    all:     both sets together, each class split as in its own set     (11 classes, ~400 images)

Each class is split by image, seeded, about 78% train / 22% val (no image in both).

    python benchmarks/stamps.py --out /tmp/stamps --set tune
    (apt-get install tuxpaint-stamps-default first)
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from PIL import Image

STAMPS = Path("/usr/share/tuxpaint/stamps")
SETS = {
    "tune": {"town": "town", "vehicles": "vehicles", "household": "household", "clothes": "clothes",
             "seasonal": "seasonal", "money": "symbols/money"},
    "heldout": {"birds": "animals/birds", "mammals": "animals/mammals", "food": "food", "plants": "plants",
                "space": "space"},
}  # fmt: skip
SETS["all"] = {**SETS["tune"], **SETS["heldout"]}  # the same per-class splits, side by side (11 classes)
VAL_FRACTION = 0.22


def stamp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.png") if "cartoon" not in p.relative_to(folder).parts)


def on_white(path: Path) -> Image.Image:
    img = Image.open(path).convert("RGBA")
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, img).convert("RGB")


def write_set(out: Path, name: str, seed: int = 0) -> dict[str, dict[str, int]]:
    """OUT/train/<class>/*.jpg and OUT/val/<class>/*.jpg; reused when already written."""
    if not STAMPS.is_dir():
        sys.exit(f"error: {STAMPS} not found; install Debian's tuxpaint-stamps-default (apt-get install ...)")
    counts: dict[str, dict[str, int]] = {}
    done = (out / ".complete").is_file()
    for cls, sub in SETS[name].items():
        files = stamp_files(STAMPS / sub)
        random.Random(f"{seed}-{cls}").shuffle(files)
        n_val = max(1, round(VAL_FRACTION * len(files)))
        for split, chunk in (("val", files[:n_val]), ("train", files[n_val:])):
            counts.setdefault(cls, {})[split] = len(chunk)
            if done:
                continue
            folder = out / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i, path in enumerate(chunk):
                on_white(path).save(folder / f"{cls}_{i:03d}_{path.stem}.jpg", quality=92)
    (out / ".complete").touch()
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", choices=sorted(SETS), default="tune")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    counts = write_set(Path(args.out), args.set, args.seed)
    train = sum(c["train"] for c in counts.values())
    val = sum(c["val"] for c in counts.values())
    print(f"{args.set}: {args.out} ({len(counts)} classes, {train} train + {val} val): {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
