"""RunRecorder: the run folder. It owns best.pth and last.pth, summary.csv, curves.png, timings.json,
args.yaml, class_id.json and bad_files.txt; under DDP only rank 0's recorder writes.

Every file is written atomically, and summary.csv is rewritten whole each epoch, so a run killed at any
moment leaves a folder that `--resume` continues from.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import yaml

from edgecls.atomic import atomic_savefig, atomic_write_text
from edgecls.data.classmap import write_class_map
from edgecls.engine.checkpoint import save_checkpoint

SUMMARY_FIELDS = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_top1",
    "val_topk",
    "val_top1_raw",
    "val_top1_ema",
    "weights",
    "lr",
    "images_per_s",
    "seconds",
    "peak_mem_mb",
]


class RunRecorder:
    """Writes one run's folder. enabled=False (DDP ranks > 0): every method is a no-op."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.history: list[dict] = []  # one summary row per epoch trained, resumed runs included
        self.timings: dict = {}

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def start(self, config: dict, classes: list[str], bad_report: str) -> None:
        """Create the folder and write what is known before training: settings, class map, skipped files."""
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_bad_files(bad_report, self.path("bad_files.txt"))
        write_class_map(classes, self.path("class_id.json"))
        write_args_yaml(config, self.path("args.yaml"))

    def resume_history(self, epochs_done: int) -> None:
        """The summary rows of the epochs the checkpoint holds (a row written after it is dropped)."""
        rows = read_summary(self.path("summary.csv"))
        self.history = [r for r in rows if int(r["epoch"]) <= epochs_done]

    def update_timings(self, values: dict) -> None:
        self.timings.update(values)
        if self.enabled:
            atomic_write_text(json.dumps(self.timings, indent=2) + "\n", self.path("timings.json"))

    def record_epoch(self, row: dict, last: dict, train_state: dict, best: dict | None = None) -> None:
        """best.pth (given when this epoch is the best), last.pth with the resume state, summary.csv, curves."""
        self.history.append(row)
        if not self.enabled:
            return
        if best is not None:
            save_checkpoint(best, self.path("best.pth"))
        save_checkpoint({**last, "train": train_state}, self.path("last.pth"))
        write_summary(self.history, self.path("summary.csv"))
        plot_curves(self.history, self.path("curves.png"))


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

    def series(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]

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
