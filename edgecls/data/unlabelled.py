"""Images without labels, for tasks that need none (`train.py --task autoencoder`).

`scan_unlabelled(root)` accepts, in this order:
- a shard folder (`edgecls data pack`): its splits, labels kept but unused;
- DATASET/train/ (+ val/): every image under each split, class folders or not;
- a flat folder (any nesting): every image under it, with a fixed tenth held out for validation, chosen by
  a hash of each file's path relative to the folder, so adding images never moves an old one across.
Labels are the class-folder index where train/'s images all sit in class folders (kept for a later
classify fine-tune), else 0 with one class named "image". Files are verified like train.py's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgecls.data.folder import Split, scan_dataset
from edgecls.data.images import has_image_extension
from edgecls.data.layout import class_folders, walk_files
from edgecls.data.verify import verify_files
from edgecls.errors import UserError

VAL_FRACTION = 0.1
NO_CLASSES = ["image"]


def _labelled(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    index = {name: i for i, name in enumerate(classes)}
    out = []
    for path in walk_files(folder):
        top = Path(path).relative_to(folder).parts[0]
        out.append((path, index.get(top, 0)))
    return out


def _verified(name: str, root: Path, files: list[tuple[str, int]], workers) -> Split:
    split = Split(name=name, root=root)
    verdicts = verify_files([p for p, _ in files], workers=workers)
    for path, label in files:
        reason = verdicts[path]
        if reason is None and not has_image_extension(path):
            reason = "unsupported file extension (use .jpg .png .bmp .webp .tif)"
        (split.samples.append((path, label)) if reason is None else split.bad.append((path, reason)))
    return split


def _held_out(root: Path, files: list[tuple[str, int]]) -> set[str]:
    """The validation tenth of a flat folder: each file by the hash of its relative path alone, so the
    choice never depends on the other files (a folder too small to get one holds out its lowest hash)."""

    def key(path: str) -> int:
        return int(hashlib.sha1(Path(path).relative_to(root).as_posix().encode()).hexdigest(), 16)

    buckets = round(1 / VAL_FRACTION)
    held = {p for p, _ in files if key(p) % buckets == 0}
    return held or ({min((p for p, _ in files), key=key)} if files else set())


def scan_unlabelled(root, workers: int | None = None) -> tuple[list[str], dict[str, Split]]:
    """(classes, {"train": Split, "val": Split}) for an image folder with or without labels."""
    from edgecls.data.shards.index import shard_index_path

    root = Path(root)
    if shard_index_path(root) is not None:
        return scan_dataset(root, splits=("train", "val"), workers=workers)
    if not root.is_dir():
        raise UserError(f"{root}: image folder not found; give a folder of images (any nesting) or DATASET/train/")
    base = root / "train" if (root / "train").is_dir() else root
    loose = [p for p in base.iterdir() if p.is_file() and has_image_extension(p.name)]
    classes = class_folders(base) if class_folders(base) and not loose else NO_CLASSES
    files = _labelled(base, classes)
    if base is root or not (root / "val").is_dir():
        held = _held_out(base, files)
        splits = {
            "train": _verified("train", base, [f for f in files if f[0] not in held], workers),
            "val": _verified("val", base, [f for f in files if f[0] in held], workers),
        }
    else:
        val = root / "val"
        splits = {
            "train": _verified("train", base, files, workers),
            "val": _verified("val", val, _labelled(val, classes), workers),
        }
    for name, split in splits.items():
        if not split.samples:
            raise UserError(
                f"{split.root}: no readable images for {name} (needs at least 2 images in all; "
                f"{len(split.bad)} unreadable file(s))"
            )
    return classes, splits
