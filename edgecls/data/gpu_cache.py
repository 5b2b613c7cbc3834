"""Training images decoded straight into GPU memory ("--cache-images gpu").

JPEGs are decoded by nvjpeg (torchvision.io.decode_jpeg on the device) and resized there,
antialiased like PIL; every other file (PNG, grayscale / CMYK / progressive / EXIF-rotated
JPEG) goes through the same PIL decoder as the RAM cache. Which path a file takes is read
from its JPEG header in pure Python, so sorting 30k files costs well under a second.

`DeviceFill` writes the rows in a given order. `run()` fills everything before training;
`start()` fills in a background thread on its own CUDA stream, in the order the first epoch
visits the images, and the loader waits only for the rows of its next batch: the first
epoch trains while the rest is still being decoded.
"""

from __future__ import annotations

import contextlib
import struct
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edgecls.data.cache import DecodedImages, TrainDecoder, _decode_chunk, cache_bytes, load_or_build, upload
from edgecls.errors import UserError

READ_CHUNK = 128  # files read (and decoded) per step of the fill
READ_AHEAD = 3  # chunks being read while one is decoded
GPU_DECODE_PIXELS = 48_000_000  # source pixels per nvjpeg call (bounds the float copy made for resizing)

_SOF_SEQUENTIAL = {0xC0, 0xC1}  # baseline / extended sequential Huffman: what nvjpeg decodes like libjpeg
_SOF_OTHER = {0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # progressive, lossless, arithmetic


@dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    components: int
    precision: int
    progressive: bool
    orientation: int  # EXIF orientation, 1 = upright
    adobe_transform: int | None  # APP14 "Adobe" color transform flag, when present


def jpeg_header(data: bytes) -> JpegHeader | None:
    """Size, components, coding and EXIF orientation from a JPEG's markers; None when not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, n = 2, len(data)
    orientation, adobe, sof = 1, None, None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        if marker == 0xDA or marker == 0xD9:  # start of scan / end of image: the header is over
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        body = data[pos + 4:pos + 2 + length]
        if marker in _SOF_SEQUENTIAL or marker in _SOF_OTHER:
            if len(body) < 6:
                return None
            precision, height, width, comps = struct.unpack(">BHHB", body[:6])
            sof = (width, height, comps, precision, marker in _SOF_OTHER)
        elif marker == 0xE1 and body[:6] == b"Exif\x00\x00":
            orientation = _exif_orientation(body[6:])
        elif marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
            adobe = body[11]
        pos += 2 + length
    if sof is None:
        return None
    return JpegHeader(sof[0], sof[1], sof[2], sof[3], sof[4], orientation, adobe)


def _exif_orientation(tiff: bytes) -> int:
    """Tag 0x0112 of IFD0 in a TIFF-structured EXIF block (1 when absent or unreadable)."""
    if tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
        for i in range(count):
            entry = tiff[ifd + 2 + 12 * i: ifd + 14 + 12 * i]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag == 0x0112 and kind == 3:
                return struct.unpack(order + "H", entry[8:10])[0]
    except struct.error:
        return 1
    return 1


def nvjpeg_probe(path: str) -> tuple[bytes | None, tuple[int, int] | None]:
    """(file bytes, (W, H)) when nvjpeg gives exactly what load_rgb gives: an 8-bit, sequential,
    3-component YCbCr JPEG with no EXIF rotation. (None, None) sends the file to PIL."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None, None
    head = jpeg_header(data)
    if (head is None or head.progressive or head.components != 3 or head.precision != 8 or head.orientation != 1
            or head.adobe_transform == 0 or not head.width or not head.height):
        return None, None
    return data, (head.width, head.height)


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

    def __init__(self, paths: list[str], decoder: TrainDecoder, device: torch.device, *, workers: int = 1,
                 order: torch.Tensor | None = None, log=print):
        self.paths = paths
        self.decoder = decoder
        self.device = device
        self.workers = max(1, int(workers))
        self.order = (order if order is not None else torch.arange(len(paths))).tolist()
        self.log = log
        h, w = decoder.size
        self.pixels = torch.empty((len(paths), h, w, 3), dtype=torch.uint8, device=device)
        self.sizes = np.zeros((len(paths), 2), np.int32)
        self.nvjpeg_count = 0
        self.seconds = 0.0
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
            with stream_ctx, ThreadPoolExecutor(max_workers=max(2, self.workers), thread_name_prefix="edgecls-read") as pool:
                chunks = [self.order[i:i + READ_CHUNK] for i in range(0, len(self.order), READ_CHUNK)]
                pending: list = []  # reads run READ_AHEAD chunks ahead of the decoder
                for chunk in chunks:
                    pending.append((chunk, [pool.submit(nvjpeg_probe, self.paths[i]) for i in chunk]))
                    if len(pending) > READ_AHEAD:
                        done, futures = pending.pop(0)
                        self._decode(done, [f.result() for f in futures])
                for done, futures in pending:
                    self._decode(done, [f.result() for f in futures])
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread, which raises it
            self._error = exc
        self.seconds = time.perf_counter() - started
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    def _decode(self, chunk: list[int], probes) -> None:
        from torchvision.io import ImageReadMode, decode_jpeg

        good = [(i, data, wh) for i, (data, wh) in zip(chunk, probes) if data is not None]
        fallback = [i for i, (data, _) in zip(chunk, probes) if data is None]
        while good:
            take, total = [], 0
            while good and (not take or total + good[0][2][0] * good[0][2][1] <= GPU_DECODE_PIXELS):
                take.append(good.pop(0))
                total += take[-1][2][0] * take[-1][2][1]
            try:
                with warnings.catch_warnings():  # torchvision >= 0.29 says its image IO moves to TorchCodec
                    warnings.simplefilter("ignore", DeprecationWarning)
                    decoded = decode_jpeg([torch.frombuffer(bytearray(d), dtype=torch.uint8) for _, d, _ in take],
                                          mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:  # nvjpeg refused one of them: PIL decodes this group
                fallback += [i for i, _, _ in take]
                continue
            rows = torch.tensor([i for i, _, _ in take], device=self.device)
            self.pixels[rows] = resize_on_device(decoded, self.decoder.size, self.decoder.interpolation)
            for i, _, wh in take:
                self.sizes[i] = wh
            self.nvjpeg_count += len(take)
        if fallback:
            _, rows, sizes, errors = _decode_chunk((self.decoder, 0, [self.paths[i] for i in fallback], None))
            if errors:
                path, reason = errors[0]
                raise UserError(f"{path}: could not be decoded for the image cache ({reason}; changed since the "
                                f"scan?); fix or remove it, or train with --cache-images none")
            self.pixels[torch.tensor(fallback, device=self.device)] = torch.from_numpy(rows).to(self.device)
            self.sizes[fallback] = sizes
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
            while not self._ready[rows_np].all() and self._error is None and not self.finished:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            finished = self.finished
        if finished:
            self._synced = True
            self.log(f"  train cache filled in {self.seconds:.1f} s: {self.nvjpeg_count} JPEGs decoded on the "
                     f"{'GPU (nvjpeg)' if self.device.type == 'cuda' else 'CPU (torchvision)'}, "
                     f"{len(self.paths) - self.nvjpeg_count} files by PIL")

    def wait_all(self) -> None:
        self.wait(np.arange(len(self.paths)))


def build_on_device(paths: list[str], decoder, device: torch.device, *, workers: int = 1, order=None,
                    stream: bool = False, log=print) -> DecodedImages:
    """The "gpu" cache for one process. TrainDecoder rows via DeviceFill (streamed into the first epoch when
    `stream`); EvalDecoder rows (the exact eval pixels) via PIL in worker processes, then uploaded."""
    n = len(paths)
    h, w = decoder.size
    log(f"caching {n} decoded images at {h}x{w} in GPU memory ({cache_bytes(n, (h, w)) / 2**20:.0f} MiB"
        f"{', filled while the first epoch trains' if stream and isinstance(decoder, TrainDecoder) else ', once'})")
    if not isinstance(decoder, TrainDecoder):
        return upload(load_or_build(paths, decoder, "ram", workers=workers, log=lambda message: None), device)
    fill = DeviceFill(paths, decoder, device, workers=workers, order=order, log=log)
    return fill.start() if stream else fill.run()
