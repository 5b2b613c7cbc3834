"""What train.py accepts in a dataset folder: the one set of rules behind training's scan and `edgecls data verify`.

train.py raises the first refusal as a UserError and prints the warnings; verify lists every refusal as a
problem (so `--strict` fails where training would) and the warnings as notes. Two passes, because the
folder structure is judged before any image is decoded and the image counts only after:

- `layout_findings`: train/'s class folders (at least 2), val/ and test/ class folders known to train/.
- `count_findings`: readable images in train/ (and val/, which training needs), classes without images.

Also here: images outside any class folder (`loose_images`), and class folders beside train/ (`copies_beside`).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.data.images import has_image_extension
from edgecls.data.layout import is_hidden
from edgecls.errors import UserError

SPLITS = ("train", "val", "test")
HISTOGRAM_NAME = "class_histogram.png"  # `edgecls data stats`' own chart in DATASET/, not a loose image
SHOWN = 3  # loose files named in a warning; the rest are counted


@dataclass
class Findings:
    refusals: list[str] = field(default_factory=list)  # training stops on the first
    warnings: list[str] = field(default_factory=list)  # training goes on

    def raise_first(self) -> None:
        if self.refusals:
            raise UserError(self.refusals[0])


def layout_findings(root: Path, classes: list[str], split_classes: dict[str, list[str]]) -> Findings:
    """Before decoding: `classes` are train/'s class folders, `split_classes` the folders of val/ (and test/)."""
    found = Findings()
    train = root / "train"
    if not classes:
        found.refusals.append(no_classes_message(train))
        return found
    if len(classes) < 2:
        found.refusals.append(
            f"{root}: only one class ({classes[0]!r}); a classifier needs at least 2 class folders under train/"
        )
    for split, names in split_classes.items():
        unknown = [c for c in names if c not in classes]
        if unknown:
            found.refusals.append(
                f"{root / split}: class folder(s) {unknown} are not in train/ (train has {classes}); "
                "rename or remove them"
            )
    return found


def no_classes_message(train: Path) -> str:
    return f"{train}: no class folders; put images in {train}/<class_name>/"


def count_findings(root: Path, classes: list[str], counts: dict[str, list[int]], need_val: bool = True) -> Findings:
    """After decoding: `counts` = readable images per split, one number per class of `classes`."""
    found = Findings()
    train = counts.get("train", [0] * len(classes))
    if not sum(train):
        found.refusals.append(f"{root / 'train'}: no readable images in any class folder")
    if need_val and not sum(counts.get("val", [])):
        found.refusals.append(f"{root}: no val/ images; create DATASET/val/<class>/ (e.g. `edgecls data split {root}`)")
    empty = [name for name, n in zip(classes, train) if n == 0]
    if empty and sum(train):
        found.warnings.append(
            f"train/ has no readable images for class(es) {', '.join(empty)}; the model cannot learn them"
        )
    for split, row in counts.items():
        if split != "train" and sum(row):
            found.warnings += [
                f"{root / split}: class '{name}' has no images in this split" for name, n in zip(classes, row) if n == 0
            ]
    return found


def loose_images(root: Path, splits=SPLITS) -> list[str]:
    """Image files that no class folder holds: in DATASET/ itself and in each split's own folder."""
    found = [p for p in _own_files(root) if has_image_extension(p) and os.path.basename(p) != HISTOGRAM_NAME]
    for split in splits:
        found += [p for p in _own_files(root / split) if has_image_extension(p)]
    return found


def loose_warning(paths: list[str]) -> str | None:
    """One line naming the first few loose images and counting the rest."""
    if not paths:
        return None
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return (
        f"{len(paths)} image(s) outside any class folder are not used: {', '.join(paths[:SHOWN])}{more}; "
        "move them into DATASET/train/<class>/ (or out of the dataset)"
    )


def copies_beside(root: Path, classes: list[str]) -> list[str]:
    """Folders next to train/ named like one of its classes: a second copy of the data (a copy-mode split's
    originals), which training never reads."""
    return [
        str(root / name)
        for name in sorted(os.listdir(root))
        if name in classes and name not in SPLITS and (root / name).is_dir()
    ]


def copies_warning(root: Path, folders: list[str]) -> str | None:
    """Say that the class folders beside train/ are a second copy, and how to remove them."""
    if not folders:
        return None
    names = [os.path.basename(f) for f in folders]
    return (
        f"{root}: {len(folders)} class folder(s) beside train/ ({', '.join(n + '/' for n in names[:SHOWN])}"
        f"{' ...' if len(names) > SHOWN else ''}) are a second copy of the data, which training ignores; once the "
        f"split looks right, remove them with: cd {shlex.quote(str(root))} && rm -r {' '.join(map(shlex.quote, names))}"
    )


def _own_files(folder: Path) -> list[str]:
    """The visible files directly in `folder` (not in its subfolders), sorted; [] when it cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            return sorted(str(folder / e.name) for e in entries if e.is_file() and not is_hidden(e.name))
    except OSError:
        return []
