"""How edgecls reads a folder: one walker and one class-folder rule, used by every tool.

- Hidden entries (`.DS_Store`, `.ipynb_checkpoints`, `._x.jpg`, `__MACOSX`) are never data.
- `walk_files(folder)`: every visible file under a folder, recursively, in one stable order
  (a folder's own files by name, then each visible subfolder by name).
- `class_folders(folder)`: the sorted names of its visible subfolders. Classes are train/'s class
  folders in plain string order (so "10" < "2"); val/ and test/ are matched by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from edgecls.data.images import has_image_extension


def is_hidden(name: str) -> bool:
    """Hidden entries (`.DS_Store`, `.ipynb_checkpoints`, `._x.jpg`) are never data."""
    return name.startswith(".") or name.startswith("__MACOSX")


def iter_files(folder: str | os.PathLike, images_only: bool = False) -> Iterator[str]:
    """Yield visible files under `folder` (recursive, sorted, hidden entries skipped) as paths joined onto
    `folder` as given, so "./imgs" stays "./imgs/a.jpg"."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            if not is_hidden(name) and (not images_only or has_image_extension(name)):
                yield os.path.join(dirpath, name)


def walk_files(folder: str | os.PathLike, images_only: bool = False) -> list[str]:
    """Every visible file under `folder` (see iter_files); `images_only`: image extensions only."""
    return list(iter_files(folder, images_only))


def walk_paths(folder: str | os.PathLike, images_only: bool = False) -> list[Path]:
    """walk_files as Path objects."""
    return [Path(p) for p in iter_files(folder, images_only)]


def class_folders(folder: str | os.PathLike) -> list[str]:
    """Sorted names of the visible subfolders (the class rule); [] when the folder cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if e.is_dir() and not is_hidden(e.name))
    except OSError:
        return []
