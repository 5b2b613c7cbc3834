"""Where the caches live, which cache mode a run gets, and how big a cache is. Free of torch imports.

auto -> gpu on a CUDA device when the decoded images fit GPU_BUDGET_FRACTION of its free memory; else
ram when they fit a quarter of RAM (disk under DDP: one shared copy), else disk (when they also fit the
persistent cache's `cache_limit`), else none.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from edgecls.errors import UserError

DEFAULT_LIMIT = 50 * 10**9  # `cache_limit`'s default, in bytes: what the persistent cache folder may hold

MODES = ("auto", "none", "ram", "disk", "gpu")
GPU_BUDGET_FRACTION = 0.35  # auto on CUDA: keep the cache in GPU memory when it needs at most this share of free memory
RAM_BUDGET_FRACTION = 0.25  # auto: keep the cache in RAM when it needs at most this share of RAM
DISK_BUDGET_FRACTION = 0.5  # auto: else a memory-mapped file when it needs at most this share of free disk
MAX_CACHE_SCALE = 1.25  # training cache side = input side x min(this, 1/sqrt(crop_scale))


def cache_root() -> Path:
    """$EDGECLS_CACHE_DIR, default ~/.cache/edgecls: the verify cache and the decoded images live under it."""
    return Path(os.environ.get("EDGECLS_CACHE_DIR", Path.home() / ".cache" / "edgecls"))


def images_cache_dir() -> Path:
    return cache_root() / "images"


def train_cache_size(preprocess, crop_scale: float) -> tuple[int, int]:
    """Room for the random-resized crop: a crop of area `crop_scale` still has ~input-size pixels."""
    h, w = preprocess.input_size
    if crop_scale >= 1.0:
        return h, w
    scale = min(MAX_CACHE_SCALE, 1.0 / math.sqrt(max(crop_scale, 1e-6)))
    return int(math.ceil(h * scale)), int(math.ceil(w * scale))


def cache_bytes(n: int, size: tuple[int, int]) -> int:
    return int(n) * int(size[0]) * int(size[1]) * 3


def check_mode(mode: str, device) -> None:
    """A cache mode this device can use (checked before a run writes anything)."""
    if mode not in MODES:
        raise UserError(f"`cache_images` {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "gpu" and (device is None or device.type != "cuda"):
        raise UserError("`cache_images` gpu needs a CUDA device (`gpu` N); use ram or disk on the CPU")


def resolve_mode(
    mode: str,
    total_bytes: int,
    distributed: bool = False,
    device=None,
    limit: float = math.inf,
    cache_dir: Path | None = None,
) -> str:
    """The cache mode for `total_bytes` of decoded images (auto resolved by the budgets above; `limit` and
    `cache_dir` are the persistent cache's bound and folder)."""
    check_mode(mode, device)
    on_cuda = device is not None and device.type == "cuda"
    if mode != "auto":
        return mode
    if on_cuda and total_bytes <= GPU_BUDGET_FRACTION * _gpu_free(device):
        return "gpu"
    ram = _physical_ram()
    disk_free = _disk_free(cache_dir or images_cache_dir())
    if not distributed and total_bytes <= RAM_BUDGET_FRACTION * ram:
        return "ram"
    if total_bytes <= DISK_BUDGET_FRACTION * disk_free and total_bytes <= limit:
        return "disk"
    if total_bytes <= RAM_BUDGET_FRACTION * ram:
        return "ram"
    return "none"


def _physical_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def _gpu_free(device) -> int:
    import torch

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
