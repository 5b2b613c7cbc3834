"""Decoded images: every image decoded ONCE to uint8 at a fixed resolution, in RAM or on disk.

Why: decoding JPEG/PNG with PIL every epoch costs more than the model step on a GPU (and more than a
small model's step on a CPU). The cache holds an N x H x W x 3 uint8 array, in RAM (numpy) or as a
memory-mapped .npy file under $EDGECLS_CACHE_DIR/images keyed by a hash of (file list, sizes, mtimes,
resolution, resize policy), so a changed file rebuilds it and a second run of train.py reuses it
without decoding anything.

- Validation images are cached through `Preprocess.resize_image` at the input size (EvalDecoder), and
  only normalized afterwards: the tensors are identical to the uncached eval path.
- Training images are squashed to a slightly larger "cache resolution" (TrainDecoder); the crop, flip
  and normalization then run batched on the training device (`augment.BatchAugment`).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgecls.atomic import atomic_path
from edgecls.data.cache.policy import cache_bytes, images_cache_dir
from edgecls.data.images import load_rgb
from edgecls.data.presets import Preprocess
from edgecls.errors import UserError

CACHE_VERSION = 1


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


def decode_chunk(args) -> tuple[int, np.ndarray | None, np.ndarray, list[tuple[str, str]]]:
    """Decode paths[start:...]; write into the memmap file when given, else return the rows."""
    decoder, start, paths, out_file = args
    h, w = decoder.size
    rows = np.zeros((len(paths), h, w, 3), np.uint8)
    sizes = np.zeros((len(paths), 2), np.int32)
    errors = []
    for i, path in enumerate(paths):
        try:
            rows[i], sizes[i] = decoder(path)
        except Exception as exc:  # noqa: BLE001 - reported to the user by path, never a traceback
            errors.append((path, f"{type(exc).__name__}: {exc}"))
            sizes[i] = (w, h)
    if out_file is not None:
        mm = np.load(out_file, mmap_mode="r+")
        mm[start : start + len(paths)] = rows
        mm.flush()
        del mm
        return start, None, sizes, errors
    return start, rows, sizes, errors


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


def cache_key(paths: list[str], decoder) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}|{decoder.describe()}|{len(paths)}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"\n{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _chunks(paths: list[str], workers: int) -> list[tuple[int, list[str]]]:
    size = max(16, min(512, len(paths) // max(1, workers * 4) or 1))
    return [(i, paths[i : i + size]) for i in range(0, len(paths), size)]


def _run_decode(paths, decoder, workers, out_file, pixels, sizes, log) -> None:
    jobs = [(decoder, start, chunk, out_file) for start, chunk in _chunks(paths, workers)]
    errors: list[tuple[str, str]] = []

    def take(result):
        start, rows, chunk_sizes, errs = result
        if rows is not None:
            pixels[start : start + len(rows)] = rows
        sizes[start : start + len(chunk_sizes)] = chunk_sizes
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
    paths: list[str], decoder, mode: str, workers: int = 1, log=print, build: bool = True
) -> DecodedImages:
    """The cached rows for `paths` (same order), decoding only when no valid cache exists.

    mode is "ram" or "disk" (resolve "auto" first). build=False (DDP ranks > 0 after rank 0 built
    the disk file) only opens the existing file.
    """
    h, w = decoder.size
    n = len(paths)
    if mode == "disk":
        folder = images_cache_dir()
        key = cache_key(paths, decoder)
        data_file, sizes_file = folder / f"{key}.npy", folder / f"{key}.sizes.npy"
        if data_file.is_file() and sizes_file.is_file():
            try:
                pixels = np.load(data_file, mmap_mode="r")
                sizes = np.load(sizes_file)
                if pixels.shape == (n, h, w, 3) and sizes.shape == (n, 2):
                    return DecodedImages(pixels, sizes, "disk", data_file)
            except (OSError, ValueError):
                pass  # damaged: rebuild below
        if not build:
            raise UserError(
                f"image cache {data_file} is missing after rank 0 built it; is $EDGECLS_CACHE_DIR shared by all ranks?"
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"image cache folder {folder}: {exc.strerror or exc}; set $EDGECLS_CACHE_DIR or use "
                f"`cache_images` ram|none"
            ) from None
        log(f"caching {n} decoded images at {h}x{w} in {data_file} ({cache_bytes(n, (h, w)) / 2**20:.0f} MiB, once)")
        with atomic_path(data_file) as tmp:  # the data file appears last: its presence marks a complete cache
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, h, w, 3)).flush()
            sizes = np.zeros((n, 2), np.int32)
            _run_decode(paths, decoder, workers, str(tmp), None, sizes, log)
            with atomic_path(sizes_file) as sizes_tmp:
                np.save(sizes_tmp, sizes)
        return DecodedImages(np.load(data_file, mmap_mode="r"), sizes, "disk", data_file)
    if mode == "ram":
        log(f"caching {n} decoded images at {h}x{w} in RAM ({cache_bytes(n, (h, w)) / 2**20:.0f} MiB, once)")
        pixels = np.empty((n, h, w, 3), np.uint8)
        sizes = np.zeros((n, 2), np.int32)
        _run_decode(paths, decoder, workers, None, pixels, sizes, log)
        return DecodedImages(pixels, sizes, "ram")
    raise ValueError(f"load_or_build: mode must be ram or disk, not {mode!r}")


# ----------------------------------------------------------------------------- GPU-resident copy


def upload(images: DecodedImages, device: torch.device, chunk_rows: int = 2048) -> DecodedImages:
    """Copy cached rows into one uint8 tensor in GPU memory, a chunk at a time (a memmap never loads whole)."""
    pixels = images.pixels
    out = torch.empty(tuple(pixels.shape), dtype=torch.uint8, device=device)
    for start in range(0, len(pixels), chunk_rows):
        out[start : start + chunk_rows].copy_(
            torch.from_numpy(np.ascontiguousarray(pixels[start : start + chunk_rows]))
        )
    return DecodedImages(out, np.asarray(images.orig_sizes), "gpu", images.path)
