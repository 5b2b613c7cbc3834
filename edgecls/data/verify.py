"""Decode-check many image files in parallel, with a per-file cache (path, size, mtime).

The cache lives outside the user's data, in $EDGECLS_CACHE_DIR (default
~/.cache/edgecls/verify), one JSON file per folder scanned, so a second scan of an
unchanged 70k-image folder only stats the files.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from edgecls.atomic import atomic_write_text
from edgecls.data.cache.policy import cache_root
from edgecls.data.images import check_image
from edgecls.errors import UserError

CACHE_VERSION = 1


def cache_dir() -> Path:
    return cache_root() / "verify"


def _cache_file(paths: list[str]) -> Path:
    common = os.path.commonpath([os.path.abspath(p) for p in paths]) if paths else ""
    return cache_dir() / (hashlib.sha1(common.encode()).hexdigest()[:16] + ".json")


def _stamp(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def _check_chunk(paths: list[str]) -> list[str | None]:
    return [check_image(p) for p in paths]


def _load_cache(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
        return data["entries"] if data.get("version") == CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _save_cache(file: Path, entries: dict) -> None:
    try:
        atomic_write_text(json.dumps({"version": CACHE_VERSION, "entries": entries}), file)
    except (OSError, UserError):
        pass  # a read-only home only costs speed


def verify_files(paths: list[str], workers: int | None = None, use_cache: bool = True) -> dict[str, str | None]:
    """path -> None (good) or a short reason, for every path (keys as given)."""
    given = list(paths)
    paths = [os.path.abspath(p) for p in given]
    result: dict[str, str | None] = {}
    cache_file = _cache_file(paths)
    cache = _load_cache(cache_file) if use_cache and paths else {}
    stamps = {p: _stamp(p) for p in paths}
    todo = []
    for p in paths:
        hit = cache.get(p)
        if hit is not None and stamps[p] is not None and hit[0] == stamps[p]:
            result[p] = hit[1]
        else:
            todo.append(p)
    if todo:
        workers = workers if workers is not None else min(os.cpu_count() or 1, 32)
        if workers > 1 and len(todo) >= 200:
            size = max(64, len(todo) // (workers * 8))
            chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for chunk, verdicts in zip(chunks, pool.map(_check_chunk, chunks)):
                    result.update(zip(chunk, verdicts))
        else:
            result.update(zip(todo, _check_chunk(todo)))
        if use_cache:
            cache.update({p: [stamps[p], result[p]] for p in todo if stamps[p] is not None})
            _save_cache(cache_file, cache)
    return {g: result[p] for g, p in zip(given, paths)}
