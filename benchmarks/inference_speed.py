#!/usr/bin/env python3
"""Inference speed: images/s of the full path (decode + preprocess + model, what inference.py runs)
against the bare model forward on pre-made tensors, measured in the same run.

    python benchmarks/inference_speed.py                       # mobilenetv2 @224, batch 1 and 32
    python benchmarks/inference_speed.py --backbone resnet18 --num-images 256 --json result.json

Images: real photographs (scikit-learn's bundled sample images, random crops of several sizes,
saved as JPEG) unless --images FOLDER is given. Weights are random (speed does not depend on
them). The target for this project: full path >= 70% of the bare-forward rate, batched.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def write_photo_folder(out: Path, count: int, seed: int = 0) -> list[str]:
    """Random crops (160..640 px) of sklearn's two sample photographs, as JPEG files."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two 427x640 RGB photographs
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h = int(rng.integers(160, photo.shape[0] + 1))
        w = int(rng.integers(160, photo.shape[1] + 1))
        top, left = int(rng.integers(0, photo.shape[0] - h + 1)), int(rng.integers(0, photo.shape[1] - w + 1))
        path = out / f"photo_{i:04d}.jpg"
        Image.fromarray(photo[top : top + h, left : left + w]).save(path, quality=90)
        paths.append(str(path))
    return paths


def rate(fn, images: int, repeats: int) -> float:
    """Best-of-repeats images/s (the least disturbed run on a shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return images / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="mobilenetv2")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--num-images", type=int, default=128, help="photos to generate (ignored with --images)")
    ap.add_argument("--images", default=None, help="use this folder of images instead of generated photos")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="decode threads (default: Predictor's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-cli", action="store_true", help="do not time the inference.py subprocess")
    ap.add_argument("--json", default="inference_speed.json", help="results file")
    args = ap.parse_args(argv)

    import torch

    from edgecls.classify import collect_images
    from edgecls.data.presets import Preprocess
    from edgecls.engine.checkpoint import make_checkpoint, save_checkpoint
    from edgecls.models import create_model, get_spec
    from edgecls.predict import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="edgecls_bench_"))
    paths = collect_images(args.images)[0] if args.images else write_photo_folder(tmp / "photos", args.num_images)
    n = len(paths)
    spec = get_spec(args.backbone)
    prep = Preprocess(input_size=(args.input_size, args.input_size), preset=spec.preprocess)
    classes = [f"class{i}" for i in range(10)]
    model = create_model(args.backbone, num_classes=len(classes)).eval()
    ckpt_path = tmp / "model.pth"
    save_checkpoint(
        make_checkpoint(model, backbone=args.backbone, model_kwargs={}, classes=classes, preprocess=prep), ckpt_path
    )
    predictor = Predictor.from_path(ckpt_path, num_threads=args.threads)

    tensors = np.random.default_rng(0).standard_normal((n, 3, args.input_size, args.input_size)).astype(np.float32)
    rows = []
    for bs in (1, args.batch_size):

        def bare(bs=bs):
            with torch.inference_mode():
                for i in range(0, n, bs):
                    torch.softmax(model(torch.from_numpy(tensors[i : i + bs])), dim=1)

        def full(bs=bs):
            for _, _probs, err in predictor.predict_paths(paths, batch_size=bs, workers=args.workers):
                assert err is None, err

        bare()  # warm-up (allocator, kernels)
        full()
        bare_rate = rate(bare, n, args.repeats)
        full_rate = rate(full, n, args.repeats)
        rows.append(
            {
                "batch_size": bs,
                "bare_forward_img_s": round(bare_rate, 2),
                "full_path_img_s": round(full_rate, 2),
                "ratio": round(full_rate / bare_rate, 3),
            }
        )

    cli = None
    if not args.skip_cli:
        save = tmp / "cli_out"
        cmd = [
            sys.executable,
            str(REPO / "inference.py"),
            "--snapshot",
            str(ckpt_path),
            "--img-path",
            str(Path(paths[0]).parent),
            "--save-path",
            str(save),
            "--batch-size",
            str(args.batch_size),
            "--no-progress",
            "--topk",
            "5",
        ]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        cli = {
            "wall_s": round(wall, 2),
            "img_s_including_startup": round(n / wall, 2),
            "files_written": len(list(save.glob("*.json"))),
        }

    print(
        f"{args.backbone} @ {args.input_size}x{args.input_size}, {n} images, torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs"
    )
    print(f"{'batch':>6} {'bare forward img/s':>20} {'full path img/s':>17} {'ratio':>7}")
    for r in rows:
        print(f"{r['batch_size']:>6} {r['bare_forward_img_s']:>20.2f} {r['full_path_img_s']:>17.2f} {r['ratio']:>7.1%}")
    if cli:
        print(
            f"inference.py subprocess (batch {args.batch_size}, incl. start-up and model load): "
            f"{cli['wall_s']} s, {cli['img_s_including_startup']} img/s, {cli['files_written']} JSON files"
        )
    target = next(r for r in rows if r["batch_size"] == args.batch_size)["ratio"]
    print(f"batched full path / bare forward = {target:.1%} (target >= 70%)")
    result = {
        "benchmark": "inference_speed",
        "backbone": args.backbone,
        "input_size": args.input_size,
        "num_images": n,
        "images": args.images or "sklearn sample photos (random JPEG crops)",
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rows": rows,
        "cli": cli,
        "batched_ratio": target,
        "target_ratio": 0.7,
    }
    out = Path(args.json)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
