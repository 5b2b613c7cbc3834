"""The index JSON of a shard folder, and a shard folder read as the dataset scan reads an image folder.

    SHARDS/index.json          {"format": "edgecls-shards/1", "classes": [...], "image_size": ..., "splits": {...}}
    SHARDS/train-000000.tar    WebDataset samples: <key>.<ext> (the image file's bytes) + <key>.cls (class id)
    SHARDS/val-000000.tar ...

Per split the index lists its shards; per shard: file, count, bytes, sha256, class_counts and `samples`,
one [position, label, offset, size, member name] per image. `position` is the image's place in the
source folder's sorted listing: the scan returns the samples in that order, so the decoded-image caches
hold the same rows in the same order as for the folder (and a seeded run trains the same), while the
shards themselves hold the images shuffled (so that streaming whole shards mixes the classes).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgecls.data.shards.member import Member
from edgecls.errors import UserError

INDEX_NAME = "index.json"
FORMAT = "edgecls-shards/1"


@dataclass(frozen=True)
class ShardFile:
    """One tar of a split: its absolute path and how many images it holds."""

    path: str
    count: int
    bytes: int


def shard_index_path(root: str | os.PathLike) -> Path | None:
    """ROOT/index.json when ROOT is a shard folder (an index and no train/ folder), else None."""
    root = Path(root)
    index = root / INDEX_NAME
    return index if index.is_file() and not (root / "train").is_dir() else None


def load_index(root: str | os.PathLike) -> dict:
    """The index of a shard folder, checked for its format and its shard files (present, of the recorded size)."""
    root = Path(root)
    path = root / INDEX_NAME
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{root}: no {INDEX_NAME}; expected a shard folder written by `edgecls data pack`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable shard index ({exc}); pack the dataset again") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else None
        raise UserError(f"{path}: not an edgecls shard index (format {found!r}, expected {FORMAT!r})")
    for entry in index["splits"].values():
        for shard in entry["shards"]:
            file = root / shard["file"]
            try:
                size = file.stat().st_size
            except OSError:
                raise UserError(f"{file}: missing from the shard folder; pack the dataset again") from None
            if size != shard["bytes"]:
                raise UserError(
                    f"{file}: {size} bytes but {INDEX_NAME} says {shard['bytes']} (damaged or replaced); "
                    f"pack the dataset again"
                )
    return index


def split_samples(root: Path, entry: dict) -> tuple[list[tuple[Member, int]], list[ShardFile]]:
    """A split's (Member, label) samples in source-folder order, and its shard files in index order."""
    ranked, files = [], []
    for shard in entry["shards"]:
        path = str((root / shard["file"]).resolve())
        files.append(ShardFile(path, int(shard["count"]), int(shard["bytes"])))
        for pos, label, offset, size, name in shard["samples"]:
            ranked.append((pos, Member(path, offset, size, name), label))
    ranked.sort(key=lambda item: item[0])
    return [(member, label) for _, member, label in ranked], files


def scan_shards(root: str | os.PathLike, splits=("train", "val")):
    """(classes, {split: Split}) for a shard folder, like `edgecls.data.folder.scan_dataset` for a folder. The
    images were verified when packed (bad ones were left out then), so nothing is decoded here."""
    from edgecls.data.folder import Split

    root = Path(root)
    index = load_index(root)
    classes = list(index["classes"])
    out = {}
    for name in splits:
        entry = index["splits"].get(name)
        if entry is None:
            continue
        samples, files = split_samples(root, entry)
        out[name] = Split(name=name, root=root, samples=samples, shards=files)
    if "train" in splits and not out.get("train", Split("train", root)).samples:
        raise UserError(f"{root}: the shard set has no training images")
    return classes, out


def shard_set_samples(root: str | os.PathLike, split: str | None = None) -> list[tuple[Member, int]]:
    """Every (Member, label) of one split (or of all splits, in index order) of a shard folder."""
    root = Path(root)
    index = load_index(root)
    names = list(index["splits"]) if split is None else [split]
    missing = [n for n in names if n not in index["splits"]]
    if missing:
        raise UserError(f"{root}: the shard set has no {missing[0]} split (it has {', '.join(index['splits'])})")
    out: list[tuple[Member, int]] = []
    for name in names:
        out += split_samples(root, index["splits"][name])[0]
    return out


def format_index(index: dict) -> str:
    """The index as indented JSON, each shard's sample table on one line (readable, and not 5 lines per image)."""
    tables: dict[str, list] = {}
    shown = json.loads(json.dumps(index))
    for entry in shown["splits"].values():
        for shard in entry["shards"]:
            tables[shard["file"]] = shard["samples"]
            shard["samples"] = f"@samples:{shard['file']}"
    text = json.dumps(shown, indent=2, ensure_ascii=False)
    for file, samples in tables.items():
        text = text.replace(json.dumps(f"@samples:{file}", ensure_ascii=False), json.dumps(samples, ensure_ascii=False))
    return text + "\n"


def write_index(root: Path, index: dict) -> None:
    from edgecls.atomic import atomic_write_text

    atomic_write_text(format_index(index), root / INDEX_NAME)


def split_for_model(data_dir, split: str, classes: list[str]):
    """(where, samples, skipped) of a shard folder's split with labels in the model's class order, for
    eval's dataset mode; None when data_dir is not a shard folder. A class the model lacks is a UserError."""
    root = Path(data_dir)
    if shard_index_path(root) is None:
        return None
    index = load_index(root)
    unknown = [c for c in index["classes"] if c not in classes]
    if unknown:
        raise UserError(
            f"{root}: class(es) {unknown} of the shard set are not classes of the model ({classes}); "
            "pass the matching --class_id_path"
        )
    to_model = [classes.index(c) for c in index["classes"]]
    samples = [(member, to_model[label]) for member, label in shard_set_samples(root, split)]
    return f"{root}/{split}-*.tar", samples, []


def shard_sources(spec) -> list[Member] | None:
    """The images of a shard folder (every split) or of one .tar of it, for inference; None for anything else."""
    path = Path(spec)
    if shard_index_path(path) is not None:
        return [member for member, _ in shard_set_samples(path)]
    if path.suffix == ".tar" and path.is_file() and shard_index_path(path.parent) is not None:
        wanted = str(path.resolve())
        members = [m for m, _ in shard_set_samples(path.parent) if m.shard == wanted]
        if not members:
            raise UserError(f"{path}: not a shard listed in {path.parent / INDEX_NAME}")
        return sorted(members, key=lambda m: m.offset)
    return None
