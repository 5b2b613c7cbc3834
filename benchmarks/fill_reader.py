#!/usr/bin/env python3
"""The GPU cache fill's file work (reading, and PIL for what nvjpeg can't decode), and what it costs
the training thread beside it.

    python benchmarks/fill_reader.py --data DIR [--images 8000] [--processes 1 2] [--cache-size 280x280]
                                     [--stage-ms 5] [--json F]
    python benchmarks/fill_reader.py --data FMNIST_PNG/train --images 16000 --cache-size 70x40   # FP_classifier 56x32

The "gpu" cache fill reads every training file while epoch 1 trains: a JPEG's header says
whether nvjpeg may decode it; every other file (PNG, progressive or rotated JPEG) is decoded by
PIL. Its first version did both on threads of the training process, sharing one GIL with the
thread that trains; both now run in child processes (`edgecls/data/cache/fill_workers.py`). This
measures, on any machine (no GPU needed), over the .jpg and .png files of DIR, in one run:

  rate             images/s through that stage alone
  dispatch rate    small torch ops/s issued by a second thread (a stand-in for the training
                   thread, which on a GPU spends its time issuing kernels) while that stage runs,
                   as a fraction of the same loop alone

for the baseline (the first version: one thread-pool task per file on 16 threads, bytes copied
into a bytearray by the consumer, PIL on the consuming thread), for one task per 128-file chunk
on one thread (the obvious mend), and for `fill_workers.read_chunks` (child processes stream
the chunks through pipes) with each --processes count. Files are read once beforehand so every
variant reads from the page cache. A control row runs the loop beside as many CPU-busy processes
as the largest --processes count (no file work, no GIL shared): what the loop loses there is
CPU time, not the GIL.

A second table times the fill's loop with a stand-in for its GPU stage: a GIL-free wait of
--stage-ms per 128-file chunk (nvjpeg alone took about 5 ms per chunk on an H100), with the
frames received by the loop's own thread as each is needed (read_ahead=0, the way the fill
received them before) and by read_chunks' receiver thread, a few chunks ahead (the default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from edgecls.data.cache.fill_workers import READ_AHEAD as READ_AHEAD_RECEIVER  # noqa: E402
from edgecls.data.cache.fill_workers import jpeg_header, nvjpeg_exact, read_chunks  # noqa: E402
from edgecls.data.cache.gpu import READ_CHUNK  # noqa: E402
from edgecls.data.cache.train_decoder import TrainDecoder  # noqa: E402

READ_AHEAD = 3  # chunks in flight in the thread variants, as in the first version
DECODER = TrainDecoder((280, 280))  # --cache-size; 280x280: what train.py caches at 224 with the default crop scale


def read_jpeg(path: str) -> tuple[bytes | None, tuple[int, int] | None]:
    """The first version's per-file read: (bytes, (W, H)) for an nvjpeg-exact JPEG, else (None, None)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None, None
    head = jpeg_header(data)
    return (data, (head.width, head.height)) if nvjpeg_exact(head) else (None, None)


def pil_on_this_thread(chunk: list[str], reads: list) -> list:
    """What the first version's fill thread did with the files nvjpeg can't decode."""
    return [(d, wh) if d is not None else DECODER(path) for path, (d, wh) in zip(chunk, reads)]


def per_file_baseline(chunks: list[list[str]], threads: int = 16):
    """The first version's stage: a future per file, READ_AHEAD chunks ahead, then a bytearray copy of each."""
    with ThreadPoolExecutor(threads) as pool:
        pending = []

        def take(chunk, futures):
            reads = [(bytearray(d) if d is not None else None, wh) for d, wh in (f.result() for f in futures)]
            return pil_on_this_thread(chunk, reads)

        for chunk in chunks:
            pending.append((chunk, [pool.submit(read_jpeg, p) for p in chunk]))
            if len(pending) > READ_AHEAD:
                yield take(*pending.pop(0))
        for chunk, futures in pending:
            yield take(chunk, futures)


def per_chunk_thread(chunks: list[list[str]]):
    """One task per chunk on one thread, READ_AHEAD chunks ahead."""
    with ThreadPoolExecutor(1) as pool:
        pending = []
        for chunk in chunks:
            pending.append((chunk, pool.submit(lambda c: [read_jpeg(p) for p in c], chunk)))
            if len(pending) > READ_AHEAD:
                chunk_done, future = pending.pop(0)
                yield pil_on_this_thread(chunk_done, future.result())
        for chunk_done, future in pending:
            yield pil_on_this_thread(chunk_done, future.result())


class DispatchLoop:
    """Small in-place torch ops in a thread until stopped; counts them."""

    def __init__(self):
        self.ops = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        x = torch.zeros(64)
        while not self._stop.is_set():
            for _ in range(100):
                x.add_(1.0)
            self.ops += 100

    def __enter__(self):
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self._started

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


def measure(name, make_reader, chunks, n_images) -> dict:
    start = time.perf_counter()
    for _ in make_reader(chunks):
        pass
    alone = time.perf_counter() - start
    with DispatchLoop() as loop:
        start = time.perf_counter()
        for _ in make_reader(chunks):
            pass
        beside = time.perf_counter() - start
    return {
        "reader": name,
        "read_img_s": round(n_images / alone),
        "read_img_s_beside_dispatch": round(n_images / beside),
        "dispatch_ops_s": round(loop.rate),
    }


def staged_fill_rate(chunks, n_images: int, processes: int, read_ahead: int, stage_s: float) -> int:
    """Images/s of a loop over read_chunks that spends stage_s per chunk with the GIL released."""
    start = time.perf_counter()
    for _ in read_chunks(chunks, DECODER.size, DECODER.interpolation, processes, read_ahead=read_ahead):
        time.sleep(stage_s)
    return round(n_images / (time.perf_counter() - start))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder of JPEGs (e.g. benchmarks/photos.py output)")
    ap.add_argument("--images", type=int, default=8000, help="files read per variant (the folder's files repeated)")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="read_chunks process counts to measure")
    ap.add_argument("--cache-size", default="280x280", help="HxW the PIL-decoded files are squashed to")
    ap.add_argument("--stage-ms", type=float, default=5.0, help="stand-in GPU stage per chunk in the second table")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    global DECODER
    h, w = (int(v) for v in args.cache_size.lower().split("x"))
    DECODER = TrainDecoder((h, w))
    files = sorted(str(p) for p in Path(args.data).rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    if not files:
        print(f"error: {args.data}: no .jpg or .png files; make some with benchmarks/photos.py", file=sys.stderr)
        return 2
    paths = (files * (args.images // len(files) + 1))[: args.images]
    for path in files:  # page cache
        Path(path).read_bytes()
    chunks = [paths[i : i + READ_CHUNK] for i in range(0, len(paths), READ_CHUNK)]
    torch.set_num_threads(1)

    with DispatchLoop() as loop:
        time.sleep(2.0)
    alone_rate = loop.rate
    rows = [
        measure("per-file tasks, 16 threads (baseline)", per_file_baseline, chunks, len(paths)),
        measure("per-chunk tasks, 1 thread", per_chunk_thread, chunks, len(paths)),
    ]
    for procs in args.processes:
        rows.append(
            measure(
                f"read_chunks, {procs} process(es)",
                lambda c, k=procs: read_chunks(c, DECODER.size, DECODER.interpolation, k),
                chunks,
                len(paths),
            )
        )
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(args.processes))]
    try:
        time.sleep(0.3)
        with DispatchLoop() as loop:
            time.sleep(2.0)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    rows.append(
        {
            "reader": f"control: {len(busy)} CPU-busy process(es), no file work",
            "read_img_s": None,
            "read_img_s_beside_dispatch": None,
            "dispatch_ops_s": round(loop.rate),
        }
    )
    for row in rows:
        row["dispatch_x_alone"] = round(row["dispatch_ops_s"] / alone_rate, 2)
    staged = [
        {
            "processes": procs,
            "receiver": ahead > 0,
            "fill_img_s": staged_fill_rate(chunks, len(paths), procs, ahead, args.stage_ms / 1000),
        }
        for procs in args.processes
        for ahead in (0, READ_AHEAD_RECEIVER)
    ]

    print(
        f"{len(paths)} file reads from {args.data} ({len(files)} files; PIL rows at {h}x{w}), {os.cpu_count()} CPUs; "
        f"dispatch loop alone: {alone_rate:,.0f} ops/s"
    )
    print(f"{'reader':<44} {'read img/s':>11} {'beside loop':>12} {'loop x alone':>13}")
    for row in rows:
        reads = [f"{v:,}" if v is not None else "-" for v in (row["read_img_s"], row["read_img_s_beside_dispatch"])]
        print(f"{row['reader']:<44} {reads[0]:>11} {reads[1]:>12} {row['dispatch_x_alone']:>13.2f}")
    print(
        f"\nfill loop with a {args.stage_ms:g} ms GIL-free stage per {READ_CHUNK}-file chunk (stand-in for "
        f"the GPU decode)"
    )
    print(f"{'frames received by':<44} {'fill img/s':>11}")
    for row in staged:
        who = "receiver thread, chunks ahead" if row["receiver"] else "the loop, when needed (before)"
        print(f"{who + ', ' + str(row['processes']) + ' process(es)':<44} {row['fill_img_s']:>11,}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "images": len(paths),
                    "cpus": os.cpu_count(),
                    "cache_size": [h, w],
                    "dispatch_alone_ops_s": round(alone_rate),
                    "rows": rows,
                    "stage_ms": args.stage_ms,
                    "staged_fill": staged,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
