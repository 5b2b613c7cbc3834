"""RunRecorder: the run folder. It owns best.pth and last.pth, summary.csv, curves.png, timings.json,
args.yaml, class_id.json and bad_files.txt; under DDP only rank 0's recorder writes. (The end-of-training
files, val_*/test_*, are engine/final_eval.py's.)

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
        self.curve_title, self.topk = self.run_dir.name, 5

    def describe_curves(self, title: str, topk: int) -> None:
        """What curves.png is titled and which K its top-K line is (the run's, capped below the class count)."""
        self.curve_title, self.topk = title, topk

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
        plot_curves(self.history, self.path("curves.png"), self.curve_title, self.topk)


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


CURVES_SIZE = (15.0, 4.5)  # inches at 100 dpi: curves.png is 1500 x 450 pixels


def best_epoch(rows: list[dict]) -> int | None:
    """The epoch best.pth holds: the first with the highest val top-1 (EarlyStopping's strict rule), or,
    in a run without accuracies (an autoencoder), the first with the lowest val loss."""
    scored = [(float(r["val_top1"]), -int(r["epoch"])) for r in rows if r.get("val_top1") not in (None, "")]
    if not scored:
        scored = [(-float(r["val_loss"]), -int(r["epoch"])) for r in rows if r.get("val_loss") not in (None, "")]
    return -max(scored)[1] if scored else None


def plot_curves(rows: list[dict], path: Path, title: str = "", topk: int = 5) -> None:
    """Loss, accuracy (train vs val, val top-K) and learning rate per epoch; the best epoch marked."""
    if not rows:
        return
    from matplotlib.ticker import MaxNLocator

    from edgecls.evaluation import pyplot

    plt = pyplot()
    epochs = [int(r["epoch"]) for r in rows]

    def series(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]

    accuracies = any(r.get("val_top1") not in (None, "") for r in rows)  # none in an autoencoder run
    fig, axes = plt.subplots(1, 3 if accuracies else 2, figsize=CURVES_SIZE, layout="constrained")
    ax1, ax2, ax3 = axes if accuracies else (axes[0], None, axes[1])
    ax1.plot(epochs, series("train_loss"), marker=".", label="train")
    ax1.plot(epochs, series("val_loss"), marker=".", label="val")
    ax1.set_ylabel("loss")
    if accuracies:
        plot_accuracies(ax2, epochs, series, topk)
    ax3.plot(epochs, series("lr"), marker=".", color="tab:purple", label="learning rate (epoch start)")
    ax3.set_ylabel("learning rate")
    ax3.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    best = best_epoch(rows)
    for ax in [a for a in (ax1, ax2, ax3) if a is not None]:
        if best is not None:
            ax.axvline(best, color="0.35", linestyle=":", label=f"best epoch {best}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no fractional epochs on short runs
        ax.set_xlabel("epoch"), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.suptitle(title or path.parent.name)
    atomic_savefig(fig, path)


def plot_accuracies(ax, epochs: list[int], series, topk: int) -> None:
    ax.plot(epochs, series("train_acc"), marker=".", label="train top-1")
    ax.plot(epochs, series("val_top1"), marker=".", label="val top-1")
    if topk > 1:
        ax.plot(epochs, series("val_topk"), marker=".", label=f"val top-{topk}", linestyle="--")
    ax.set_ylabel("accuracy")


def write_bad_files(report: str, path: Path) -> None:
    """The files this scan skipped; none: an earlier run's list (--exist-ok, --resume) is removed."""
    if report:
        atomic_write_text(report + "\n", path)
    else:
        path.unlink(missing_ok=True)
