"""The persistent decoded-image cache: entries in one folder (`cache_dir`), each built once, kept within `cache_limit`.

    CACHE_DIR/<key>/pixels.npy   uint8 N x H x W x 3, memory-mapped by every run that reuses it
    CACHE_DIR/<key>/sizes.npy    N x 2 int32, each source image's (width, height)
    CACHE_DIR/<key>/meta.json    what it holds; its mtime is the entry's last use (least recently used goes first)
    CACHE_DIR/.<key>.lock        held while <key> is built

- Two runs that start at once on the same data: the first takes the entry's lock and builds it, the
  second waits on the lock and then maps the finished entry (one decode for both).
- An entry is built in a hidden folder and published by renaming it to <key>: an entry is there whole
  or not at all, also when the builder is killed (its hidden folder is removed by a later run).
- Before an entry is built, the least recently used entries are removed until it fits in the limit;
  entries this process uses are kept. A run still reading an entry another run removed keeps its
  mapping (POSIX keeps a removed file until it is closed).
- The disk blocks are reserved up front (posix_fallocate): a full disk is an error before decoding, not
  a crash on a memory-mapped write.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from edgecls.data.cache.policy import DEFAULT_LIMIT, cache_bytes, images_cache_dir
from edgecls.errors import UserError
from edgecls.settings import format_bytes

ENTRY_VERSION = 2  # the layout above (version 1: flat <key>.npy + <key>.sizes.npy files, which are left alone)


class CacheStore:
    """One cache folder and its size limit; `log` says what it reuses, builds and removes."""

    def __init__(self, root: str | os.PathLike | None = None, limit: int = DEFAULT_LIMIT, log=print):
        self.root = Path(root) if root else images_cache_dir()
        self.limit = int(limit)
        self.log = log
        self.in_use: set[str] = set()  # keys this process opened: never evicted by it

    # ------------------------------------------------------------------ reading
    def entry(self, key: str) -> Path:
        return self.root / key

    def open(self, key: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        """(memory-mapped pixels, sizes) of a whole entry of this shape, marked as just used; None when absent."""
        folder = self.entry(key)
        try:
            pixels = np.load(folder / "pixels.npy", mmap_mode="r")
            sizes = np.load(folder / "sizes.npy")
        except (OSError, ValueError):
            return None  # absent, or removed while we looked
        if pixels.shape != tuple(shape) or sizes.shape != (shape[0], 2):
            return None
        with contextlib.suppress(OSError):
            os.utime(folder / "meta.json")
        self.in_use.add(key)
        return pixels, sizes

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.limit

    # ------------------------------------------------------------------ building
    def build(
        self, key: str, shape: tuple[int, ...], fill: Callable[[np.ndarray, np.ndarray, Path], None], meta: dict
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """(pixels, sizes, built): the entry `key`, built by `fill(pixels memmap, sizes, the memmap's file)` unless
        another run built it first (then built is False). Blocks while another run builds the same key."""
        self._mkdir()
        nbytes = int(np.prod(shape))
        with FileLock(str(self._lock(key))):
            found = self.open(key, shape)
            if found is not None:
                return (*found, False)
            self.make_room(nbytes)
            tmp = self.root / f".building-{key}-{uuid.uuid4().hex[:8]}"
            try:
                tmp.mkdir()
                pixels = np.lib.format.open_memmap(tmp / "pixels.npy", mode="w+", dtype=np.uint8, shape=shape)
                _reserve(tmp / "pixels.npy", self.root)
                sizes = np.zeros((shape[0], 2), np.int32)
                fill(pixels, sizes, tmp / "pixels.npy")
                pixels.flush()
                del pixels
                np.save(tmp / "sizes.npy", sizes)
                (tmp / "meta.json").write_text(json.dumps({**meta, "version": ENTRY_VERSION, "shape": list(shape)}))
                try:
                    os.rename(tmp, self.entry(key))  # publish: the whole entry appears at once
                except OSError:
                    if not (self.entry(key) / "meta.json").is_file():
                        raise  # not "another run published it first"
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        found = self.open(key, shape)
        if found is None:
            raise UserError(f"image cache {self.entry(key)}: removed right after it was built; run again")
        return (*found, True)

    def make_room(self, nbytes: int) -> list[str]:
        """Remove least recently used entries (not this process's) until `nbytes` more fit within the limit."""
        removed = []
        entries = sorted(self.entries(), key=lambda e: e[2])  # oldest use first
        used = sum(size for _, size, _ in entries)
        for key, size, _ in entries:
            if used + nbytes <= self.limit:
                break
            if key in self.in_use:
                continue
            shutil.rmtree(self.entry(key), ignore_errors=True)
            used -= size
            removed.append(key)
            self.log(f"image cache: removed {key} ({format_bytes(size)}, least recently used) to stay within the limit")
        self._remove_stale()
        return removed

    # ------------------------------------------------------------------ the folder
    def entries(self) -> list[tuple[str, int, float]]:
        """(key, bytes, last use) of every whole entry."""
        out = []
        if not self.root.is_dir():
            return out
        for folder in self.root.iterdir():
            meta = folder / "meta.json"
            if folder.name.startswith(".") or not meta.is_file():
                continue
            try:
                size = sum(f.stat().st_size for f in folder.iterdir())
                out.append((folder.name, size, meta.stat().st_mtime))
            except OSError:
                continue  # removed meanwhile
        return out

    def describe(self) -> str:
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        return (
            f"image cache folder {self.root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, "
            f"{format_bytes(total)} of its {format_bytes(self.limit)} limit"
        )

    def _lock(self, key: str) -> Path:
        return self.root / f".{key}.lock"

    def _mkdir(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"image cache folder {self.root}: {exc.strerror or exc}; choose another `cache_dir` or use "
                "`cache_images` ram|none"
            ) from None

    def _remove_stale(self) -> None:
        """Hidden build folders of killed runs (their key's lock is free) and locks of removed entries."""
        for path in list(self.root.glob(".building-*")):
            key = path.name[len(".building-") :].rsplit("-", 1)[0]
            if _lock_is_free(self._lock(key)):
                shutil.rmtree(path, ignore_errors=True)
        for lock in list(self.root.glob(".*.lock")):
            key = lock.name[1 : -len(".lock")]
            if not self.entry(key).exists() and _lock_is_free(lock):
                with contextlib.suppress(OSError):
                    lock.unlink()


def _lock_is_free(path: Path) -> bool:
    try:
        with FileLock(str(path), timeout=0):
            return True
    except Timeout:
        return False


def _reserve(path: Path, root: Path) -> None:
    """Allocate the file's blocks now: a full disk is a UserError here rather than SIGBUS on a mapped write."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise UserError(
                f"image cache folder {root}: not enough free disk for {format_bytes(os.fstat(fd).st_size)}; free "
                "some space, lower `cache_limit`, choose another `cache_dir` or use `cache_images` ram|none"
            ) from None
        # other errors (a filesystem without fallocate): go on without the reservation
    finally:
        os.close(fd)


def entry_bytes(n: int, size: tuple[int, int]) -> int:
    """What an entry of n rows at size H x W takes on disk (pixels + sizes + a little)."""
    return cache_bytes(n, size) + 8 * n + 4096
