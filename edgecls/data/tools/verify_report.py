"""`edgecls data verify`: find the images that would hurt training, before training.

Per file: zero-byte, unsupported extension, corrupt (does not decode) and tiny (a side
below `min_size`). Across files: duplicates by content hash (sha1 of the bytes, optionally
of the decoded pixels); each copy but the kept one is a label conflict when its class differs
from the kept file's, else leakage when its split differs, else a duplicate. Per dataset:
class counts, imbalance and image sizes, and everything train.py refuses (its own rules, edgecls.data.checks).
Decoding reuses `edgecls.data.verify.verify_files` (parallel over cores, cached); hashing and
size reading run in the same kind of process pool. `--quarantine` moves flagged files out of
the dataset, keeping their relative path; nothing is ever deleted or overwritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import statistics
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from edgecls.atomic import atomic_write_text
from edgecls.data.checks import (
    Findings,
    copies_beside,
    copies_warning,
    count_findings,
    layout_findings,
    loose_images,
)
from edgecls.data.images import IMAGE_EXTENSIONS, has_image_extension, load_rgb_bytes
from edgecls.data.layout import class_folders, is_hidden, walk_paths
from edgecls.data.tools import Layout, detect_layout, free_path, is_inside, move_file
from edgecls.data.verify import _load_cache, _save_cache, _stamp, cache_dir, verify_files
from edgecls.errors import UserError

KINDS = ("zero-byte", "unsupported", "corrupt", "tiny", "stray", "duplicate", "leakage", "label-conflict")
DUPLICATE_KINDS = ("duplicate", "leakage", "label-conflict")  # least to most severe
SPLIT_ORDER = {"train": 0, "all": 0, "val": 1, "test": 2}


def _describe(path: str, pixel_hash: bool) -> tuple[str | None, int, int, str]:
    """(sha1, width, height, format) of one file; the header is read, pixels only when hashing them."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None, 0, 0, ""
    digest = hashlib.sha1(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height, fmt = img.width, img.height, img.format or ""
        if pixel_hash:
            rgb = load_rgb_bytes(data)
            digest = hashlib.sha1(f"{rgb.width}x{rgb.height}".encode() + rgb.tobytes()).hexdigest()
    except Exception:  # noqa: BLE001 - any decode failure is already reported by verify_files
        return digest, 0, 0, ""
    return digest, width, height, fmt


def _describe_chunk(args: tuple[list[str], bool]) -> list[tuple[str | None, int, int, str]]:
    paths, pixel_hash = args
    return [_describe(p, pixel_hash) for p in paths]


def describe_files(
    paths: list[str], pixel_hash: bool = False, workers: int | None = None, use_cache: bool = True
) -> list[tuple]:
    """(sha1, width, height, format) per path, in parallel; cached by path + size + mtime like verify_files."""
    paths = [os.path.abspath(p) for p in paths]
    cache_file = _describe_cache_file(paths, pixel_hash)
    cache = _load_cache(cache_file) if use_cache and paths else {}
    stamps = {p: _stamp(p) for p in paths}
    found: dict[str, tuple] = {}
    for p in paths:
        hit = cache.get(p)
        if hit is not None and stamps[p] is not None and hit[0] == stamps[p]:
            found[p] = tuple(hit[1])
    todo = [p for p in paths if p not in found]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 32)
    if workers <= 1 or len(todo) < 200:
        found.update(zip(todo, _describe_chunk((todo, pixel_hash))))
    else:
        size = max(64, len(todo) // (workers * 8))
        chunks = [(todo[i : i + size], pixel_hash) for i in range(0, len(todo), size)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for (chunk, _), part in zip(chunks, pool.map(_describe_chunk, chunks)):
                found.update(zip(chunk, part))
    if use_cache and todo:
        cache.update({p: [stamps[p], list(found[p])] for p in todo if stamps[p] is not None and found[p][0]})
        _save_cache(cache_file, cache)
    return [found[p] for p in paths]


def _describe_cache_file(paths: list[str], pixel_hash: bool) -> Path:
    """Next to the decode cache of edgecls.data.verify, one file per scanned folder and hash kind."""
    common = os.path.commonpath(paths) if paths else ""
    key = hashlib.sha1(f"{common}|{'pixels' if pixel_hash else 'bytes'}".encode()).hexdigest()[:16]
    return cache_dir().parent / "describe" / f"{key}.json"


def _collect(layout: Layout) -> tuple[list[dict], list[dict], dict[str, list[str]]]:
    """Every visible file of every class folder as {path, rel, split, class}; stray files apart."""
    files, stray = [], []
    classes: dict[str, list[str]] = {}
    for path in loose_images(layout.root, splits=()):
        stray.append(
            {
                "path": path,
                "split": None,
                "class": None,
                "kind": "stray",
                "reason": "image outside any class folder (ignored by training)",
            }
        )
    for split, folder in layout.splits.items():
        classes[split] = class_folders(folder)
        if layout.kind == "splits":
            for entry in sorted(folder.iterdir()):
                if entry.is_file() and not is_hidden(entry.name):
                    stray.append(
                        {
                            "path": str(entry),
                            "split": split,
                            "class": None,
                            "kind": "stray",
                            "reason": "file outside any class folder (ignored by training)",
                        }
                    )
        for cls in classes[split]:
            for path in walk_paths(folder / cls):
                files.append(
                    {"path": str(path), "rel": path.relative_to(layout.root).as_posix(), "split": split, "class": cls}
                )
    return files, stray, classes


def verify_dataset(
    root: str | os.PathLike,
    min_size: int = 8,
    pixel_hash: bool = False,
    workers: int | None = None,
    use_cache: bool = True,
) -> dict:
    """Scan DIR (DIR/train|val|test/<class>/ or DIR/<class>/) and return the full report as a dict."""
    layout = detect_layout(root)
    files, problems, classes = _collect(layout)
    verdicts = verify_files([f["path"] for f in files], workers=workers, use_cache=use_cache)
    described = describe_files([f["path"] for f in files], pixel_hash=pixel_hash, workers=workers, use_cache=use_cache)

    good: list[dict] = []
    readable = {split: {cls: 0 for cls in names} for split, names in classes.items()}  # what training would use
    for f, (digest, width, height, fmt) in zip(files, described):
        reason = verdicts[f["path"]]
        if reason is None and has_image_extension(f["path"]):
            readable[f["split"]][f["class"]] += 1
        kind = None
        if reason == "zero-byte file":
            kind = "zero-byte"
        elif not has_image_extension(f["path"]):
            kind = "unsupported"
            ext = Path(f["path"]).suffix or "(none)"
            reason = f"extension {ext} is not read by training (use {' '.join(IMAGE_EXTENSIONS)})" + (
                f"; the file is {'a ' + fmt if fmt else 'not an'} image" if reason is None else f"; {reason}"
            )
        elif reason is not None:
            kind = "corrupt"
        elif min(width, height) < min_size:
            kind = "tiny"
            reason = f"{width}x{height} pixels, below --min-size {min_size}"
        if kind:
            problems.append(
                {"path": f["path"], "split": f["split"], "class": f["class"], "kind": kind, "reason": reason}
            )
        else:
            good.append({**f, "sha1": digest, "width": width, "height": height, "format": fmt})

    duplicates = find_duplicates(good)
    for group in duplicates:
        for extra in group["files"][1:]:
            problems.append(
                {
                    "path": extra["path"],
                    "split": extra["split"],
                    "class": extra["class"],
                    "kind": extra["kind"],
                    "reason": f"same content as {group['files'][0]['path']}",
                }
            )

    redundant = {p["path"] for p in problems if p["kind"] in DUPLICATE_KINDS}
    counts = {split: {cls: 0 for cls in names} for split, names in classes.items()}
    for f in good:
        if f["path"] not in redundant:
            counts[f["split"]][f["class"]] += 1

    findings = training_findings(layout, classes, readable)
    return {
        "root": str(layout.root),
        "layout": layout.kind,
        "files": len(files),
        "good": len(good) - len(redundant),
        "min_size": min_size,
        "hash": "pixels" if pixel_hash else "bytes",
        "counts": counts,
        "dataset_problems": findings.refusals,
        "warnings": findings.warnings,
        "class_problems": class_problems(classes, counts, layout.kind),
        "imbalance": imbalance(counts),
        "sizes": size_stats([f for f in good if f["path"] not in redundant]),
        "problems": problems,
        "duplicates": duplicates,
        "summary": dict(Counter(p["kind"] for p in problems)),
        "quarantined": [],
    }


def training_findings(layout: Layout, classes: dict[str, list[str]], readable: dict) -> Findings:
    """train.py's own rules (edgecls.data.checks) on this folder: refusals become problems, plus warnings about
    class folders beside train/ (a second copy of the data). A classes layout is judged as the train/ it becomes."""
    root = layout.root
    if layout.kind == "classes":
        found = layout_findings(root, classes["all"], {})
        found.warnings.append(f"{root}: train.py reads DATASET/train/ and val/; split first: edgecls data split {root}")
        return found
    train = classes.get("train", [])
    found = layout_findings(root, train, {s: names for s, names in classes.items() if s != "train"})
    if train:
        counted = count_findings(root, train, {s: [row.get(c, 0) for c in train] for s, row in readable.items()})
        found.refusals += counted.refusals
    copies = copies_warning(root, copies_beside(root, train))
    found.warnings += [copies] if copies else []
    return found


def copy_kind(copy: dict, kept: dict) -> str:
    """How a copy relates to the file kept: another class wins over another split, else a plain duplicate."""
    if copy["class"] != kept["class"]:
        return "label-conflict"
    return "leakage" if copy["split"] != kept["split"] else "duplicate"


def find_duplicates(good: list[dict]) -> list[dict]:
    """Groups of identical files, the one to keep first (train before val before test, then by path).

    Every other copy gets its own kind against the kept file; the group's kind is the most severe.
    """
    by_hash: dict[str, list[dict]] = defaultdict(list)
    for f in good:
        by_hash[f["sha1"]].append(f)
    groups = []
    for digest, members in by_hash.items():
        if len(members) < 2:
            continue
        members.sort(key=lambda f: (SPLIT_ORDER.get(f["split"], 9), f["path"]))
        files = [
            {
                "path": f["path"],
                "split": f["split"],
                "class": f["class"],
                "kind": copy_kind(f, members[0]) if i else None,
            }
            for i, f in enumerate(members)
        ]
        kind = max((f["kind"] for f in files[1:]), key=DUPLICATE_KINDS.index)
        groups.append({"kind": kind, "sha1": digest, "files": files})
    groups.sort(key=lambda g: g["files"][0]["path"])
    return groups


def class_problems(classes: dict[str, list[str]], counts: dict, kind: str) -> list[str]:
    notes = []
    reference = classes.get("train" if kind == "splits" else "all", [])
    for split, names in classes.items():
        missing = [c for c in reference if c not in names]
        if missing:
            notes.append(f"{split}/: no folder for class(es) {missing}")
        empty = [c for c in names if counts[split].get(c, 0) == 0]
        if empty:
            notes.append(f"{split}/: class(es) {empty} have no usable images")
    return notes


def imbalance(counts: dict) -> dict:
    """Largest / smallest class of the training split (or the only split), and classes far below the median."""
    split = "train" if "train" in counts else next(iter(counts), None)
    row = counts.get(split, {}) if split else {}
    nonzero = {c: n for c, n in row.items() if n > 0}
    if not nonzero:
        return {"split": split, "ratio": None, "smallest": None, "largest": None, "under_half_median": []}
    smallest = min(nonzero, key=lambda c: (nonzero[c], c))
    largest = max(nonzero, key=lambda c: (nonzero[c], c))
    median = statistics.median(nonzero.values())
    return {
        "split": split,
        "ratio": round(nonzero[largest] / nonzero[smallest], 3),
        "smallest": [smallest, nonzero[smallest]],
        "largest": [largest, nonzero[largest]],
        "median": median,
        "under_half_median": sorted(c for c, n in nonzero.items() if n < median / 2),
    }


def size_stats(good: list[dict]) -> dict:
    if not good:
        return {}
    widths = [f["width"] for f in good]
    heights = [f["height"] for f in good]
    sizes = Counter(f"{f['width']}x{f['height']}" for f in good)

    def summary(values):
        return {
            "min": min(values),
            "max": max(values),
            "mean": round(statistics.fmean(values), 1),
            "median": statistics.median(values),
        }

    return {
        "width": summary(widths),
        "height": summary(heights),
        "distinct_sizes": len(sizes),
        "most_common": sizes.most_common(5),
        "formats": dict(Counter(f["format"] for f in good)),
    }


def quarantine(report: dict, qdir: str | os.PathLike, kinds=KINDS) -> list[dict]:
    """Move the flagged files of `kinds` to QDIR/<path relative to the dataset>; never overwrite there."""
    root = Path(report["root"])
    qdir = Path(qdir)
    if report["layout"] == "classes" and is_inside(qdir, root):
        raise UserError(
            f"`quarantine` {qdir}: inside {root}, where it would be read as a class; "
            "choose a folder outside the dataset"
        )
    for split in ("train", "val", "test"):
        if report["layout"] == "splits" and is_inside(qdir, root / split):
            raise UserError(f"`quarantine` {qdir}: inside {root / split}; choose a folder outside the splits")
    moved = []
    for problem in report["problems"]:
        if problem["kind"] not in kinds:
            continue
        src = Path(problem["path"])
        if not src.exists():
            continue
        dest = free_path(qdir / src.relative_to(root))
        move_file(src, dest)
        moved.append({"from": str(src), "to": str(dest), "kind": problem["kind"]})
    report["quarantined"] = moved
    return moved


def write_json(report: dict, path: str | os.PathLike) -> None:
    atomic_write_text(json.dumps(report, indent=2, default=str) + "\n", Path(path))


def format_report(report: dict, limit: int = 20) -> str:
    """Human-readable report: problems by kind (first `limit` of each), counts, imbalance, sizes."""
    dataset = report["dataset_problems"]
    lines = [
        f"verified {report['files']} files in {report['root']} ({report['layout']} layout): "
        f"{report['good']} usable, {len(report['problems']) + len(dataset)} problem(s)"
    ]
    if dataset:
        lines.append(f"\ntrain.py refuses this dataset ({len(dataset)}):")
        lines += [f"  {message}" for message in dataset]
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for p in report["problems"]:
        by_kind[p["kind"]].append(p)
    for kind in KINDS:
        items = by_kind.get(kind, [])
        if not items:
            continue
        lines.append(f"\n{kind} ({len(items)}):")
        lines += [f"  {p['path']}: {p['reason']}" for p in items[:limit]]
        if len(items) > limit:
            lines.append(f"  ... {len(items) - limit} more (see the JSON report)")
    splits = list(report["counts"])
    classes = sorted({c for row in report["counts"].values() for c in row})
    width = max([5] + [len(c) for c in classes])
    lines.append("\nusable images per class:")
    lines.append(f"  {'class':<{width}}  " + "  ".join(f"{s:>6}" for s in splits))
    for cls in classes:
        lines.append(f"  {cls:<{width}}  " + "  ".join(f"{report['counts'][s].get(cls, 0):>6}" for s in splits))
    lines += [f"  note: {n}" for n in report["class_problems"]]
    imb = report["imbalance"]
    if imb.get("ratio") is not None:
        lines.append(
            f"imbalance ({imb['split']}): largest/smallest = {imb['ratio']:g} "
            f"({imb['largest'][0]}: {imb['largest'][1]}, {imb['smallest'][0]}: {imb['smallest'][1]})"
            + (f"; under half the median: {imb['under_half_median']}" if imb["under_half_median"] else "")
        )
    sizes = report["sizes"]
    if sizes:
        w, h = sizes["width"], sizes["height"]
        common = ", ".join(f"{s} ({n})" for s, n in sizes["most_common"])
        lines.append(
            f"image sizes: width {w['min']}..{w['max']} (median {w['median']}), "
            f"height {h['min']}..{h['max']} (median {h['median']}); {sizes['distinct_sizes']} distinct; "
            f"most common {common}"
        )
    lines += [f"warning: {message}" for message in report["warnings"]]
    if report["quarantined"]:
        lines.append(f"quarantined {len(report['quarantined'])} file(s), e.g. {report['quarantined'][0]['to']}")
    return "\n".join(lines)
