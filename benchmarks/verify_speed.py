"""Benchmark `edgecls data verify` on 70,000 real images (Fashion-MNIST written as PNG files).

    apt-get install dataset-fashion-mnist      # IDX files under /usr/share/datasets/fashion-mnist
    python benchmarks/verify_speed.py /tmp/fmnist_png [--json verify_speed.json]

Writes the 60,000 training images to DIR/train/<class>/ and the 10,000 test images to
DIR/val/<class>/ (once; a folder already holding the 70,000 files is reused), then times in
one run, on a fresh verify cache:
  baseline  one process decoding every file with check_image (the plain loop)
  verify    the full `edgecls data verify` report (decode check in parallel over cores,
            sha1 of every file, sizes, duplicates, counts), cold cache
  cached    the same report again with the decode cache warm (an unchanged dataset)
Target from issue 7: verify <= 60 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecls.data.images import check_image  # noqa: E402
from edgecls.data.layout import walk_paths  # noqa: E402

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TARGET_S = 60.0


def read_idx(folder: Path, name: str) -> np.ndarray:
    """An IDX file (gzipped or not): magic, sizes, then uint8 data."""
    for path, opener in ((folder / (name + ".gz"), gzip.open), (folder / name, open)):
        if path.is_file():
            with opener(path, "rb") as fh:
                data = fh.read()
            ndim = data[3]
            shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
            return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)
    sys.exit(
        f"error: {folder}/{name}(.gz) not found; install the data with "
        f"`sudo apt-get install dataset-fashion-mnist` or pass --source DIR holding the IDX files"
    )


def _write_chunk(args) -> int:
    images, names = args
    for img, name in zip(images, names):
        Image.fromarray(img, mode="L").save(name)
    return len(names)


def write_pngs(source: Path, out: Path, workers: int) -> tuple[int, float]:
    """(files written, seconds); 0 when `out` already holds the whole dataset."""
    expected = 70_000
    if out.is_dir() and any(out.iterdir()):
        found = sum(len(walk_paths(out / s / c)) for s in FILES for c in CLASSES if (out / s / c).is_dir())
        if found == expected:
            return 0, 0.0
        sys.exit(
            f"error: {out} is not empty and does not hold the {expected:,} benchmark images "
            f"(found {found:,}); pass an empty or new folder"
        )
    start = time.perf_counter()
    jobs = []
    for split, (img_name, lab_name) in FILES.items():
        images, labels = read_idx(source, img_name), read_idx(source, lab_name)
        for c in CLASSES:
            (out / split / c).mkdir(parents=True, exist_ok=True)
        names = [str(out / split / CLASSES[y] / f"{split}_{i:05d}.png") for i, y in enumerate(labels)]
        step = 2000
        jobs += [(images[i : i + step], names[i : i + step]) for i in range(0, len(names), step)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        written = sum(pool.map(_write_chunk, jobs))
    return written, time.perf_counter() - start


def time_baseline(paths: list[str], sample: int) -> tuple[float, int]:
    """Seconds for a one-process check_image loop over all paths (or extrapolated from a sample)."""
    chosen = paths if not sample or sample >= len(paths) else paths[:: max(1, len(paths) // sample)][:sample]
    start = time.perf_counter()
    bad = sum(check_image(p) is not None for p in chosen)
    elapsed = time.perf_counter() - start
    assert bad == 0, f"{bad} benchmark images failed to decode"
    return elapsed * len(paths) / len(chosen), len(chosen)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", metavar="DIR", help="folder for the 70,000 PNG files (created; reused when complete)")
    parser.add_argument("--source", type=Path, default=SOURCE, help=f"IDX files (default: {SOURCE})")
    parser.add_argument("--json", default="verify_speed.json", help="results file (default: verify_speed.json)")
    parser.add_argument("--workers", type=int, default=None, help="verify processes (default: cores, at most 8)")
    parser.add_argument(
        "--baseline-sample",
        type=int,
        default=0,
        help="time the one-process baseline on N files and scale up (default: 0 = all files)",
    )
    args = parser.parse_args(argv)

    out = Path(args.dir)
    cores = os.cpu_count() or 1
    written, write_s = write_pngs(args.source, out, workers=cores)
    print(f"dataset: {out} ({f'wrote 70,000 PNGs in {write_s:.1f} s' if written else 'reused existing PNGs'})")

    os.environ["EDGECLS_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgecls-bench-cache-")
    from edgecls.data.tools.verify_report import verify_dataset

    paths = [str(p) for s in FILES for c in CLASSES for p in walk_paths(out / s / c)]
    baseline_s, baseline_n = time_baseline(paths, args.baseline_sample)

    start = time.perf_counter()
    report = verify_dataset(out, workers=args.workers)
    verify_s = time.perf_counter() - start
    start = time.perf_counter()
    again = verify_dataset(out, workers=args.workers)
    cached_s = time.perf_counter() - start
    assert report["files"] == again["files"] == 70_000, report["files"]

    rows = [
        (
            "baseline: 1-process check_image loop"
            + (f" ({baseline_n:,}-file sample, scaled)" if baseline_n < len(paths) else ""),
            baseline_s,
        ),
        (f"edgecls data verify, cold cache ({args.workers or min(cores, 8)} workers)", verify_s),
        ("edgecls data verify, warm cache", cached_s),
    ]
    print(f"\n{'run':<62} {'seconds':>8} {'images/s':>9}")
    for name, secs in rows:
        print(f"{name:<62} {secs:>8.1f} {70_000 / secs:>9.0f}")
    verdict = "PASS" if verify_s <= TARGET_S else "FAIL"
    print(
        f"\nverify: {verify_s:.1f} s for 70,000 images on {cores} cores (target <= {TARGET_S:.0f} s: {verdict}); "
        f"{baseline_s / verify_s:.2f}x the one-process decode loop, which does less (no hashing, no report)"
    )
    print(
        f"report: {report['good']:,} usable, problems {report['summary'] or 'none'}, "
        f"{len(report['duplicates'])} duplicate groups"
    )

    result = {
        "benchmark": "verify_speed",
        "images": 70_000,
        "cores": cores,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "baseline_s": round(baseline_s, 3),
        "baseline_files_timed": baseline_n,
        "verify_cold_s": round(verify_s, 3),
        "verify_warm_s": round(cached_s, 3),
        "speedup_vs_baseline": round(baseline_s / verify_s, 3),
        "target_s": TARGET_S,
        "pass": verify_s <= TARGET_S,
        "problems": report["summary"],
        "duplicate_groups": len(report["duplicates"]),
    }
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
