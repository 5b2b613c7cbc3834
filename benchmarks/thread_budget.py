#!/usr/bin/env python3
"""Thread budget (issue 19, defect 1): train.py's images/s on an idle machine and beside other CPU-bound work,
with the old threading (OMP_WAIT_POLICY unset, torch's default thread counts) against the new default
(OMP_WAIT_POLICY=PASSIVE and the thread budget of edgecls/threads.py), in one run.

    python benchmarks/thread_budget.py                          # FP_classifier 32x32, 1,000 of the demo digits
    python benchmarks/thread_budget.py --source digits --images 600  # a quick check that it runs
    python benchmarks/thread_budget.py --load 2 --json out.json # two busy processes for the loaded case

Each case is a real train.py subprocess (`--early-stop 0`, its defaults otherwise) on the same image folder;
img/s = the median of its epochs' images_per_s (summary.csv). "old" runs with EDGECLS_THREADS=off and
OMP_WAIT_POLICY removed from its environment (what train.py did before the budget), "new" with neither set
(OMP_NUM_THREADS is removed for both). "loaded" = beside `--load` busy-loop Python processes that this script
starts before train.py and stops after it (default 1: the issue's "one other CPU-bound job"). Run it on an
otherwise idle machine: other processes distort both cases. The old loaded case is the slow one (at the 1
img/s measured before, 1,000 images x 2 epochs take about 25 minutes).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BUSY_LOOP = "while True: pass"
MODES = {"old": {"EDGECLS_THREADS": "off"}, "new": {}}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="dataset folder with train/ and val/ (default: the demo digits)")
    ap.add_argument("--source", default="mnist", choices=("mnist", "digits"), help="demo digits to write")
    ap.add_argument("--images", type=int, default=1000, help="use this many demo images (0: all)")
    ap.add_argument("--backbone", default="FP_classifier")
    ap.add_argument("--input-size", default="32")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="train.py --workers")
    ap.add_argument("--cache-images", default="auto", help="train.py --cache-images")
    ap.add_argument("--load", type=int, default=1, help="busy-loop processes beside the loaded runs")
    ap.add_argument("--json", default=None, help="write the results here")
    return ap.parse_args(argv)


def dataset(args, work: Path) -> Path:
    if args.data:
        return Path(args.data)
    from edgecls.data.demo import build_demo_dataset

    return build_demo_dataset(work / "data", source=args.source, limit=args.images or None)


def child_env(mode: str, work: Path) -> dict:
    """The environment without the user's thread settings, plus the mode's, and a cache folder of this run's."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "EDGECLS_THREADS")}
    return {**env, "PYTHONPATH": str(REPO), "EDGECLS_CACHE_DIR": str(work / "cache"), **MODES[mode]}


def train(args, data: Path, run_dir: Path, mode: str) -> dict:
    cmd = [sys.executable, str(REPO / "train.py"), str(data), "--backbone", args.backbone, "--input-size",
           args.input_size, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--workers",
           str(args.workers), "--cache-images", args.cache_images, "--early-stop", "0", "--snapshot-path",
           str(run_dir), "--model-def-path", ""]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(mode, run_dir.parent), cwd=run_dir.parent)
    if proc.returncode != 0:
        raise SystemExit(f"train.py failed ({mode}):\n{proc.stderr[-3000:]}")
    with (run_dir / "summary.csv").open(newline="") as fh:
        rates = [float(row["images_per_s"]) for row in csv.DictReader(fh)]
    budget = next((line for line in proc.stdout.splitlines() if line.startswith("threads: ")), "")
    return {"img_s": statistics.median(rates), "epochs_img_s": rates, "wall_s": round(time.perf_counter() - started, 2),
            "budget": budget}  # fmt: skip


def start_load(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n)]
    time.sleep(1.0)  # running before train.py starts, as a job already on the machine would be
    return procs


def stop_load(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def main(argv=None) -> int:
    args = parse_args(argv)
    results: dict = {"machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform()},
                     "settings": vars(args), "cases": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="thread_budget-") as tmp:
        work = Path(tmp)
        data = dataset(args, work)
        for scenario in ("idle", "loaded"):
            for mode in MODES:  # old, then new, for each scenario
                load = start_load(args.load) if scenario == "loaded" else []
                try:
                    case = train(args, data, work / f"{scenario}-{mode}", mode)
                finally:
                    stop_load(load)
                results["cases"][f"{scenario}/{mode}"] = case
                print(f"{scenario:<7} {mode:<4} {case['img_s']:8.1f} img/s  {case['budget']}", flush=True)
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def print_table(results: dict, args) -> None:
    cases = results["cases"]
    print(f"\n{args.backbone} {args.input_size}, batch {args.batch_size}, {args.workers} workers, "
          f"{results['machine']['cpus']} CPU(s); loaded = beside {args.load} busy process(es)")  # fmt: skip
    print("| machine | old img/s | new img/s | new / old |")
    print("| --- | ---: | ---: | ---: |")
    for scenario in ("idle", "loaded"):
        old, new = cases[f"{scenario}/old"]["img_s"], cases[f"{scenario}/new"]["img_s"]
        print(f"| {scenario} | {old:.1f} | {new:.1f} | {new / max(old, 1e-9):.2f} |")
    idle, loaded = cases["idle/new"]["img_s"], cases["loaded/new"]["img_s"]
    print(f"new default: loaded / idle = {loaded / max(idle, 1e-9):.2f} "
          f"(old: {cases['loaded/old']['img_s'] / max(cases['idle/old']['img_s'], 1e-9):.2f})")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
