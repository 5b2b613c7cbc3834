"""JPEG files read for the "gpu" cache fill, in a separate process (standard library only).

The fill needs every training file's bytes, and each JPEG's header to know whether nvjpeg
decodes it exactly like PIL. Done on threads of the training process, that work competed for
the GIL with the thread that issues the GPU kernels, which then ran at a fraction of its speed
(benchmarks/fill_reader.py). So `read_chunks` starts this file as a script: a child process
reads and parses chunk after chunk and streams them back through a pipe, one frame per chunk;
the training process only copies each frame in (one large read, the GIL released while it
waits).

Frame: u64 body length, then the body: u32 n, n x (i32 width, i32 height, u64 length), then
the n files' bytes. width 0 marks a file that PIL must decode (not an nvjpeg-exact JPEG, or
unreadable).
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

PIPE_BYTES = 1 << 20  # pipe buffer asked for (Linux): fewer, larger reads in the training process
_FRAME = struct.Struct("<Q")
_COUNT = struct.Struct("<I")
_ENTRY = struct.Struct("<iiQ")

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


def _exif_orientation(tiff: bytes | bytearray) -> int:
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


def nvjpeg_exact(head: JpegHeader | None) -> bool:
    """nvjpeg gives exactly what load_rgb gives: 8-bit, sequential, 3-component YCbCr, no EXIF rotation."""
    return (head is not None and not head.progressive and head.components == 3 and head.precision == 8
            and head.orientation == 1 and head.adobe_transform != 0 and head.width > 0 and head.height > 0)


def read_jpeg(path: str) -> tuple[bytes | None, tuple[int, int] | None]:
    """(file bytes, (W, H)) for an nvjpeg-exact JPEG; (None, None) sends the file to PIL."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None, None
    head = jpeg_header(data)
    return (data, (head.width, head.height)) if nvjpeg_exact(head) else (None, None)


# ----------------------------------------------------------------------------- the child process


def encode_chunk(paths: list[str]) -> list[bytes]:
    """One frame (as parts to write) for these files."""
    entries, blobs = [_COUNT.pack(len(paths))], []
    for path in paths:
        data, wh = read_jpeg(path)
        if data is None:
            entries.append(_ENTRY.pack(0, 0, 0))
        else:
            entries.append(_ENTRY.pack(wh[0], wh[1], len(data)))
            blobs.append(data)
    body_len = sum(map(len, entries)) + sum(map(len, blobs))
    return [_FRAME.pack(body_len), *entries, *blobs]


def child_main() -> int:
    """Read the JSON list of chunks (lists of paths) on stdin, write one frame per chunk to stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle; it stops us
    chunks = json.loads(sys.stdin.buffer.read())
    out = sys.stdout.buffer
    try:
        for paths in chunks:
            out.writelines(encode_chunk(paths))
            out.flush()
    except BrokenPipeError:  # the training process stopped reading (it failed or was interrupted)
        os._exit(0)  # quietly: a normal exit would flush the unsent frame again and complain
    return 0


# ----------------------------------------------------------------------------- the training process


def decode_frame(body: bytearray) -> list[tuple[memoryview | None, tuple[int, int] | None]]:
    """(bytes of the file as a writable view into `body`, (W, H)) or (None, None) for each file of a frame."""
    (n,) = _COUNT.unpack_from(body, 0)
    pos, data_pos = _COUNT.size, _COUNT.size + n * _ENTRY.size
    view = memoryview(body)
    out = []
    for _ in range(n):
        width, height, length = _ENTRY.unpack_from(body, pos)
        pos += _ENTRY.size
        if width == 0:
            out.append((None, None))
        else:
            out.append((view[data_pos:data_pos + length], (width, height)))
            data_pos += length
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


def read_chunks(chunks: list[list[str]], processes: int = 2) -> Iterator[list]:
    """decode_frame results for each chunk of paths, in order, read by `processes` child processes
    (chunk i by child i mod processes; each reads ahead as far as its pipe holds)."""
    if not chunks:
        return
    processes = max(1, min(processes, len(chunks)))
    children = []
    try:
        for k in range(processes):
            child = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0)
            children.append(child)
            _widen_pipe(child.stdout)
            try:
                request = memoryview(json.dumps(chunks[k::processes]).encode())
                while request:  # a raw pipe write may take part of it
                    request = request[child.stdin.write(request):]
            except BrokenPipeError:
                pass  # it died at once: reported below, when its first frame is missing
            finally:
                child.stdin.close()
        for i in range(len(chunks)):
            child = children[i % processes]
            head = _read_exact(child.stdout, _FRAME.size)
            body = _read_exact(child.stdout, _FRAME.unpack(head)[0]) if head is not None else None
            if body is None:
                from edgecls.errors import UserError  # the training process only: the child runs without edgecls

                raise UserError(f"the image cache's JPEG reader process ({os.path.abspath(__file__)}) ended early "
                                f"(exit code {child.wait()}; its error, if any, is above); train with "
                                f"--cache-images ram to go without it")
            yield decode_frame(body)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()
            child.stdout.close()


def _widen_pipe(stream) -> None:
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass  # not Linux, or above the system's pipe-max-size: the default buffer works, in smaller reads


if __name__ == "__main__":
    sys.exit(child_main())
