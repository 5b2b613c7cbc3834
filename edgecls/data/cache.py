"""Decoded-image cache: every image decoded ONCE to uint8 at a fixed resolution, then batched.

Why: decoding JPEG/PNG with PIL every epoch costs more than the model step on a GPU (and
more than a small model's step on a CPU). The cache holds an N x H x W x 3 uint8 array, in
RAM (numpy) or as a memory-mapped .npy file under $EDGECLS_CACHE_DIR/images keyed by a hash
of (file list, sizes, mtimes, resolution, resize policy), so a changed file rebuilds it and a
second run of train.py reuses it without decoding anything.

- Validation images are cached through `Preprocess.resize_image` at the input size, and only
  normalized afterwards: the tensors are identical to the uncached eval path.
- Training images are squashed to a slightly larger "cache resolution"; the random-resized
  crop (sampled in the ORIGINAL image's coordinates, like TrainTransform), the flip and the
  normalization then run as one batched `grid_sample` on the training device.
- `CachedLoader` replaces the DataLoader: it gathers a batch of rows, moves it (pinned,
  non-blocking) to the device and augments it there; all randomness comes from the epoch
  seed, so resume stays exact.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edgecls.atomic import atomic_path
from edgecls.data.images import load_rgb
from edgecls.data.presets import Preprocess
from edgecls.errors import UserError

CACHE_VERSION = 1
MODES = ("auto", "none", "ram", "disk", "gpu")
GPU_BUDGET_FRACTION = 0.35  # auto on CUDA: keep the cache in GPU memory when it needs at most this share of free memory
RAM_BUDGET_FRACTION = 0.25  # auto: keep the cache in RAM when it needs at most this share of RAM
DISK_BUDGET_FRACTION = 0.5  # auto: else a memory-mapped file when it needs at most this share of free disk
MAX_CACHE_SCALE = 1.25  # training cache side = input side x min(this, 1/sqrt(crop_scale))


def images_cache_dir() -> Path:
    return Path(os.environ.get("EDGECLS_CACHE_DIR", Path.home() / ".cache" / "edgecls")) / "images"


def train_cache_size(preprocess: Preprocess, crop_scale: float) -> tuple[int, int]:
    """Room for the random-resized crop: a crop of area `crop_scale` still has ~input-size pixels."""
    h, w = preprocess.input_size
    if crop_scale >= 1.0:
        return h, w
    scale = min(MAX_CACHE_SCALE, 1.0 / math.sqrt(max(crop_scale, 1e-6)))
    return int(math.ceil(h * scale)), int(math.ceil(w * scale))


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


def _decode_chunk(args) -> tuple[int, np.ndarray | None, np.ndarray, list[tuple[str, str]]]:
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
    fill: object | None = None  # gpu_cache.DeviceFill still writing the rows (wait(rows) before reading)

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


def cache_bytes(n: int, size: tuple[int, int]) -> int:
    return int(n) * int(size[0]) * int(size[1]) * 3


def check_mode(mode: str, device: torch.device | None) -> None:
    """A --cache-images value this device can use (checked before a run writes anything)."""
    if mode not in MODES:
        raise UserError(f"--cache-images {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "gpu" and (device is None or device.type != "cuda"):
        raise UserError("--cache-images gpu needs a CUDA device (--gpu N); use ram or disk on the CPU")


def resolve_mode(mode: str, total_bytes: int, distributed: bool = False, device: torch.device | None = None) -> str:
    """auto -> gpu on a CUDA device when it fits GPU_BUDGET_FRACTION of its free memory; else ram when it
    fits a quarter of RAM (disk under DDP: one shared copy), else disk, else none."""
    check_mode(mode, device)
    on_cuda = device is not None and device.type == "cuda"
    if mode != "auto":
        return mode
    if on_cuda and total_bytes <= GPU_BUDGET_FRACTION * _gpu_free(device):
        return "gpu"
    ram = _physical_ram()
    disk_free = _disk_free(images_cache_dir())
    if not distributed and total_bytes <= RAM_BUDGET_FRACTION * ram:
        return "ram"
    if total_bytes <= DISK_BUDGET_FRACTION * disk_free:
        return "disk"
    if total_bytes <= RAM_BUDGET_FRACTION * ram:
        return "ram"
    return "none"


def _physical_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def _gpu_free(device: torch.device) -> int:
    try:
        return int(torch.cuda.mem_get_info(device)[0])
    except (RuntimeError, AssertionError):
        return 0


def _disk_free(folder: Path) -> int:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return 0


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
            for result in pool.map(_decode_chunk, jobs):
                take(result)
    else:
        for job in jobs:
            take(_decode_chunk(job))
    if errors:
        raise undecodable(errors)


def undecodable(failed: list[tuple[str, str]]) -> UserError:
    """The error for (path, reason) files the cache could not decode: one line for one file, up to 10 listed."""
    if len(failed) == 1:
        path, reason = failed[0]
        return UserError(
            f"{path}: could not be decoded for the image cache ({reason}; changed since the scan?); "
            f"fix or remove it, or train with --cache-images none"
        )
    listing = "\n".join(f"  {p}: {r}" for p, r in failed[:10])
    more = f"\n  ... and {len(failed) - 10} more" if len(failed) > 10 else ""
    return UserError(
        f"{len(failed)} images could not be decoded for the image cache (changed since the scan?):\n"
        f"{listing}{more}\nfix or remove them, or train with --cache-images none"
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
                f"--cache-images ram|none"
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


# ----------------------------------------------------------------------------- GPU-resident cache


def upload(images: DecodedImages, device: torch.device, chunk_rows: int = 2048) -> DecodedImages:
    """Copy cached rows into one uint8 tensor in GPU memory, a chunk at a time (a memmap never loads whole)."""
    pixels = images.pixels
    out = torch.empty(tuple(pixels.shape), dtype=torch.uint8, device=device)
    for start in range(0, len(pixels), chunk_rows):
        out[start : start + chunk_rows].copy_(
            torch.from_numpy(np.ascontiguousarray(pixels[start : start + chunk_rows]))
        )
    return DecodedImages(out, np.asarray(images.orig_sizes), "gpu", images.path)


# ----------------------------------------------------------------------------- batched augmentation


class BatchAugment:
    """Random-resized crop + horizontal flip + normalize on a uint8 NxHxWx3 batch, in one grid_sample.

    Crop boxes follow TrainTransform: area fraction in [crop_scale, 1] of the ORIGINAL image,
    aspect ratio = target ratio x exp(U(log 3/4, log 4/3)), 10 tries then the whole image.
    The cache is a squash of the original, so a box in normalized coordinates is the same box.
    """

    def __init__(self, preprocess: Preprocess, hflip: float = 0.5, crop_scale: float = 0.6):
        self.out_h, self.out_w = preprocess.input_size
        self.hflip = hflip
        self.crop_scale = crop_scale
        self.mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.mode = (
            "bicubic"
            if preprocess.interpolation == "bicubic"
            else ("nearest" if preprocess.interpolation == "nearest" else "bilinear")
        )

    def boxes(self, orig_sizes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """N x 4 boxes (x0, y0, w, h) as fractions of the image, plus flips via sign of w."""
        n = orig_sizes.shape[0]
        width = orig_sizes[:, 0].double()
        height = orig_sizes[:, 1].double()
        out = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64).repeat(n, 1)
        if self.crop_scale < 1.0:
            tries = 10
            area = (width * height)[:, None]
            frac = self.crop_scale + (1 - self.crop_scale) * torch.rand(
                n, tries, generator=generator, dtype=torch.float64
            )
            log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(
                n, tries, generator=generator, dtype=torch.float64
            )
            ratio = (self.out_w / self.out_h) * torch.exp(log_r)
            w = torch.round(torch.sqrt(area * frac * ratio))
            h = torch.round(torch.sqrt(area * frac / ratio))
            ok = (w > 0) & (h > 0) & (w <= width[:, None]) & (h <= height[:, None])
            pos = torch.rand(n, tries, 2, generator=generator, dtype=torch.float64)
            first = torch.where(ok.any(1), ok.double().argmax(1), torch.full((n,), -1))
            rows = torch.arange(n)
            pick = first.clamp(min=0)
            bw, bh = w[rows, pick], h[rows, pick]
            x0 = torch.floor(pos[rows, pick, 0] * (width - bw + 1))
            y0 = torch.floor(pos[rows, pick, 1] * (height - bh + 1))
            found = first >= 0
            out[found] = torch.stack([x0 / width, y0 / height, bw / width, bh / height], 1)[found]
        flip = torch.rand(n, generator=generator) < self.hflip if self.hflip > 0 else torch.zeros(n, dtype=torch.bool)
        out[flip, 2] *= -1  # negative width = mirrored
        return out

    def __call__(self, batch_u8: torch.Tensor, orig_sizes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 NxHxWx3 on any device -> float32 Nx3xoutHxoutW normalized on the same device."""
        device = batch_u8.device
        boxes = self.boxes(orig_sizes, generator)
        x = batch_u8.permute(0, 3, 1, 2).float()
        n = x.shape[0]
        x0, y0, bw, bh = boxes.unbind(1)
        sx, sy = bw.abs(), bh
        cx = (x0 + sx / 2) * 2 - 1
        cy = (y0 + sy / 2) * 2 - 1
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = torch.where(bw < 0, -sx, sx)
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = sy
        theta[:, 1, 2] = cy
        theta = _to_device(theta.float(), device)
        grid = F.affine_grid(theta, [n, 3, self.out_h, self.out_w], align_corners=False)
        x = F.grid_sample(x, grid, mode=self.mode, padding_mode="border", align_corners=False)
        if self.mode == "bicubic":
            x = x.clamp(0, 255)
        return (x - _to_device(self.mean, device)) / _to_device(self.std, device)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Small host tensor -> device without a stream sync (a pageable copy would wait for queued GPU work)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def normalize_batch(batch_u8: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """uint8 NxHxWx3 -> float32 Nx3xHxW, the same arithmetic as Preprocess.normalize_uint8."""
    x = batch_u8.to(torch.float32)
    mean = _to_device(torch.tensor(preprocess.mean, dtype=torch.float32), x.device)
    std = _to_device(torch.tensor(preprocess.std, dtype=torch.float32), x.device)
    return ((x - mean) / std).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- loader


class CachedSet:
    """Cached rows + labels: has __len__ so DistributedSampler can shard it."""

    def __init__(self, images: DecodedImages, labels: list[int]):
        if len(images) != len(labels):
            raise ValueError("CachedSet: one label per cached image")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)


def shuffled_order(n: int, seed: int) -> torch.Tensor:
    """The visiting order of a shuffled CachedLoader with this seed (also the order a streamed fill writes)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


class CachedLoader:
    """Yields (float images on `device`, labels on `device`) batches from a CachedSet.

    Training (augment given): shuffled from `seed` unless a sampler sets the order; crops and
    flips drawn from a generator seeded with `seed`. Evaluation: in order, normalized only.
    """

    def __init__(
        self,
        dataset: CachedSet,
        batch_size: int,
        device: torch.device,
        *,
        preprocess: Preprocess,
        augment: BatchAugment | None = None,
        shuffle: bool = False,
        seed: int = 0,
        sampler=None,
        drop_last: bool = False,
    ):
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self.preprocess = preprocess
        self.augment = augment
        self.shuffle = shuffle
        self.seed = seed
        self.sampler = sampler
        self.drop_last = drop_last

    def _order(self) -> torch.Tensor:
        if self.sampler is not None:
            return torch.as_tensor(list(iter(self.sampler)), dtype=torch.int64)
        n = len(self.dataset)
        return shuffled_order(n, self.seed) if self.shuffle else torch.arange(n)

    def _count(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.dataset)

    def __len__(self) -> int:
        n = self._count()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        order = self._order()
        generator = torch.Generator().manual_seed(self.seed + 7919)
        pixels = self.dataset.images.pixels
        sizes = torch.from_numpy(np.asarray(self.dataset.images.orig_sizes))
        cuda = self.device.type == "cuda"
        resident = isinstance(pixels, torch.Tensor)  # "gpu" cache: the batch is gathered on the device
        fill = self.dataset.images.fill
        if resident:
            order_dev = order.to(pixels.device)
            labels_dev = self.dataset.labels.to(pixels.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if resident:
                if fill is not None:
                    fill.wait(idx)
                idx_dev = order_dev[b * self.batch_size : (b + 1) * self.batch_size]
                batch, labels = pixels.index_select(0, idx_dev), labels_dev.index_select(0, idx_dev)
            else:
                idx_np = idx.numpy()
                # memmap reads are fastest in file order; gather sorted, then restore the batch order
                sort = np.argsort(idx_np, kind="stable")
                rows = np.empty((len(idx_np),) + pixels.shape[1:], np.uint8)
                rows[sort] = pixels[idx_np[sort]]
                batch = torch.from_numpy(rows)
                labels = self.dataset.labels[idx]
                if cuda:
                    batch = batch.pin_memory().to(self.device, non_blocking=True)
                    labels = labels.pin_memory().to(self.device, non_blocking=True)
            if self.augment is not None:
                images = self.augment(batch, sizes[idx], generator)
            else:
                images = normalize_batch(batch, self.preprocess)
            yield images, labels
