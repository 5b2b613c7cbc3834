"""inference.py's library: classify image files into prediction records (the JSON eval reads back).

One image gives one record file; many images (a folder or a glob) give a folder of records plus
summary.csv; without a path given, both go into a new run folder, runs/inference/<name>/. A record is
`{"img_path": ..., "0_0": [[score, label], ...]}`, best first. Output files are written atomically; an
earlier run's records are replaced only with `force`, and nothing else is ever replaced or deleted.
"""

from __future__ import annotations

import csv
import glob
import io
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.atomic import atomic_write_text
from edgecls.data.images import has_image_extension
from edgecls.data.layout import is_hidden, walk_files
from edgecls.errors import UserError

RUNS_DIR = Path("runs") / "inference"  # default outputs: RUNS_DIR/<name>/, never the current folder
SINGLE_NAME = "inference_result.json"  # one image's record inside its run folder (Kneron's default name)
SUMMARY_NAME = "summary.csv"
SUMMARY_FIELDS = ["img_path", "top1_label", "top1_score", "json_file", "error"]
MAX_PREDICTION_BYTES = 16 * 2**20  # a larger .json is not one of our records (all of 100k classes is ~4 MB)


# ----------------------------------------------------------------------------- inputs
def collect_images(spec: str) -> tuple[list[str], bool]:
    """(image paths, many) for a file, a folder (recursive, hidden entries skipped) or a glob; a shard folder
    (edgecls data pack) or one of its .tar files: the Members of its images."""
    from edgecls.data.shards.index import shard_sources

    members = shard_sources(spec)
    if members is not None:
        return members, True
    path = Path(spec)
    if path.is_file():
        return [str(path)], False
    if path.is_dir():
        found = walk_files(spec, images_only=True)
        if not found:
            raise UserError(f"`img_path` {spec}: no image files (.jpg .png .bmp .webp .tif) in this folder")
        return found, True
    if glob.has_magic(spec):
        found = sorted(
            f
            for f in glob.glob(spec, recursive=True)
            if os.path.isfile(f) and has_image_extension(f) and not is_hidden(os.path.basename(f))
        )
        if not found:
            raise UserError(f"`img_path` {spec}: the pattern matches no image files")
        return found, True
    raise UserError(f"`img_path` {spec}: no such file or folder")


# ---------------------------------------------------------------------------- records
def prediction_record(img_path: str, ranked: list[tuple[float, str]]) -> dict:
    return {"img_path": img_path, "0_0": [[score, label] for score, label in ranked]}


def is_prediction_file(path: Path) -> bool:
    """A JSON file holding one prediction record as inference.py writes it (docs/ARCHITECTURE.md)."""
    try:
        if path.stat().st_size > MAX_PREDICTION_BYTES:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and set(data) == {"img_path", "0_0"} and isinstance(data["0_0"], list)


def is_inference_summary(path: Path) -> bool:
    """summary.csv as inference.py writes it (a training run's summary.csv has other columns)."""
    if path.name != SUMMARY_NAME:
        return False
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return next(csv.reader(fh), None) == SUMMARY_FIELDS
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


# ------------------------------------------------------------------------- one image
def check_single_output(save_path: Path, img_path: str, force: bool) -> None:
    """Never write over the input image; replace an earlier prediction record freely (a rerun), any other
    existing file only with `force`."""
    if not save_path.exists() or save_path.is_dir():  # a folder is the writer's to refuse
        return
    if os.path.samefile(save_path, img_path):
        raise UserError(f"`save_path` {save_path}: this is the input image; choose another `save_path`")
    if not force and not is_prediction_file(save_path):
        raise UserError(
            f"`save_path` {save_path}: already exists and is not a prediction record; pass `force` "
            "to replace it or choose another `save_path`"
        )


def predict_one(predictor, path: str, topk: int) -> dict:
    """The record of one image (a UserError naming it when it cannot be read)."""
    [(path, probs, error)] = list(predictor.predict_paths([path], batch_size=1, workers=1))
    if error:
        raise UserError(f"{path}: {error}")
    return prediction_record(path, predictor.topk(probs, topk))


def write_record(record: dict, save_path: Path) -> None:
    atomic_write_text(json.dumps(record, indent=2) + "\n", save_path)


def classify_one(predictor, path: str, save_path: Path, topk: int) -> dict:
    """The record of one image, written to `save_path`."""
    record = predict_one(predictor, path, topk)
    write_record(record, save_path)
    return record


# ------------------------------------------------------------------ the default run folder
def run_name(spec: str) -> str:
    """The input's name for its run folder: a file's stem, a folder's name, a glob's fixed folder."""
    fixed = spec
    if glob.has_magic(spec):
        parts = Path(spec).parts
        fixed = str(Path(*parts[: next(i for i, part in enumerate(parts) if glob.has_magic(part))] or ["."]))
    path = Path(os.path.abspath(fixed))
    name = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return name or "predict"


def check_run_name(name: str, base: str | os.PathLike = RUNS_DIR) -> None:
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise UserError(f"`name` {name!r}: give a folder name (the run folder is {base}/<name>), not a path")


def claim_run_folder(name: str, base: str | os.PathLike = RUNS_DIR) -> Path:
    """A new, empty base/name (then name-2, name-3, ...): made with an exclusive mkdir, so an earlier run's
    folder is never reused and two runs started together never share one."""
    check_run_name(name, base)
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    for i in itertools.count(1):
        folder = base / (name if i == 1 else f"{name}-{i}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------ many images
def output_folder(save_path: str) -> Path:
    p = Path(save_path)
    return p.with_suffix("") if p.suffix.lower() == ".json" else p


def prepare_output_folder(folder: Path, force: bool) -> list[Path]:
    """Refuse to mix with an earlier run's files (eval would read them) unless `force` removes them.

    Only prediction records and summary.csv count as an earlier run's; other files are never touched.
    Returns the other JSON files found there (eval would read them too).
    """
    if folder.exists() and not folder.is_dir():
        raise UserError(f"`save_path`: {folder} exists and is not a folder; choose another `save_path`")
    if not folder.is_dir():
        folder.mkdir(parents=True)
        return []
    entries = [f for f in sorted(folder.iterdir()) if f.is_file()]
    summary = folder / SUMMARY_NAME
    if summary.exists() and not is_inference_summary(summary):
        raise UserError(
            f"`save_path`: {summary} is not an inference summary (a training run's?) and would be "
            "replaced; choose another `save_path`"
        )
    old = [f for f in entries if f == summary or (f.suffix == ".json" and is_prediction_file(f))]  # summary: ours
    if old and not force:
        raise UserError(
            f"`save_path`: {folder} already holds {len(old)} prediction file(s) from an earlier run; "
            "pass `force` to replace them or choose another `save_path`"
        )
    for f in old:
        f.unlink()
    return [f for f in entries if f.suffix == ".json" and f not in old]


def json_name_for(img_path: str, root: str, used: set[str]) -> str:
    """A unique, readable file name: the image's path under the input root with '/' -> '__'."""
    rel = os.path.relpath(os.path.abspath(img_path), root)
    base = rel.replace(os.sep, "__").replace("/", "__").lstrip(".") or "image"
    name, n = f"{base}.json", 1
    while name in used:
        n += 1
        name = f"{base}.{n}.json"
    used.add(name)
    return name


@dataclass
class FolderRun:
    """What classify_many did: images classified and (path, reason) of the ones that could not be read."""

    folder: Path
    total: int
    failed: list[tuple[str, str]] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # summary.csv's rows, in input order

    @property
    def done(self) -> int:
        return self.total - len(self.failed)


def classify_many(predictor, paths: list[str], folder: Path, topk: int, batch_size=32, workers=None, progress=False):
    """One record per image in `folder` (prepared by prepare_output_folder), then summary.csv."""
    from edgecls.progress import progress_bar

    root = os.path.commonpath([os.path.dirname(os.path.abspath(str(p))) for p in paths])
    used: set[str] = set()
    run = FolderRun(folder, len(paths))
    rows = run.rows
    with progress_bar(len(paths), progress) as bar:
        for path, probs, error in predictor.predict_paths(paths, batch_size=batch_size, workers=workers):
            bar.update(1)
            if error:
                run.failed.append((path, error))
                rows.append({"img_path": path, "top1_label": "", "top1_score": "", "json_file": "", "error": error})
                continue
            record = prediction_record(path, predictor.topk(probs, topk))
            name = json_name_for(path, root, used)
            atomic_write_text(json.dumps(record) + "\n", folder / name)
            score, label = record["0_0"][0]
            rows.append({"img_path": path, "top1_label": label, "top1_score": f"{score:.6f}", "json_file": name})
    write_summary(rows, folder / SUMMARY_NAME)
    return run


def write_summary(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), path)
