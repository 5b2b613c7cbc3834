"""Decoded images: every image decoded ONCE to uint8 at a fixed resolution, in RAM or on disk.

Why: decoding JPEG/PNG with PIL every epoch costs more than the model step on a GPU (and more than a
small model's step on a CPU). The cache holds an N x H x W x 3 uint8 array, in RAM (numpy) or as a
memory-mapped .npy file in the persistent cache folder (`store.CacheStore`: `cache_dir`, default
$EDGECLS_CACHE_DIR/images) keyed by a hash of (file list, sizes, mtimes, resolution, resize policy),
so a changed file rebuilds it and a second run of train.py reuses it without decoding anything.

- Validation images are cached through `Preprocess.resize_image` at the input size (EvalDecoder), and
  only normalized afterwards: the tensors are identical to the uncached eval path.
- Training images are squashed to a slightly larger "cache resolution" (TrainDecoder); the crop, flip
  and normalization then run batched on the training device (`augment.BatchAugment`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgecls.data.cache.policy import cache_bytes
from edgecls.data.cache.store import CacheStore
from edgecls.data.images import load_rgb
from edgecls.data.presets import Preprocess
from edgecls.data.shards.member import Member, source_stat
from edgecls.errors import UserError
from edgecls.settings import format_bytes

CACHE_VERSION = 2


# ----------------------------------------------------------------------------- decoding (picklable)


class EvalDecoder:
    """Exactly the eval path's pixels: load_rgb + Preprocess.resize_image (uint8 HxWx3)."""

    def __init__(self, preprocess: Preprocess):
        self.preprocess_dict = preprocess.to_dict()
        self._pre = preprocess

    def __getstate__(self):
        return {"preprocess_dict": self.preprocess_dict}

    def __setstate__(self, state):
        self.preprocess_dict = state["preprocess_dict"]
        self._pre = Preprocess.from_dict(self.preprocess_dict)

    @property
    def size(self) -> tuple[int, int]:
        return self._pre.input_size

    def describe(self) -> str:
        return "eval:" + json.dumps(self.preprocess_dict, sort_keys=True)

    def __call__(self, path: str) -> tuple[np.ndarray, tuple[int, int]]:
        img = load_rgb(path)
        return np.asarray(self._pre.resize_image(img), np.uint8), (img.width, img.height)


def decode_chunk(args) -> tuple[int | list[int], np.ndarray | None, np.ndarray, list[tuple[str, str]]]:
    """Decode the sources of rows `where` (a first row, or a list of rows); write into the memmap file when
    given, else return the rows."""
    decoder, where, paths, out_file = args
    h, w = decoder.size
    rows = np.zeros((len(paths), h, w, 3), np.uint8)
    sizes = np.zeros((len(paths), 2), np.int32)
    errors = []
    for i, path in enumerate(paths):
        try:
            rows[i], sizes[i] = decoder(path)
        except Exception as exc:  # noqa: BLE001 - reported to the user by path, never a traceback
            errors.append((str(path), f"{type(exc).__name__}: {exc}"))
            sizes[i] = (w, h)
    if out_file is not None:
        mm = np.load(out_file, mmap_mode="r+")
        mm[_rows(where, len(paths))] = rows
        mm.flush()
        del mm
        return where, None, sizes, errors
    return where, rows, sizes, errors


# ----------------------------------------------------------------------------- the cache


@dataclass
class DecodedImages:
    """uint8 N x H x W x 3 rows (RAM array or read-only memmap) and each source image's (W, H)."""

    pixels: np.ndarray | torch.Tensor  # torch uint8 tensor on the GPU in mode "gpu"
    orig_sizes: np.ndarray  # N x 2 int32, (width, height) of the full upright image
    mode: str  # "ram" | "disk" | "gpu"
    path: Path | None = None
    fill: object | None = None  # gpu.DeviceFill still writing the rows (wait(rows) before reading)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)


def cache_key(paths: list, decoder, variant: str = "") -> str:
    """The persistent cache's key: the sources (path, size, mtime; a shard member: its shard's and its byte
    range), the decoder (preprocessing, resolution) and a variant (who decoded: the gpu fill writes its own)."""
    h = hashlib.sha1(f"v{CACHE_VERSION}|{decoder.describe()}|{variant}|{len(paths)}".encode())
    shards: dict = {}
    for p in paths:
        h.update(("\n" + source_stat(p, shards)).encode())
    return h.hexdigest()[:24]


def _chunks(paths: list, workers: int) -> list[tuple[int | list[int], list]]:
    """(rows, sources) to decode per job: runs of rows for files; for shard members, rows in the order their
    bytes lie in the shards (so a cold shard is read front to back), written back to their own rows."""
    size = max(16, min(512, len(paths) // max(1, workers * 4) or 1))
    if not paths or not all(isinstance(p, Member) for p in paths):
        return [(i, paths[i : i + size]) for i in range(0, len(paths), size)]
    order = sorted(range(len(paths)), key=lambda i: (paths[i].shard, paths[i].offset))
    return [(order[i : i + size], [paths[j] for j in order[i : i + size]]) for i in range(0, len(paths), size)]


def _rows(where: int | list[int], count: int):
    """The row selector of a job: a slice for a run of rows, else the list of rows."""
    return slice(where, where + count) if isinstance(where, int) else np.asarray(where, np.int64)


def _run_decode(paths, decoder, workers, out_file, pixels, sizes, log) -> None:
    jobs = [(decoder, where, chunk, out_file) for where, chunk in _chunks(paths, workers)]
    errors: list[tuple[str, str]] = []

    def take(result):
        where, rows, chunk_sizes, errs = result
        if rows is not None:
            pixels[_rows(where, len(rows))] = rows
        sizes[_rows(where, len(chunk_sizes))] = chunk_sizes
        errors.extend(errs)

    if workers > 1 and len(paths) >= 256:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(decode_chunk, jobs):
                take(result)
    else:
        for job in jobs:
            take(decode_chunk(job))
    if errors:
        raise undecodable(errors)


def undecodable(failed: list[tuple[str, str]]) -> UserError:
    """The error for (path, reason) files the cache could not decode: one line for one file, up to 10 listed."""
    if len(failed) == 1:
        path, reason = failed[0]
        return UserError(
            f"{path}: could not be decoded for the image cache ({reason}; changed since the scan?); "
            f"fix or remove it, or train with `cache_images` none"
        )
    listing = "\n".join(f"  {p}: {r}" for p, r in failed[:10])
    more = f"\n  ... and {len(failed) - 10} more" if len(failed) > 10 else ""
    return UserError(
        f"{len(failed)} images could not be decoded for the image cache (changed since the scan?):\n"
        f"{listing}{more}\nfix or remove them, or train with `cache_images` none"
    )


def load_or_build(
    paths: list, decoder, mode: str, workers: int = 1, log=print, build: bool = True, store: CacheStore | None = None
) -> DecodedImages:
    """The cached rows for `paths` (same order), decoding only when no valid cache exists.

    mode "disk": the persistent cache's entry (`store`), built when missing and kept for later runs. mode
    "ram": an entry of the persistent cache when there is one (memory-mapped, nothing decoded), else the
    rows decoded into RAM (nothing written). build=False (DDP ranks > 0 after rank 0 built the entry) only
    opens it.
    """
    h, w = decoder.size
    n = len(paths)
    shape = (n, h, w, 3)
    store = store if store is not None else CacheStore(log=log)
    if mode not in ("ram", "disk"):
        raise ValueError(f"load_or_build: mode must be ram or disk, not {mode!r}")
    key = cache_key(paths, decoder)
    found = store.open(key, shape)
    if found is not None:
        log(f"reusing {n} decoded images at {h}x{w} from {store.entry(key)} (nothing to decode)")
        return DecodedImages(found[0], found[1], "disk", store.entry(key) / "pixels.npy")
    nbytes = cache_bytes(n, (h, w))
    if mode == "ram":
        log(f"caching {n} decoded images at {h}x{w} in RAM ({nbytes / 2**20:.0f} MiB, once)")
        pixels = np.empty(shape, np.uint8)
        sizes = np.zeros((n, 2), np.int32)
        _run_decode(paths, decoder, workers, None, pixels, sizes, log)
        return DecodedImages(pixels, sizes, "ram")
    if not build:
        raise UserError(
            f"image cache {store.entry(key)} is missing after rank 0 built it; is `cache_dir` ({store.root}) one "
            "folder shared by all ranks?"
        )
    if not store.fits(nbytes):
        raise UserError(
            f"`cache_images` disk: the {n} decoded images need {format_bytes(nbytes)}, over `cache_limit` "
            f"{format_bytes(store.limit)}; raise `cache_limit` or use `cache_images` ram|none"
        )

    def fill(pixels, sizes, pixels_path) -> None:  # under the entry's lock, only when no other run built it
        log(f"caching {n} decoded images at {h}x{w} in {store.entry(key)} ({nbytes / 2**20:.0f} MiB, once; later "
            "runs reuse it)")  # fmt: skip
        _run_decode(paths, decoder, workers, str(pixels_path), None, sizes, log)

    meta = {"decoder": decoder.describe(), "count": n, "first": str(paths[0]) if paths else None}
    pixels, sizes, built = store.build(key, shape, fill, meta)
    if not built:
        log(f"reusing {n} decoded images at {h}x{w} from {store.entry(key)} (another run built it meanwhile)")
    return DecodedImages(pixels, sizes, "disk", store.entry(key) / "pixels.npy")


# ----------------------------------------------------------------------------- GPU-resident copy


def upload(images: DecodedImages, device: torch.device, chunk_rows: int = 2048) -> DecodedImages:
    """Copy cached rows into one uint8 tensor in GPU memory, a chunk at a time (a memmap never loads whole)."""
    pixels = images.pixels
    out = torch.empty(tuple(pixels.shape), dtype=torch.uint8, device=device)
    with warnings.catch_warnings():  # a read-only memmap: torch warns that the tensor is not writable; only read here
        warnings.simplefilter("ignore", UserWarning)
        for start in range(0, len(pixels), chunk_rows):
            out[start : start + chunk_rows].copy_(
                torch.from_numpy(np.ascontiguousarray(pixels[start : start + chunk_rows]))
            )
    return DecodedImages(out, np.asarray(images.orig_sizes), "gpu", images.path)
