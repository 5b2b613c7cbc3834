"""Does `edgecls tune` find better settings than train.py's defaults, and does pruning save time without
losing the best? Three runs on one photo folder, in one process, one after the other:

  default   python train.py DATA TRAIN_FLAGS --epochs E
  prune     edgecls tune DATA --trials N TRAIN_FLAGS --epochs-max E            (Hyperband, or --pruner)
  no-prune  edgecls tune DATA --trials N TRAIN_FLAGS --epochs-max E --no-prune

    python benchmarks/tune_quality.py --data PHOTOS [--trials 16] [--epochs-max 10] [--out bench_out/tune_quality]
        [--json tune_quality.json] [-- TRAIN_FLAGS...]

DATA is the real-photo folder of the recipes benchmark (benchmarks/finetune_quality.py writes it); any
train/ val/ folder works, e.g. `python benchmarks/photos.py --out /tmp/p --train 200 --val 60`.
TRAIN_FLAGS (after `--`) are given to all three runs; default: efficientnet-lite0 from its ImageNet
weights on the CPU (`--backbone efficientnet-lite0 --pretrained`); add `--gpu 0` on a GPU machine.
Each run is a subprocess, timed from start to exit. Prints the best val top-1 of each, the wall time
and the pruned trials, and writes JSON.
Targets: pruning keeps the best within 1 point of no pruning, in at most 0.6 of its wall time; each
tuned best is at least the default run's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_DROP_POINTS = 1.0
MAX_WALL_RATIO = 0.6
DEFAULT_TRAIN_FLAGS = ["--backbone", "efficientnet-lite0", "--pretrained"]


def timed(cmd: list[str], log: Path) -> float:
    """Run `cmd` (output to `log`); its wall seconds. A failure ends the benchmark with the log's tail."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed ({proc.returncode}); last lines of {log}:\n" + log.read_text()[-3000:])
    return seconds


def default_run(data: Path, out: Path, flags: list[str], epochs: int) -> dict:
    run = out / "default"
    cmd = [sys.executable, str(REPO / "train.py"), str(data), *flags, "--epochs", str(epochs), "--snapshot-path",
           str(run), "--exist-ok"]  # fmt: skip
    seconds = timed(cmd, out / "default.log")
    rows = list(csv.DictReader((run / "summary.csv").open()))
    return {"best_top1": max(float(r["val_top1"]) for r in rows), "wall_s": round(seconds, 1), "epochs": len(rows)}


def tune_run(name: str, data: Path, out: Path, flags: list[str], args, extra: list[str]) -> dict:
    study = out / name
    cmd = [sys.executable, "-m", "edgecls.cli.main", "tune", str(data), "--trials", str(args.trials), "--out",
           str(study), "--study", name, "--epochs-max", str(args.epochs_max), "--seed", str(args.seed), *flags,
           *extra]  # fmt: skip
    seconds = timed(cmd, out / f"{name}.log")
    rows = list(csv.DictReader((study / "trials.csv").open()))
    done = [float(r["val_top1"]) for r in rows if r["state"] == "COMPLETE"]
    return {
        "best_top1": max(done) if done else None, "wall_s": round(seconds, 1), "trials": len(rows),
        "pruned": sum(r["state"] == "PRUNED" for r in rows), "epochs_trained": sum(int(r["epochs_run"]) for r in rows),
    }  # fmt: skip


def report(results: dict) -> dict:
    d, p, n = results["default"], results["prune"], results["no_prune"]
    drop = ((n["best_top1"] or 0.0) - (p["best_top1"] or 0.0)) * 100
    ratio = p["wall_s"] / n["wall_s"]
    print(f"\n{'run':<10} {'best val top-1':>15} {'wall s':>8} {'trials':>7} {'pruned':>7} {'epochs':>7}")
    for name, r in (("default", d), ("prune", p), ("no-prune", n)):
        print(f"{name:<10} {r['best_top1']:>15.4f} {r['wall_s']:>8.1f} {r.get('trials', 1):>7} "
              f"{r.get('pruned', 0):>7} {r.get('epochs_trained', r.get('epochs')):>7}")  # fmt: skip
    targets = {
        "prune_within_1_point": drop <= MAX_DROP_POINTS,
        "prune_wall_at_most_0.6x": ratio <= MAX_WALL_RATIO,
        "tuned_at_least_default": min(p["best_top1"] or 0.0, n["best_top1"] or 0.0) >= d["best_top1"],
    }
    print(f"\npruning: best {drop:+.2f} points below no pruning (target <= {MAX_DROP_POINTS}), wall {ratio:.2f}x "
          f"(target <= {MAX_WALL_RATIO}); tuned best >= default: {targets['tuned_at_least_default']}")  # fmt: skip
    return {"drop_points": round(drop, 2), "wall_ratio": round(ratio, 3), "targets": targets}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, None)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="train/ val/ photo folder")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--epochs-max", type=int, default=10, help="tune's --epochs-max; train.py's --epochs")
    ap.add_argument("--pruner", default="hyperband", choices=("hyperband", "median"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "tune_quality", help="replaced on each run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(own)
    flags = DEFAULT_TRAIN_FLAGS if flags is None else flags
    data, out = args.data.resolve(), args.out.resolve()
    if not (data / "train").is_dir() or not (data / "val").is_dir():
        sys.exit(f"error: --data {data}: expected train/ and val/ class folders")
    shutil.rmtree(out, ignore_errors=True)  # the benchmark's own folder: every run starts clean
    out.mkdir(parents=True)
    print(f"data {data}; train flags: {' '.join(flags)}; {args.trials} trials, epochs <= {args.epochs_max}")
    results = {"default": default_run(data, out, flags, args.epochs_max)}
    print(f"default train.py: {results['default']}", flush=True)
    results["prune"] = tune_run("prune", data, out, flags, args, ["--pruner", args.pruner])
    print(f"tune with pruning: {results['prune']}", flush=True)
    results["no_prune"] = tune_run("no_prune", data, out, flags, args, ["--no-prune"])
    print(f"tune without pruning: {results['no_prune']}", flush=True)
    summary = report(results)
    record = {
        "benchmark": "tune_quality", "data": str(data), "train_flags": flags, "trials": args.trials,
        "epochs_max": args.epochs_max, "pruner": args.pruner, "seed": args.seed, "machine": platform.platform(),
        "cpus": os.cpu_count(), **results, **summary,
    }  # fmt: skip
    path = args.json or out / "tune_quality.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
