"""Dataset tools behind `edgecls data split|verify|augment|import|stats`.

Each tool is a module with one importable function (`split_dataset`, `verify_dataset`,
`augment_dataset`, `import_images`, `dataset_stats`); this file holds the few helpers they
share: how a dataset folder is laid out (its files are listed by edgecls.data.layout), and how a
file is placed without ever overwriting another one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgecls.atomic import atomic_copy
from edgecls.data.layout import class_folders
from edgecls.errors import UserError

SPLITS = ("train", "val", "test")


@dataclass
class Layout:
    """Where the class folders of a dataset are: {split name: folder}.

    kind "splits": DIR/train/<class>/ (+ val/, test/); kind "classes": DIR/<class>/, reported
    as the single split "all".
    """

    root: Path
    kind: str
    splits: dict[str, Path]


def detect_layout(root: str | os.PathLike) -> Layout:
    """DIR/train/... (splits) or DIR/<class>/... (a folder of class folders)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; expected DIR/train/<class>/ or DIR/<class>/ with images")
    if (root / "train").is_dir():
        return Layout(root, "splits", {s: root / s for s in SPLITS if (root / s).is_dir()})
    stray = [s for s in ("val", "test") if (root / s).is_dir()]
    if stray:
        raise UserError(
            f"{root}: has {'/ and '.join(stray)}/ but no train/; add train/<class>/ "
            f"or rename those folders if they are classes"
        )
    if not class_folders(root):
        raise UserError(f"{root}: no class folders; expected DIR/train/<class>/ or DIR/<class>/ with images")
    return Layout(root, "classes", {"all": root})


def free_path(path: Path) -> Path:
    """`path` itself when nothing is there, else `stem_1.ext`, `stem_2.ext`, ... (never overwrite)."""
    if not os.path.lexists(path):
        return path
    i = 1
    while True:
        candidate = path.with_name(f"{path.stem}_{i}{path.suffix}")
        if not os.path.lexists(candidate):
            return candidate
        i += 1


def move_file(src: Path, dst: Path) -> None:
    """Rename when on one filesystem, else copy atomically and then remove the source."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
    except OSError:
        atomic_copy(src, dst)
        os.unlink(src)


def is_inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents
