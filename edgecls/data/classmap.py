"""Class map rules: classes are train/'s visible subfolders, sorted by name, stored everywhere.

Sorting is plain string order (so "10" sorts before "2"); the order is written into every
checkpoint, `class_id.json` and ONNX file, so it is the same in every tool that reads them.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from edgecls.atomic import atomic_write_text
from edgecls.data.checks import no_classes_message
from edgecls.data.layout import class_folders, iter_files
from edgecls.errors import UserError


def discover_classes(train_dir: str | os.PathLike) -> list[str]:
    """Sorted visible subfolder names of a train/ folder."""
    root = Path(train_dir)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; expected DATASET/train/<class>/<images>")
    classes = class_folders(root)
    if not classes:
        raise UserError(no_classes_message(root))
    return classes


def check_split_classes(split_dir: str | os.PathLike, classes: list[str]) -> None:
    """A split's classes must be known to train/; one missing or empty is only a warning."""
    root = Path(split_dir)
    unknown = [c for c in class_folders(root) if c not in classes]
    if unknown:
        raise UserError(
            f"{root}: class folder(s) {unknown} are not in train/ (train has {classes}); rename or remove them"
        )
    for name in classes:
        folder = root / name
        if not folder.is_dir() or next(iter_files(folder, images_only=True), None) is None:
            warnings.warn(f"{root}: class '{name}' has no images in this split", stacklevel=2)


def write_class_map(classes: list[str], path: str | os.PathLike) -> None:
    """Kneron-style `{"0": "ants", "1": "bees"}`."""
    atomic_write_text(json.dumps({str(i): c for i, c in enumerate(classes)}, indent=2) + "\n", path)


def read_class_map(path: str | os.PathLike) -> list[str]:
    """Read `{"0": name, ...}` (or a JSON list) back into an ordered list of names."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{p}: class map file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f'{p}: not valid JSON ({exc}); expected {{"0": "name", ...}}') from None
    if isinstance(data, list):
        return [str(c) for c in data]
    if not isinstance(data, dict):
        raise UserError(f'{p}: expected a JSON object {{"0": "name", ...}}')
    try:
        ids = sorted(int(k) for k in data)
    except ValueError:
        raise UserError(f"{p}: keys must be class ids 0..N-1, got {list(data)[:5]}") from None
    if ids != list(range(len(ids))):
        raise UserError(f"{p}: class ids must be 0..{len(ids) - 1} without gaps")
    return [str(data[str(i)]) for i in ids]
