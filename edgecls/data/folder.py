"""Folder dataset: DATASET/{train,val,test}/<class>/<image>, scanned once and verified.

`scan_dataset` lists every file under each class folder, verifies that it decodes (in
parallel, results cached by path + size + mtime) and returns the good samples plus one
report of the bad ones, so training never meets a broken file mid-epoch. A shard folder
(`edgecls data pack`'s output, recognized by its index JSON) is read from its index instead:
its samples are `Member`s of the tar shards, in the source folder's order.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from edgecls.data.checks import count_findings, layout_findings, loose_images, loose_warning
from edgecls.data.classmap import discover_classes
from edgecls.data.images import has_image_extension, load_rgb
from edgecls.data.layout import class_folders, walk_files
from edgecls.data.verify import verify_files
from edgecls.errors import UserError


@dataclass
class Split:
    name: str
    root: Path
    samples: list[tuple[str, int]] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    shards: list | None = None  # shards.index.ShardFile per tar, for a split read from a shard folder

    def counts(self, num_classes: int) -> list[int]:
        out = [0] * num_classes
        for _, label in self.samples:
            out[label] += 1
        return out


def list_split_files(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """Every visible file in each class folder (recursively), with its class index."""
    files: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        files += [(path, label) for path in walk_files(split_dir / name)]
    return files


def scan_split(split_dir: Path, classes: list[str], workers: int | None = None, use_cache: bool = True) -> Split:
    split = Split(name=split_dir.name, root=split_dir)
    files = list_split_files(split_dir, classes)
    verdicts = verify_files([p for p, _ in files], workers=workers, use_cache=use_cache)
    for path, label in files:
        reason = verdicts[path]
        if reason is None and not has_image_extension(path):
            reason = "unsupported file extension (use .jpg .png .bmp .webp .tif)"
        if reason is None:
            split.samples.append((path, label))
        else:
            split.bad.append((path, reason))
    return split


def resolve_dataset(root: str | os.PathLike) -> tuple[Path, list[str]]:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found; expected DATASET/train/<class>/ and DATASET/val/<class>/")
    train = root / "train"
    if not train.is_dir():
        raise UserError(
            f"{root}: no train/ folder; expected {root}/train/<class>/<images> (and val/), or a shard folder's "
            "index.json (edgecls data pack)"
        )
    return root, discover_classes(train)


def scan_dataset(
    root: str | os.PathLike, splits=("train", "val"), workers: int | None = None, use_cache: bool = True
) -> tuple[list[str], dict[str, Split]]:
    """Classes from train/, then each existing split scanned and verified (or a shard folder's index read).

    The rules of edgecls.data.checks decide: their first refusal is raised (a UserError), the warnings are
    issued; val/ is required when it is one of `splits`. Images outside any class folder are named.
    """
    from edgecls.data.shards.index import scan_shards, shard_index_path

    if shard_index_path(root) is not None:
        classes, out = scan_shards(root, splits)
        layout_findings(Path(root), classes, {}).raise_first()
        loose = []
    else:
        root, classes = resolve_dataset(root)
        present = [name for name in splits if (root / name).is_dir()]
        layout_findings(root, classes, {n: class_folders(root / n) for n in present if n != "train"}).raise_first()
        out = {name: scan_split(root / name, classes, workers=workers, use_cache=use_cache) for name in present}
        loose = loose_images(root, present)
    counts = {name: split.counts(len(classes)) for name, split in out.items()}
    findings = count_findings(Path(root), classes, counts, need_val="val" in splits)
    findings.raise_first()
    for message in [*findings.warnings, loose_warning(loose)]:
        if message:
            warnings.warn(message, stacklevel=2)
    return classes, out


def bad_file_report(splits: dict[str, Split]) -> str:
    lines = [f"{path}: {reason}" for s in splits.values() for path, reason in s.bad]
    return "\n".join(lines)


class FolderDataset(Dataset):
    """(path, label) samples decoded to RGB and passed through a transform."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label
