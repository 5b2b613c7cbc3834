"""Stratified, seeded train/val(/test) split of an image folder, checked to lose nothing.

Two inputs are accepted:
- DIR/<class>/...: images are copied (or moved with `move=True`) to DIR/train|val|test/<class>/.
- DIR/train/<class>/...: a share of each class is moved from train/ into val/ (and test/);
  moving, because a copy left in train/ would leak validation images into training.
An existing val/ or test/ is refused unless `force=True`; then its images go back into the
pool and everything is split again, so a re-split never loses or duplicates an image.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

from edgecls.atomic import atomic_copy
from edgecls.data.checks import copies_beside, copies_warning
from edgecls.data.images import has_image_extension
from edgecls.data.layout import class_folders, walk_paths
from edgecls.data.tools import SPLITS, detect_layout, free_path, move_file
from edgecls.errors import UserError


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) counts for a class of n images; train always keeps at least one.

    A non-zero fraction gives at least one image when the class has room for it, so every
    class shows up in val/ (and test/) as soon as it has two (three) images.
    """
    n_val = int(round(n * val_fraction))
    n_test = int(round(n * test_fraction))
    if val_fraction > 0 and n_val == 0 and n >= 2:
        n_val = 1
    if test_fraction > 0 and n_test == 0 and n - n_val >= 2:
        n_test = 1
    while n_val + n_test > max(n - 1, 0):
        if n_test > 0 and (n_test >= n_val or n_val == 0):
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def assign_splits(
    names: list[str], seed: int, class_name: str, val_fraction: float, test_fraction: float
) -> dict[str, str]:
    """name -> split, from a shuffle seeded by (seed, class) so it does not depend on file order."""
    order = sorted(names)
    random.Random(f"{seed}:{class_name}").shuffle(order)
    n_train, n_val, _ = split_sizes(len(order), val_fraction, test_fraction)
    out = {}
    for i, name in enumerate(order):
        out[name] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise UserError(f"`val_fraction` {val_fraction}: must be between 0 and 1 (e.g. 0.2)")
    if not 0 <= test_fraction < 1:
        raise UserError(f"`test_fraction` {test_fraction}: must be between 0 and 1 (0 = no test/)")
    if val_fraction + test_fraction >= 1:
        raise UserError(
            f"`val_fraction` + `test_fraction` = {val_fraction + test_fraction:g}: "
            "must be below 1 so train/ keeps images"
        )


def _count_images(root: Path, split_names, classes) -> Counter:
    counts: Counter = Counter()
    for split in split_names:
        for cls in classes:
            folder = root / split / cls if split else root / cls
            if folder.is_dir():
                counts[cls] += len(walk_paths(folder, images_only=True))
    return counts


def split_dataset(
    root: str | os.PathLike,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    move: bool = False,
    force: bool = False,
) -> dict:
    """Split DIR in place; returns {"layout", "mode", "counts": {class: {split: n}}, "left": [...], "originals"}
    ("originals": the class folders a copy left beside train/)."""
    _check_fractions(val_fraction, test_fraction)
    layout = detect_layout(root)
    root = layout.root
    wanted = ["train", "val"] + (["test"] if test_fraction > 0 else [])

    if layout.kind == "classes":
        classes = class_folders(root)
        taken = [c for c in classes if c in SPLITS]
        if taken:
            raise UserError(f"{root}: class folder(s) {taken} use a split name; rename them first")
        sources = {c: [(root / c, "")] for c in classes}
        mode = "move" if move else "copy"
    else:
        classes = class_folders(root / "train")
        if not classes:
            raise UserError(f"{root / 'train'}: no class folders; put images in train/<class>/")
        existing = [s for s in ("val", "test") if (root / s).is_dir() and any((root / s).iterdir())]
        if existing and not force:
            raise UserError(
                f"{root}: {' and '.join(s + '/' for s in existing)} already exist{'' if len(existing) > 1 else 's'}; "
                "pass `force` to put their images back into the pool and split again"
            )
        for s in existing:
            unknown = [c for c in class_folders(root / s) if c not in classes]
            if unknown:
                raise UserError(f"{root / s}: class folder(s) {unknown} are not in train/; rename or remove them")
        sources = {c: [(root / s / c, s) for s in SPLITS if (root / s / c).is_dir()] for c in classes}
        mode = "move"

    before = _count_images(root, [""] if layout.kind == "classes" else SPLITS, classes)
    plan: list[tuple[Path, Path]] = []  # (source file, destination folder)
    left: list[str] = []  # non-image files left where they are
    for cls in classes:
        entries: dict[str, tuple[Path, str]] = {}  # unique key -> (file, path relative to its class folder)
        for folder, split in sources[cls]:
            for path in walk_paths(folder):
                if not has_image_extension(path):
                    left.append(str(path))
                    continue
                rel = path.relative_to(folder).as_posix()
                key = rel if rel not in entries else f"{rel}@{split}"
                entries[key] = (path, rel)
        target = assign_splits(list(entries), seed, cls, val_fraction, test_fraction)
        for key, (path, rel) in entries.items():
            dest_dir = (root / target[key] / cls / rel).parent
            if path.parent != dest_dir:
                plan.append((path, dest_dir))

    for path, dest_dir in plan:
        dest = free_path(dest_dir / path.name)
        if mode == "copy":
            atomic_copy(path, dest)
        else:
            move_file(path, dest)
    if layout.kind == "classes" and mode == "move":
        for cls in classes:
            _remove_empty_dirs(root / cls)
    elif layout.kind == "splits":
        for split in ("val", "test"):
            if (root / split).is_dir():
                _remove_empty_dirs(root / split)

    after = _count_images(root, SPLITS, classes)
    if after != before:
        missing = {c: (before[c], after[c]) for c in classes if before[c] != after[c]}
        raise UserError(
            f"{root}: image counts changed during the split (class: before, after) {missing}; "
            "another program may be writing to this folder; nothing was deleted, check and re-run"
        )
    if layout.kind == "classes" and mode == "copy":
        still = _count_images(root, [""], classes)
        if still != before:
            raise UserError(f"{root}: original class folders changed during the copy; check and re-run")

    counts = {
        c: {s: len(walk_paths(root / s / c, images_only=True)) if (root / s / c).is_dir() else 0 for s in wanted}
        for c in classes
    }
    return {
        "root": str(root),
        "layout": layout.kind,
        "mode": mode,
        "seed": seed,
        "counts": counts,
        "total": sum(before.values()),
        "left": left,
        "originals": copies_beside(root, classes) if mode == "copy" else [],  # a second copy of the data
    }


def _remove_empty_dirs(folder: Path) -> None:
    """After a move, drop class folders left empty (never one that still holds anything)."""
    for dirpath, _dirnames, _files in os.walk(folder, topdown=False):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def format_split_report(result: dict) -> str:
    splits = [s for s in SPLITS if any(s in v for v in result["counts"].values())]
    width = max([5] + [len(c) for c in result["counts"]])
    lines = [f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in splits)]
    for cls, row in result["counts"].items():
        lines.append(f"{cls:<{width}}  " + "  ".join(f"{row.get(s, 0):>6}" for s in splits))
    totals = [sum(r.get(s, 0) for r in result["counts"].values()) for s in splits]
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{t:>6}" for t in totals))
    verb = "copied" if result["mode"] == "copy" else "moved"
    lines.append(
        f"{result['total']} images {verb} into {', '.join(s + '/' for s in splits)} of {result['root']} "
        f"(seed {result['seed']}); counts checked before = after"
    )
    if result["left"]:
        lines.append(f"{len(result['left'])} non-image file(s) left where they were, e.g. {result['left'][0]}")
    copies = copies_warning(Path(result["root"]), result.get("originals", []))
    if copies:
        lines.append(f"note: the originals were copied, not moved (--move moves them): {copies}")
    return "\n".join(lines)
