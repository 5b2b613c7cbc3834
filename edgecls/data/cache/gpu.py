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
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from edgecls.data.cache.decoded import DecodedImages, decode_chunk, load_or_build, undecodable, upload
from edgecls.data.cache.fill_workers import ERROR, JPEG, ROW, FileResult, read_chunks
from edgecls.data.cache.policy import cache_bytes
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
    ):
        self.paths = paths
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


def build_on_device(
    paths: list[str], decoder, device: torch.device, *, workers: int = 1, order=None, stream: bool = False, log=print
) -> DecodedImages:
    """The "gpu" cache for one process. TrainDecoder rows via DeviceFill (streamed into the first epoch when
    `stream`); EvalDecoder rows (the exact eval pixels) via PIL in worker processes, then uploaded."""
    n = len(paths)
    h, w = decoder.size
    log(
        f"caching {n} decoded images at {h}x{w} in GPU memory ({cache_bytes(n, (h, w)) / 2**20:.0f} MiB"
        f"{', filled while the first epoch trains' if stream and isinstance(decoder, TrainDecoder) else ', once'})"
    )
    if not isinstance(decoder, TrainDecoder):
        return upload(load_or_build(paths, decoder, "ram", workers=workers, log=lambda message: None), device)
    fill = DeviceFill(
        paths,
        decoder,
        device,
        order=order,
        log=log,
        read_processes=max(READ_PROCESSES, min(workers, MAX_READ_PROCESSES)),
    )
    return fill.start() if stream else fill.run()
