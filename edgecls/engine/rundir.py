"""Run-folder outputs: args.yaml, summary.csv, timings.json, training curves PNG, bad-file report."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import yaml

from edgecls.atomic import atomic_savefig, atomic_write_text

SUMMARY_FIELDS = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_top1",
    "val_topk",
    "lr",
    "images_per_s",
    "seconds",
    "peak_mem_mb",
]


def write_args_yaml(args: dict, path: Path) -> None:
    clean = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in args.items()}
    atomic_write_text(yaml.safe_dump(clean, sort_keys=True), path)


def read_summary(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_summary(rows: list[dict], path: Path) -> None:
    """Rewrite the whole file (small) so a resumed run never duplicates an epoch row."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(buf.getvalue(), path)


def plot_curves(rows: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train vs val."""
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in rows]
    series = lambda key: [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]  # noqa: E731
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, series("train_loss"), label="train")
    ax1.plot(epochs, series("val_loss"), label="val")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot(epochs, series("train_acc"), label="train top-1")
    ax2.plot(epochs, series("val_top1"), label="val top-1")
    ax2.plot(epochs, series("val_topk"), label="val top-k", linestyle="--")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy"), ax2.legend(), ax2.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path)


def write_bad_files(report: str, path: Path) -> None:
    """The files this scan skipped; none: an earlier run's list (--exist-ok, --resume) is removed."""
    if report:
        atomic_write_text(report + "\n", path)
    else:
        path.unlink(missing_ok=True)


def write_timings(timings: dict, path: Path) -> None:
    """Seconds spent before the first epoch (dataset scan, decoded-image cache mode and set-up), then, once
    it is over, where the first epoch went (first step, and the gpu cache fill beside it)."""
    atomic_write_text(json.dumps(timings, indent=2) + "\n", path)
