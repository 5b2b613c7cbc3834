"""The gpu cache fill's file work, in child processes: read every file, pre-decode what nvjpeg can't.

The fill needs each training JPEG's bytes, and its header to know whether nvjpeg decodes it
exactly like PIL; every other file (PNG, progressive or rotated JPEG...) must be decoded by
PIL. Done on threads of the training process, that work held the GIL so often that the thread
issuing the GPU kernels ran at a fraction of its speed (benchmarks/fill_reader.py). So
`read_chunks` starts child processes that do it all and stream back one frame per chunk of
files through a pipe. In the training process one receiver thread only copies the frames in (a
few large reads, the GIL released while it waits), a few chunks ahead of the fill, so that the
transfer of the next chunks overlaps the GPU decode of this one.

A child runs this file as a script, isolated (`python -I`), takes the training process's
sys.path from the request, and imports only `train_decoder` and `shards.member` (PIL + numpy, no torch): a
file is a path, or a tar shard's Member (sent as a list), read by its byte range. Frame: u64
body length, then the body: u32 n, n x (u8 kind, 3 pad bytes, i32 width, i32 height, u64 length),
then the n payloads. Kinds: JPEG (the file's bytes; width x height its size), ROW (the
TrainDecoder row, uint8 H x W x 3 at the cache size; width x height the upright original's
size), ERROR (why the file could not be decoded, UTF-8).
"""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

JPEG, ROW, ERROR = 1, 2, 3
PIPE_BYTES = 1 << 20  # pipe buffer asked for (Linux): fewer, larger reads in the training process
READ_AHEAD = 4  # chunks queued ahead of the fill, one more in the receiver's hand (about 6 MB each for photo JPEGs)
_FRAME = struct.Struct("<Q")
_COUNT = struct.Struct("<I")
_ENTRY = struct.Struct("<B3xiiQ")

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


def jpeg_header(data: bytes | bytearray) -> JpegHeader | None:
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
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        body = data[pos + 4 : pos + 2 + length]
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


def _exif_orientation(tiff: bytes | bytearray) -> int:
    """Tag 0x0112 of IFD0 in a TIFF-structured EXIF block (1 when absent or unreadable)."""
    if tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(order + "I", tiff[4:8])
        (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
        for i in range(count):
            entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag == 0x0112 and kind == 3:
                return struct.unpack(order + "H", entry[8:10])[0]
    except struct.error:
        return 1
    return 1


def nvjpeg_exact(head: JpegHeader | None) -> bool:
    """nvjpeg gives exactly what load_rgb gives: 8-bit, sequential, 3-component YCbCr, no EXIF rotation."""
    return (
        head is not None
        and not head.progressive
        and head.components == 3
        and head.precision == 8
        and head.orientation == 1
        and head.adobe_transform != 0
        and head.width > 0
        and head.height > 0
    )


# ----------------------------------------------------------------------------- the child process


def encode_chunk(paths: list[str], decoder) -> list[bytes]:
    """One frame (as parts to write) for these files; `decoder` is the TrainDecoder for what nvjpeg can't do."""
    entries, blobs = [_COUNT.pack(len(paths))], []
    from edgecls.data.shards.member import read_source

    for path in paths:
        try:
            data = read_source(path)
            head = jpeg_header(data)
            if nvjpeg_exact(head):
                kind, (width, height), payload = JPEG, (head.width, head.height), data
            else:
                row, (width, height) = decoder(io.BytesIO(data))
                kind, payload = ROW, row.tobytes()
        except Exception as exc:  # noqa: BLE001 - reported to the user by path, never a traceback
            kind, width, height, payload = ERROR, 0, 0, f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")
        entries.append(_ENTRY.pack(kind, width, height, len(payload)))
        blobs.append(payload)
    body_len = sum(map(len, entries)) + sum(map(len, blobs))
    return [_FRAME.pack(body_len), *entries, *blobs]


def child_main() -> int:
    """Read the JSON request (cache size, interpolation, chunks of paths) on stdin; write a frame per chunk."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle; it stops us
    request = json.loads(sys.stdin.buffer.read())
    sys.path[:] = request["sys_path"]  # started isolated (-I): import PIL, numpy and edgecls where the parent does
    from edgecls.data.cache.train_decoder import TrainDecoder
    from edgecls.data.shards.member import as_source

    decoder = TrainDecoder(tuple(request["size"]), request["interpolation"])
    out = sys.stdout.buffer
    try:
        for paths in request["chunks"]:
            out.writelines(encode_chunk([as_source(p) for p in paths], decoder))  # a shard Member came as a list
            out.flush()
    except BrokenPipeError:  # the training process stopped reading (it failed or was interrupted)
        os._exit(0)  # quietly: a normal exit would flush the unsent frame again and complain
    return 0


# ----------------------------------------------------------------------------- the training process


@dataclass(frozen=True)
class FileResult:
    """One file of a frame: `data` is a writable view into the frame (JPEG bytes or ROW pixels), or the
    ERROR message; `size` is (W, H)."""

    kind: int
    data: memoryview | str
    size: tuple[int, int] | None


def decode_frame(body: bytearray) -> list[FileResult]:
    (n,) = _COUNT.unpack_from(body, 0)
    pos, data_pos = _COUNT.size, _COUNT.size + n * _ENTRY.size
    view = memoryview(body)
    out = []
    for _ in range(n):
        kind, width, height, length = _ENTRY.unpack_from(body, pos)
        pos += _ENTRY.size
        payload = view[data_pos : data_pos + length]
        data_pos += length
        if kind == ERROR:
            out.append(FileResult(ERROR, bytes(payload).decode("utf-8", "replace"), None))
        else:
            out.append(FileResult(kind, payload, (width, height)))
    return out


def _read_exact(stream, n: int) -> bytearray | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            return None
        got += k
    return buf


def read_chunks(
    chunks: list[list[str]],
    size: tuple[int, int],
    interpolation: str = "bilinear",
    processes: int = 2,
    read_ahead: int = READ_AHEAD,
) -> Iterator[list[FileResult]]:
    """decode_frame results for each chunk of paths, in order, from `processes` child processes (chunk i
    by child i mod processes). A thread of this process receives the frames, `read_ahead` chunks queued
    ahead (and one in hand), so the caller's work on one chunk (the GPU decode) overlaps the transfer
    of the next ones (read_ahead=0: no thread, each frame received when asked for). size and
    interpolation make the TrainDecoder for the files nvjpeg can't decode."""
    if not chunks:
        return
    processes = max(1, min(processes, len(chunks)))
    children: list[subprocess.Popen] = []
    command = [sys.executable, "-I", os.path.abspath(__file__)]  # this file as a script: standard library only
    frames: queue.Queue = queue.Queue(maxsize=max(1, read_ahead))
    stop = threading.Event()
    receiver = threading.Thread(
        target=_receive, args=(children, len(chunks), frames, stop), name="edgecls-fill-receiver", daemon=True
    )
    try:
        for k in range(processes):
            child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
            children.append(child)
            _widen_pipe(child.stdout)
            try:
                request = memoryview(
                    json.dumps(
                        {
                            "size": list(size),
                            "interpolation": interpolation,
                            "sys_path": sys.path,
                            "chunks": chunks[k::processes],
                        }
                    ).encode()
                )
                while request:  # a raw pipe write may take part of it
                    request = request[child.stdin.write(request) :]
            except BrokenPipeError:
                pass  # it died at once: reported below, when its first frame is missing
            finally:
                child.stdin.close()
        if read_ahead > 0:
            receiver.start()
        for i in range(len(chunks)):
            item = frames.get() if read_ahead > 0 else _receive_frame(children[i % processes])
            if isinstance(item, _Missing):
                from edgecls.errors import UserError  # the training process only

                raise UserError(
                    f"the image cache's reader process ({os.path.abspath(__file__)}) ended early (exit code "
                    f"{item.child.wait()}; its error, if any, is above); train with `cache_images` ram "
                    f"to go without it"
                )
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        for child in children:  # a killed child closes its pipe: a receive in progress ends at once
            if child.poll() is None:
                child.kill()
            child.wait()
        if receiver.is_alive():
            receiver.join(timeout=10)  # a daemon: should a pipe stay open elsewhere (a fork), it is left behind
        for child in children:
            child.stdout.close()


@dataclass(frozen=True)
class _Missing:
    """The receiver's note that `child` ended before sending its next frame."""

    child: subprocess.Popen


def _receive_frame(child: subprocess.Popen) -> list[FileResult] | _Missing:
    head = _read_exact(child.stdout, _FRAME.size)
    body = _read_exact(child.stdout, _FRAME.unpack(head)[0]) if head is not None else None
    return decode_frame(body) if body is not None else _Missing(child)


def _receive(children: list[subprocess.Popen], count: int, frames: queue.Queue, stop: threading.Event) -> None:
    """The receiver thread: frame i from child i mod len(children), decoded, onto `frames`; _Missing(child)
    when its frame is missing (then stop), or the exception that ended the receiving."""
    for i in range(count):
        try:
            item = _receive_frame(children[i % len(children)])
        except BaseException as exc:  # noqa: BLE001 - raised by the consumer, in its thread
            item = exc
        while not stop.is_set():
            try:
                frames.put(item, timeout=0.1)
                break
            except queue.Full:
                continue
        if stop.is_set() or not isinstance(item, list):
            return


def _widen_pipe(stream) -> None:
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass  # not Linux, or above the system's pipe-max-size: the default buffer works, in smaller reads


if __name__ == "__main__":
    sys.exit(child_main())
