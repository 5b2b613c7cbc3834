#!/usr/bin/env python3
"""Data formats: train.py from an image folder, from shards, from shards resized at pack time, from a warm
persistent cache; epoch 1 and epoch 2 of each against the raw step ceiling.

    apt-get install dataset-fashion-mnist                        # IDX files under /usr/share/datasets/fashion-mnist
    python benchmarks/data_formats.py --out /tmp/data_formats    # issue 18's sizes: 70,000 PNGs, 768 + 128 photos
    python benchmarks/data_formats.py --out /tmp/df --fmnist 2000:400 --photos 96:32   # a quick check that it runs

Configs (one run does both, or pick with --configs):
  fmnist  FP_classifier at 56x32, batch 64, on Fashion-MNIST written as PNG folders (--fmnist TRAIN:VAL, default
          60000:10000, the whole set)
  photos  mobilenetv2 at 224, batch 32, on a photo JPEG folder (benchmarks/photos.py; --photos TRAIN:VAL)
Formats, each a real train.py subprocess (`--epochs 2 --early-stop 0 --seed 0`, its defaults otherwise; the
decoded-image cache in a fresh --cache-dir, so `auto` = ram on a CPU):
  folder          the image folder
  shards          `edgecls data pack` of it (the files' own bytes), --shard-size (default 100MB)
  shards-resized  packed with --resize-to the training cache's resolution (fmnist 70x40, photos 280)
  cache-warm      the folder with `--cache-images disk` and one --cache-dir, run twice: the figures are the
                  second run's, whose decoded images the first run left in the cache
  (--streamed adds folder-streamed and shards-streamed: `--cache-images none`, decoded every epoch; the
  shards are packed at --stream-shard-size so every DataLoader worker gets whole shards)
Per format: epoch 1 seconds (the image cache's set-up, from timings.json, plus epoch 1's training) and epoch
2 seconds; each as images/s over the ceiling (train_speed.py's: fwd + bwd + step on pre-made tensors, same
model, batch and input); the disk space of what train.py reads (allocated blocks); the pack or cache-build
time. The page cache is
warmed (every file read once) before each run: the figures are for a warm disk.
Targets (issue 18): shards no slower than the folder; cache-warm epoch 1 >= 0.95 x its epoch 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

CONFIGS = {
    "fmnist": {"backbone": "FP_classifier", "input": "56x32", "batch": 64, "resize": "70x40"},
    "photos": {"backbone": "mobilenetv2", "input": "224", "batch": 32, "resize": "280"},
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="working folder: datasets, shards, caches, runs (reused datasets)")
    ap.add_argument("--configs", default="fmnist,photos", help="which configs, comma separated")
    ap.add_argument("--fmnist", default="60000:10000", help="Fashion-MNIST TRAIN:VAL images")
    ap.add_argument("--photos", default="768:128", help="photo JPEGs TRAIN:VAL")
    ap.add_argument("--fmnist-source", default="/usr/share/datasets/fashion-mnist", help="the IDX files")
    ap.add_argument("--epochs", type=int, default=2, help="train.py epochs (at least 2)")
    ap.add_argument("--workers", type=int, default=None, help="train.py --workers (default: CPU count, max 16)")
    ap.add_argument("--shard-size", default="100MB", help="edgecls data pack --shard-size")
    ap.add_argument("--streamed", action="store_true", help="also folder and shards with --cache-images none")
    ap.add_argument("--stream-shard-size", default="2MB", help="--shard-size of the streamed rows' shards")
    ap.add_argument("--gpu", type=int, default=-1, help="CUDA device for train.py and the ceiling (-1: CPU)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast in both")
    ap.add_argument("--ceiling-steps", type=int, default=None, help="see train_speed.py")
    ap.add_argument("--json", default=None, help="write the results here (default: OUT/data_formats.json)")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (epoch 2 is the steady state)")
    return args


# ----------------------------------------------------------------------------- datasets


def _write_pngs(job) -> int:
    images, names = job
    from PIL import Image

    for img, name in zip(images, names):
        Image.fromarray(img, mode="L").save(name)
    return len(names)


def fmnist_folder(out: Path, train: int, val: int, source: Path) -> Path:
    """The first TRAIN training and VAL test images of Fashion-MNIST as PNG folders (written once, reused)."""
    from verify_speed import CLASSES, FILES, read_idx

    folder = out / f"fmnist-{train}-{val}"
    if (folder / ".complete").is_file():
        return folder
    jobs = []
    for split, count in (("train", train), ("val", val)):
        img_name, lab_name = FILES[split]
        images, labels = read_idx(source, img_name)[:count], read_idx(source, lab_name)[:count]
        for c in CLASSES:
            (folder / split / c).mkdir(parents=True, exist_ok=True)
        names = [str(folder / split / CLASSES[y] / f"{split}_{i:05d}.png") for i, y in enumerate(labels)]
        jobs += [(images[i : i + 2000], names[i : i + 2000]) for i in range(0, len(names), 2000)]
    with ProcessPoolExecutor() as pool:
        assert sum(pool.map(_write_pngs, jobs)) == train + val
    (folder / ".complete").write_text("")
    return folder


def photo_folder(out: Path, train: int, val: int) -> Path:
    from photos import write_photo_dataset

    return write_photo_dataset(out / f"photos-{train}-{val}", train, val)


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    """Disk space the files take (allocated blocks: a 300-byte PNG still takes a 4 kB block, a tar member 1.5 kB)."""
    files = [f for f in folder.rglob(pattern) if f.is_file() and not f.name.startswith(".")]
    return sum(f.stat().st_blocks * 512 for f in files)


def warm_page_cache(folder: Path) -> None:
    """Read every file once, so each run starts from a warm disk (the page cache), as the target asks."""
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 22):
                    pass


# ----------------------------------------------------------------------------- runs


def env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def pack(data: Path, out: Path, shard_size: str, resize: str | None) -> float:
    """`edgecls data pack` in a subprocess (replacing an earlier pack); its seconds."""
    cmd = [sys.executable, "-m", "edgecls", "data", "pack", str(data), "--out", str(out), "--shard-size", shard_size]
    cmd += ["--force"] + (["--resize-to", resize] if resize else [])
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env())
    if proc.returncode != 0:
        sys.exit(f"error: pack failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def train(args, config: dict, data: Path, run: Path, cache_dir: Path, cache: str = "auto") -> dict:
    """train.py in a subprocess; per epoch seconds (epoch 1 with the cache set-up) and its timings."""
    import csv

    workers = args.workers if args.workers is not None else min(16, os.cpu_count() or 1)
    cmd = [sys.executable, str(REPO / "train.py"), str(data), "--backbone", config["backbone"]]
    cmd += ["--input-size", config["input"], "--batch-size", str(config["batch"]), "--epochs", str(args.epochs)]
    cmd += ["--early-stop", "0", "--seed", "0", "--workers", str(workers), "--gpu", str(args.gpu)]
    cmd += ["--cache-images", cache, "--cache-dir", str(cache_dir), "--snapshot-path", str(run), "--exist-ok"]
    cmd += ["--model-def-path", ""] + (["--amp"] if args.amp else [])
    warm_page_cache(data)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env())
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with (run / "summary.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    timings = json.loads((run / "timings.json").read_text())
    seconds = [float(r["seconds"]) for r in rows]
    return {
        "epoch1_s": round(timings["cache_s"] + seconds[0], 3),
        "epoch2_s": round(seconds[1], 3),
        "images": timings["train_images"],
        "cache": timings["cache"],
        "cache_s": timings["cache_s"],
        "scan_s": timings["scan_s"],
        "wall_s": round(wall, 1),
        "val_top1": [float(r["val_top1"]) for r in rows],
    }


def ceiling_for(args, config: dict, data: Path) -> float:
    from train_speed import ceiling

    from edgecls.data.classmap import discover_classes

    ns = argparse.Namespace(
        data=str(data), backbone=config["backbone"], input_size=config["input"], batch_size=config["batch"],
        gpu=args.gpu, amp=args.amp, compile=False, cudnn_benchmark=False, ceiling_steps=args.ceiling_steps,
    )  # fmt: skip
    return ceiling(ns, len(discover_classes(data / "train")))["images_per_s"]


def run_config(args, name: str, data: Path, work: Path) -> dict:
    config = CONFIGS[name]
    rows = {}
    shards, resized = work / "shards", work / "shards-resized"
    pack_s = pack(data, shards, args.shard_size, None)
    resized_s = pack(data, resized, args.shard_size, config["resize"])
    plan = [
        ("folder", data, "auto", None, folder_bytes(data)),
        ("shards", shards, "auto", pack_s, folder_bytes(shards, "*.tar")),
        ("shards-resized", resized, "auto", resized_s, folder_bytes(resized, "*.tar")),
    ]
    if args.streamed:
        streamed = work / "shards-streamed"
        streamed_s = pack(data, streamed, args.stream_shard_size, None)
        plan += [
            ("folder-streamed", data, "none", None, folder_bytes(data)),
            ("shards-streamed", streamed, "none", streamed_s, folder_bytes(streamed, "*.tar")),
        ]
    for label, source, cache, build_s, nbytes in plan:
        result = train(args, config, source, work / "runs" / label, work / "cache" / label, cache)
        rows[label] = {**result, "disk_bytes": nbytes, "build_s": round(build_s, 2) if build_s else None}
        print(f"  {label}: epoch 1 {result['epoch1_s']:.1f} s, epoch 2 {result['epoch2_s']:.1f} s", flush=True)
    warm_dir = work / "cache" / "cache-warm"
    first = train(args, config, data, work / "runs" / "cache-build", warm_dir, "disk")
    second = train(args, config, data, work / "runs" / "cache-warm", warm_dir, "disk")
    rows["cache-warm"] = {
        **second,
        "disk_bytes": folder_bytes(warm_dir, "*.npy"),
        "build_s": round(first["cache_s"], 2),
        "first_run": first,
    }
    print(f"  cache-warm: epoch 1 {second['epoch1_s']:.1f} s, epoch 2 {second['epoch2_s']:.1f} s", flush=True)
    top = ceiling_for(args, config, data)
    for row in rows.values():
        row["epoch1_ratio"] = round(row["images"] / row["epoch1_s"] / top, 3)
        row["epoch2_ratio"] = round(row["images"] / row["epoch2_s"] / top, 3)
    return {"config": config, "data": str(data), "ceiling_images_per_s": top, "rows": rows}


def report(name: str, result: dict) -> list[str]:
    config, rows = result["config"], result["rows"]
    lines = [
        f"\n{name}: {config['backbone']} at {config['input']}, batch {config['batch']}, "
        f"{rows['folder']['images']:,} training images; ceiling {result['ceiling_images_per_s']:,.0f} img/s",
        f"  {'format':<16}{'epoch 1 s':>10}{'epoch 2 s':>10}{'x ceil 1':>9}{'x ceil 2':>9}"
        f"{'disk MB':>10}{'pack/cache s':>13}  cache",
    ]
    for label, row in rows.items():
        build = f"{row['build_s']:.1f}" if row["build_s"] is not None else "-"
        lines.append(
            f"  {label:<16}{row['epoch1_s']:>10.1f}{row['epoch2_s']:>10.1f}{row['epoch1_ratio']:>9.2f}"
            f"{row['epoch2_ratio']:>9.2f}{row['disk_bytes'] / 1e6:>10.1f}{build:>13}  {row['cache']}"
        )
    folder, shards, warm = rows["folder"], rows["shards"], rows["cache-warm"]
    verdict = (
        "PASS" if shards["epoch1_s"] <= folder["epoch1_s"] and shards["epoch2_s"] <= folder["epoch2_s"] else "FAIL"
    )
    lines.append(
        f"  shards / folder seconds: epoch 1 {shards['epoch1_s'] / folder['epoch1_s']:.2f}, epoch 2 "
        f"{shards['epoch2_s'] / folder['epoch2_s']:.2f} (target <= 1: {verdict})"
    )
    ratio = warm["epoch2_s"] / warm["epoch1_s"]
    verdict = "PASS" if ratio >= 0.95 else "FAIL"
    lines.append(f"  cache-warm epoch 1 speed / epoch 2 speed: {ratio:.2f} (target >= 0.95: {verdict})")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("EDGECLS_CACHE_DIR", tempfile.mkdtemp(prefix="edgecls-df-verify-"))  # the scan's verdicts
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}}
    lines = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        n_train, n_val = (int(v) for v in getattr(args, name).split(":"))
        if name == "fmnist":
            data = fmnist_folder(out, n_train, n_val, Path(args.fmnist_source))
        else:
            data = photo_folder(out, n_train, n_val)
        print(f"{name}: {data}", flush=True)
        result[name] = run_config(args, name, data, out / f"work-{name}-{n_train}-{n_val}")
        lines += report(name, result[name])
    print("\n".join(lines))
    path = Path(args.json or out / "data_formats.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
