"""Training images decoded straight into GPU memory ("--cache-images gpu").

JPEGs are decoded by nvjpeg (torchvision.io.decode_jpeg on the device) and resized there,
antialiased like PIL; every other file (PNG, grayscale / CMYK / progressive / EXIF-rotated
JPEG) goes through the same PIL decoder as the RAM cache. Files are read, sorted by their
JPEG header, and the non-nvjpeg ones decoded, in child processes (`fill_workers`), so that
none of that work takes the GIL from the thread that trains.

`DeviceFill` writes the rows in a given order. `run()` fills everything before training;
`start()` fills in a background thread on its own CUDA stream, in the order the first epoch
visits the images, and the loader waits only for the rows of its next batch: the first
epoch trains while the rest is still being decoded.

The persistent cache (`store.CacheStore`) is the fill's source and its keeper: a run finds the
rows an earlier run kept (its own fill's, or the CPU decoders' from a disk-cache run) and copies
them into GPU memory instead of decoding anything; a fill that decoded them copies them back to
the cache folder in a background thread once it is done (within `cache_limit`), for the next run.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from edgecls.data.cache.decoded import (
    DecodedImages,
    cache_key,
    decode_chunk,
    load_or_build,
    undecodable,
    upload,
)
from edgecls.data.cache.fill_workers import ERROR, JPEG, ROW, FileResult, read_chunks
from edgecls.data.cache.policy import cache_bytes
from edgecls.data.cache.store import CacheStore
from edgecls.data.cache.train_decoder import TrainDecoder

READ_CHUNK = 128  # files read (and decoded) per step of the fill
READ_PROCESSES = 2  # child processes reading (and PIL-decoding) chunks: see fill_workers ...
MAX_READ_PROCESSES = 8  # ... up to this many when --workers allows: PIL-decoded files (PNG, progressive) need CPU
GPU_DECODE_PIXELS = 48_000_000  # source pixels per nvjpeg call (bounds the float copy made for resizing)


def resize_on_device(images: list[torch.Tensor], size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """uint8 3xHixWi tensors -> uint8 N x H x W x 3, antialiased like PIL's resize; same-shape images batched."""
    h, w = size
    out = torch.empty((len(images), h, w, 3), dtype=torch.uint8, device=images[0].device)
    groups: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    mode = interpolation if interpolation in ("bilinear", "bicubic") else "nearest"
    extra = {"antialias": True, "align_corners": False} if mode != "nearest" else {}
    for idx in groups.values():
        batch = torch.stack([images[i] for i in idx]).float()
        resized = F.interpolate(batch, size=(h, w), mode=mode, **extra)
        out[torch.tensor(idx, device=out.device)] = resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out


class DeviceFill:
    """Fill a uint8 N x H x W x 3 tensor on `device` with the training decoder's rows, in `order`."""

    def __init__(
        self,
        paths: list[str],
        decoder: TrainDecoder,
        device: torch.device,
        *,
        order: torch.Tensor | None = None,
        read_processes: int = READ_PROCESSES,
        log=print,
        on_filled=None,
    ):
        self.paths = paths
        self.on_filled = on_filled  # called with this fill once every row is written (keeps the rows)
        self.saver: threading.Thread | None = None
        self.decoder = decoder
        self.device = device
        self.read_processes = read_processes
        self.order = (order if order is not None else torch.arange(len(paths))).tolist()
        self.log = log
        h, w = decoder.size
        self.pixels = torch.empty((len(paths), h, w, 3), dtype=torch.uint8, device=device)
        self.sizes = np.zeros((len(paths), 2), np.int32)
        self.nvjpeg_count = 0
        self.seconds = 0.0  # the fill's own duration, once finished
        self.wait_seconds = 0.0  # how long readers were blocked waiting for rows
        self.first_wait_seconds = 0.0  # ... of which for the first call of wait()
        self._waits = 0
        self._ready = np.zeros(len(paths), bool)
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._thread: threading.Thread | None = None
        self.finished = False
        self._synced = False

    @property
    def images(self) -> DecodedImages:
        return DecodedImages(self.pixels, self.sizes, "gpu", fill=self)

    # ------------------------------------------------------------------ filling
    def run(self) -> DecodedImages:
        """Fill every row now (this thread)."""
        self._fill()
        if self._error is not None:
            raise self._error
        self.wait_all()
        return self.images

    def start(self) -> DecodedImages:
        """Fill in a background thread; readers call wait(rows) before using rows."""
        self._thread = threading.Thread(target=self._fill, name="edgecls-device-fill", daemon=True)
        self._thread.start()
        return self.images

    def _fill(self) -> None:
        started = time.perf_counter()
        stream_ctx = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        try:
            chunks = [self.order[i : i + READ_CHUNK] for i in range(0, len(self.order), READ_CHUNK)]
            reads = read_chunks(
                [[self.paths[i] for i in chunk] for chunk in chunks],
                self.decoder.size,
                self.decoder.interpolation,
                self.read_processes,
            )
            with stream_ctx, contextlib.closing(reads):  # closing: an error stops the reader processes now
                for chunk, results in zip(chunks, reads):
                    self._decode(chunk, results)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread, which raises it
            self._error = exc
        self.seconds = time.perf_counter() - started
        if self._error is None and self.on_filled is not None:
            self.saver = self.on_filled(self)
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    def _decode(self, chunk: list[int], results: list[FileResult]) -> None:
        from torchvision.io import ImageReadMode, decode_jpeg

        errors = [(self.paths[i], r.data) for i, r in zip(chunk, results) if r.kind == ERROR]
        if errors:
            raise undecodable(errors)
        good = [(i, r.data, r.size) for i, r in zip(chunk, results) if r.kind == JPEG]
        decoded_rows = [(i, r) for i, r in zip(chunk, results) if r.kind == ROW]
        refused: list[int] = []
        while good:
            take, total = [], 0
            while good and (not take or total + good[0][2][0] * good[0][2][1] <= GPU_DECODE_PIXELS):
                take.append(good.pop(0))
                total += take[-1][2][0] * take[-1][2][1]
            try:
                with warnings.catch_warnings():  # torchvision >= 0.29 says its image IO moves to TorchCodec
                    warnings.simplefilter("ignore", DeprecationWarning)
                    decoded = decode_jpeg(
                        [torch.frombuffer(d, dtype=torch.uint8) for _, d, _ in take],
                        mode=ImageReadMode.RGB,
                        device=self.device,
                    )
            except RuntimeError:  # nvjpeg refused one of them: PIL decodes this group, here
                refused += [i for i, _, _ in take]
                continue
            rows = torch.tensor([i for i, _, _ in take], device=self.device)
            self.pixels[rows] = resize_on_device(decoded, self.decoder.size, self.decoder.interpolation)
            for i, _, wh in take:
                self.sizes[i] = wh
            self.nvjpeg_count += len(take)
        if decoded_rows:  # decoded by PIL in the reader processes
            h, w = self.decoder.size
            pixels = np.stack([np.frombuffer(r.data, np.uint8).reshape(h, w, 3) for _, r in decoded_rows])
            index = [i for i, _ in decoded_rows]
            self.pixels[torch.tensor(index, device=self.device)] = torch.from_numpy(pixels).to(self.device)
            self.sizes[index] = [r.size for _, r in decoded_rows]
        if refused:
            _, rows, sizes, failed = decode_chunk((self.decoder, 0, [self.paths[i] for i in refused], None))
            if failed:
                raise undecodable(failed)
            self.pixels[torch.tensor(refused, device=self.device)] = torch.from_numpy(rows).to(self.device)
            self.sizes[refused] = sizes
        if self._stream is not None:
            # The chunk's GPU work is finished before its rows are marked ready, so readers on any stream
            # see them; and torchvision's nvjpeg output may reuse memory freed on this stream without
            # ordering against it (pytorch/vision#9606), so nothing may be left in flight.
            self._stream.synchronize()
        with self._cond:
            self._ready[chunk] = True
            self._cond.notify_all()

    # ------------------------------------------------------------------ reading
    def wait(self, rows) -> None:
        """Block until `rows` (CPU indices) are written."""
        if self._synced:
            return
        rows_np = np.asarray(rows, dtype=np.int64)
        with self._cond:
            if not self._ready[rows_np].all():
                started = time.perf_counter()
                while not self._ready[rows_np].all() and self._error is None and not self.finished:
                    self._cond.wait()
                self.wait_seconds += time.perf_counter() - started
            if self._waits == 0:
                self.first_wait_seconds = self.wait_seconds
            self._waits += 1
            if self._error is not None:
                raise self._error
            finished = self.finished
        if finished:
            self._synced = True
            self.log(
                f"  train cache filled in {self.seconds:.1f} s: {self.nvjpeg_count} JPEGs decoded on the "
                f"{'GPU (nvjpeg)' if self.device.type == 'cuda' else 'CPU (torchvision)'}, "
                f"{len(self.paths) - self.nvjpeg_count} files by PIL"
            )

    def wait_all(self) -> None:
        self.wait(np.arange(len(self.paths)))

    def join(self) -> None:
        """Block until the fill has ended (every row written, `seconds` and counts final)."""
        with self._cond:
            while not self.finished:
                self._cond.wait()
        self.wait_all()  # raises the fill's error, if any


def fill_variant(device: torch.device) -> str:
    """The cache-key variant of rows a fill decoded on this kind of device (nvjpeg's are not PIL's, bit for bit)."""
    return f"fill:{device.type}"


def build_on_device(
    paths: list,
    decoder,
    device: torch.device,
    *,
    workers: int = 1,
    order=None,
    stream: bool = False,
    log=print,
    store: CacheStore | None = None,
) -> DecodedImages:
    """The "gpu" cache for one process. TrainDecoder rows: from the persistent cache when an earlier run kept
    them, else via DeviceFill (streamed into the first epoch when `stream`), then kept; EvalDecoder rows (the
    exact eval pixels): the persistent cache's entry (built by PIL in worker processes when missing), uploaded."""
    n = len(paths)
    h, w = decoder.size
    store = store if store is not None else CacheStore(log=log)
    nbytes = cache_bytes(n, (h, w))
    if not isinstance(decoder, TrainDecoder):
        mode = "disk" if store.fits(nbytes) else "ram"
        return upload(load_or_build(paths, decoder, mode, workers=workers, log=log, store=store), device)
    keep_key = cache_key(paths, decoder, fill_variant(device))
    for key in (keep_key, cache_key(paths, decoder)):
        found = store.open(key, (n, h, w, 3))
        if found is not None:
            log(f"reusing {n} decoded images at {h}x{w} from {store.entry(key)}, copied into GPU memory")
            return upload(DecodedImages(found[0], found[1], "disk", store.entry(key) / "pixels.npy"), device)
    log(
        f"caching {n} decoded images at {h}x{w} in GPU memory ({nbytes / 2**20:.0f} MiB"
        f"{', filled while the first epoch trains' if stream else ', once'})"
    )
    keep = (lambda done: keep_rows(store, keep_key, done, log)) if store.fits(nbytes) else None
    fill = DeviceFill(
        paths,
        decoder,
        device,
        order=order,
        log=log,
        read_processes=max(READ_PROCESSES, min(workers, MAX_READ_PROCESSES)),
        on_filled=keep,
    )
    return fill.start() if stream else fill.run()


def keep_rows(store: CacheStore, key: str, fill: DeviceFill, log) -> threading.Thread:
    """Copy a finished fill's rows into the persistent cache, in a background thread (not a daemon: a run that
    ends first waits for it, rather than leaving half an entry)."""

    def copy(pixels: np.ndarray, sizes: np.ndarray, _path) -> None:
        sizes[:] = fill.sizes
        copy_to_host(fill.pixels, pixels)

    def work() -> None:
        try:
            meta = {"decoder": fill.decoder.describe(), "count": len(fill.paths), "kept_by": "gpu fill"}
            _, _, built = store.build(key, tuple(fill.pixels.shape), copy, meta)
            if built:
                log(f"  train cache kept in {store.entry(key)}: the next run on these images starts from it")
        except Exception as exc:  # noqa: BLE001 - keeping is a bonus: the run goes on without it
            log(f"warning: could not keep the train cache in {store.root} ({exc}); the next run decodes again")

    thread = threading.Thread(target=work, name="edgecls-cache-keep")
    thread.start()
    return thread


def copy_to_host(src: torch.Tensor, dst: np.ndarray, chunk_rows: int = 1024) -> None:
    """Device rows into a (memory-mapped) host array, a chunk at a time; on CUDA through a pinned buffer on a
    stream of its own, so the copies do not queue behind (or hold up) the training's kernels."""
    if src.device.type != "cuda":
        for i in range(0, len(src), chunk_rows):
            dst[i : i + chunk_rows] = src[i : i + chunk_rows].numpy()
        return
    side = torch.cuda.Stream(src.device)
    buf = torch.empty((chunk_rows, *src.shape[1:]), dtype=torch.uint8, pin_memory=True)
    with torch.cuda.stream(side):
        for i in range(0, len(src), chunk_rows):
            k = min(chunk_rows, len(src) - i)
            buf[:k].copy_(src[i : i + k], non_blocking=True)
            side.synchronize()
            dst[i : i + k] = buf[:k].numpy()
