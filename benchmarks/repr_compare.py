#!/usr/bin/env python3
"""The representation backbones side by side on one labelled folder, with the same metrics.

For each backbone, a run of train.py with its defaults on DATA/train (DATA/val for validation and early
stopping), then, from its best.pth:
  - kNN top-1 (5 neighbours, leave-one-out), P@5 and the AMI of KMeans (k = the number of classes) on the
    embeddings of the DATA/val images (edgecls.embed: the features before the head; an autoencoder's
    pooled bottleneck), the metrics `edgecls embed` and `edgecls cluster` report;
  - classifier val top-1 of the best epoch (summary.csv), for the backbones trained as classifiers;
  - parameters (of the network trained; the autoencoder's decoder included, the pretrained row's features
    only), the size of the FP32 ONNX file (pytorch2onnx's pipeline, generic profile), whether it
    passes the kl520 profile, and its CPU latency (ONNX Runtime, batch 1, median of --repeats runs).

Rows:
  classic-cnn             from scratch, classifier, --input-size
  conv-autoencoder        from scratch, --task autoencoder (labels unused), --input-size
  vit-tiny                classifier at --input-size with 8x8 patches; pretrained when timm's weights are in
                          the Hugging Face cache, else from scratch (the row says which)
  mobilenetv2             from scratch (its ImageNet weights are not installed offline), --input-size
  efficientnet-lite0 ft   --pretrained, fine-tune recipe, at its 224x224
  efficientnet-lite0 pre  the ImageNet features as they are, no training (the baseline a catalog starts from)

    python benchmarks/stamps.py --out /tmp/stamps --set all         (tuxpaint-stamps-default photos, 11 classes)
    python benchmarks/repr_compare.py /tmp/stamps --out /tmp/repr_compare [--epochs 30] [--table docs/repr_compare.md]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgecls.embed.cluster import cluster_metrics, cluster_vectors  # noqa: E402
from edgecls.embed.embed import embed_images  # noqa: E402
from edgecls.embed.features import Embedder  # noqa: E402
from edgecls.embed.retrieval import retrieval_metrics  # noqa: E402
from edgecls.export.options import ExportOptions  # noqa: E402
from edgecls.export.pipeline import run_export  # noqa: E402
from edgecls.export.profiles import check_profile, load_profile  # noqa: E402

IMAGES = (".jpg", ".jpeg", ".png")


@dataclass
class Backbone:
    label: str
    backbone: str
    args: list[str]  # train.py flags; None-like [] with train=False: pretrained features only
    train: bool = True
    classifier: bool = True
    how: str = ""


@dataclass
class Row:
    label: str
    how: str
    knn_top1: float
    p_at_5: float
    ami: float
    val_top1: float | None
    params: int
    onnx_bytes: int
    kl520: bool
    latency_ms: float
    train_s: float
    epochs: int


def vit_weights_present() -> bool:
    from edgecls.errors import UserError
    from edgecls.models.vit import ARCHS, cached_weights

    try:
        cached_weights("vit-tiny", ARCHS["vit-tiny"])
        return True
    except UserError:
        return False


def backbones(size: int) -> list[Backbone]:
    s = str(size)
    vit_pre = vit_weights_present()
    return [
        Backbone("classic-cnn", "classic-cnn", ["--input-size", s], how=f"scratch, {s}px"),
        Backbone("conv-autoencoder", "conv-autoencoder", ["--input-size", s, "--task", "autoencoder"],
                 classifier=False, how=f"scratch, {s}px, reconstruction (MSE), no labels"),
        Backbone("vit-tiny", "vit-tiny", ["--input-size", s, "--model-args", "patch_size=8"]
                 + (["--pretrained"] if vit_pre else []),
                 how=f"{'pretrained' if vit_pre else 'scratch (no local weights)'}, {s}px, 8x8 patches"),
        Backbone("mobilenetv2", "mobilenetv2", ["--input-size", s], how=f"scratch, {s}px"),
        Backbone("efficientnet-lite0 ft", "efficientnet-lite0", ["--pretrained"], how="pretrained, fine-tuned, 224px"),
        Backbone("efficientnet-lite0 pre", "efficientnet-lite0", [], train=False, classifier=False,
                 how="pretrained ImageNet features, no training, 224px"),
    ]  # fmt: skip


def images_of(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGES)


def train(b: Backbone, data: Path, run: Path, epochs: int, workers: int) -> tuple[float, float | None, int]:
    """train.py; (seconds, best val top-1 or None, epochs run)."""
    cmd = [sys.executable, str(REPO / "train.py"), str(data), "--backbone", b.backbone, *b.args,
           "--epochs", str(epochs), "--batch-size", "32", "--workers", str(workers), "--snapshot-path", str(run),
           "--exist-ok", "--model-def-path", "", "--no-final-eval"]  # fmt: skip
    print("  $", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: train.py failed for {b.label}: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
    rows = list(csv.DictReader((run / "summary.csv").open()))
    top1 = max(float(r["val_top1"]) for r in rows) if b.classifier else None
    return seconds, top1, len(rows)


def embedding_metrics(model: str, val: Path) -> tuple[float, float, float]:
    """kNN top-1, P@5 and KMeans AMI of the val images' embeddings under `model` (checkpoint or backbone)."""
    emb = embed_images(Embedder.load(model), images_of(val), root=val)
    classes = sorted(set(emb.labels))
    codes = np.array([classes.index(lab) for lab in emb.labels])
    found = retrieval_metrics(emb.vectors, codes, k=5)
    clusters = cluster_vectors(emb.vectors, "kmeans", len(classes), seed=0)
    return found.knn_accuracy, found.p_at_5, cluster_metrics(list(codes), clusters)["ami"]


def onnx_figures(model: str, b: Backbone, val: Path, work: Path) -> tuple[int, Path, bool]:
    """(parameters, the ONNX file, whether it passes kl520) of the exported model."""
    import onnx

    from edgecls.embed.features import strip_head
    from edgecls.engine.checkpoint import load_model
    from edgecls.models import create_model

    out = work / f"{b.label.replace(' ', '_')}.onnx"
    if b.train:
        opts = ExportOptions(snapshot=model, save_path=str(out), model_def_path=None, profile="generic", force=True)
        net = load_model(model).model
    else:
        opts = ExportOptions(backbone=b.backbone, pretrained=True, embedding=True, save_path=str(out),
                             model_def_path=None, profile="generic", force=True, verify_dir=str(val))  # fmt: skip
        net = strip_head(create_model(b.backbone, num_classes=1, pretrained=True))[0]  # the features exported
    res = run_export(opts)
    if not res.ok:
        sys.exit(f"error: the export of {b.label} failed its verification or the generic profile")
    params = sum(p.numel() for p in net.parameters())
    kl520 = check_profile(onnx.load(str(out)), load_profile("kl520")).passed
    return params, out, kl520


def latencies_ms(paths: list[Path], repeats: int, rounds: int = 5) -> list[float]:
    """Median batch-1 latency of each file, 1 thread, after every file is built: the files take turns in
    `rounds` blocks of repeats / rounds runs, so a busy moment of the machine falls on all of them alike."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
    runs = []
    for path in paths:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0]
        shape = [d if isinstance(d, int) else 1 for d in feed.shape]
        x = {feed.name: np.random.default_rng(0).random(shape, dtype=np.float32)}
        for _ in range(5):
            session.run(None, x)
        runs.append((session, x))
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for (session, x), own in zip(runs, times):
            for _ in range(max(1, repeats // rounds)):
                start = time.perf_counter()
                session.run(None, x)
                own.append(time.perf_counter() - start)
    return [1000 * statistics.median(own) for own in times]


def markdown(rows: list[Row], data: Path, args, counts: dict) -> str:
    def f(v):
        return "—" if v is None else f"{v:.3f}"

    lines = [
        "# Representation backbones compared",
        "",
        f"Written by `python benchmarks/repr_compare.py {data} --epochs {args.epochs} --input-size {args.input_size}` "
        f"on {time.strftime('%Y-%m-%d')}, {platform.machine()} CPU, {os.cpu_count()} cores.",
        "",
        f"Data: {counts['train']} train and {counts['val']} val images in {counts['classes']} classes. Embedding "
        "metrics are over the val images (features before the head; the autoencoder's pooled bottleneck): kNN "
        "top-1 of 5 neighbours and P@5, leave-one-out, and the adjusted mutual information of KMeans with k = "
        "classes. Val top-1 is the best epoch's (classifiers only). Latency: ONNX Runtime, 1 thread, batch 1, "
        f"median of {args.repeats} runs on random input, the files taking turns. Each row is one run with one "
        "seed: on a val set this small a difference under ~5 points is noise.",
        "",
        "| backbone | how | kNN top-1 | P@5 | KMeans AMI | val top-1 | params | ONNX MB | kl520 | CPU ms | "
        "epochs | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.how} | {r.knn_top1:.3f} | {r.p_at_5:.3f} | {r.ami:.3f} | {f(r.val_top1)} | "
            f"{r.params / 1e6:.2f}M | {r.onnx_bytes / 1e6:.1f} | {'pass' if r.kl520 else 'FAIL'} | "
            f"{r.latency_ms:.2f} | {r.epochs or '—'} | {round(r.train_s) if r.epochs else '—'} |"
        )
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="labelled folder: DATA/train/<class>/, DATA/val/<class>/")
    ap.add_argument("--out", type=Path, default=Path("/tmp/repr_compare"), help="work folder (runs, ONNX files)")
    ap.add_argument("--epochs", type=int, default=30, help="train.py --epochs for every trained row")
    ap.add_argument("--input-size", type=int, default=64, help="input of the scratch rows (lite0 uses its 224)")
    ap.add_argument("--repeats", type=int, default=100, help="timed ONNX Runtime runs per model")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated row labels to run (default: all)")
    ap.add_argument("--table", type=Path, default=REPO / "docs" / "repr_compare.md")
    args = ap.parse_args(argv)
    train_dir, val_dir = args.data / "train", args.data / "val"
    if not (train_dir.is_dir() and val_dir.is_dir()):
        sys.exit(f"error: {args.data} needs train/<class>/ and val/<class>/ folders (benchmarks/stamps.py makes one)")
    counts = {
        "train": len(images_of(train_dir)),
        "val": len(images_of(val_dir)),
        "classes": len([d for d in val_dir.iterdir() if d.is_dir()]),
    }
    print(f"{args.data}: {counts}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    rows = []
    for b in backbones(args.input_size):
        if wanted and b.label not in wanted:
            continue
        print(f"{b.label}: {b.how}", flush=True)
        run = args.out / b.label.replace(" ", "_")
        seconds, top1, epochs = train(b, args.data, run, args.epochs, args.workers) if b.train else (0.0, None, 0)
        model = str(run / "best.pth") if b.train else b.backbone
        knn, p5, ami = embedding_metrics(model, val_dir)
        params, onnx_file, kl520 = onnx_figures(model, b, val_dir, args.out)
        row = Row(b.label, b.how, knn, p5, ami, top1, params, onnx_file.stat().st_size, kl520, 0.0, seconds, epochs)
        print(f"  {row}", flush=True)
        rows.append((row, onnx_file))
    print(f"latency: {args.repeats} runs of each ONNX file, taking turns", flush=True)
    for (row, _), ms in zip(rows, latencies_ms([f for _, f in rows], args.repeats)):
        row.latency_ms = ms
    rows = [row for row, _ in rows]
    table = markdown(rows, args.data, args, counts)
    print(table)
    write_atomic(args.table, table)
    print(f"wrote {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
