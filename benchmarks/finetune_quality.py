#!/usr/bin/env python3
"""Fine-tune quality: does `train.py --pretrained` with the default recipe beat a linear probe on real photos?

For each dataset (benchmarks/stamps.py: `tune`, the one the recipe was chosen on, and `heldout`, five other
categories never used for choosing), in one run, each row over --seeds seeds:

  linear probe     scikit-learn LogisticRegression on frozen pretrained features (eval preprocessing,
                   no augmentation): the baseline
  kneron           --pretrained --recipe kneron (Kneron's defaults)
  default          --pretrained and nothing else but --epochs 10 --batch-size 16 (the finetune recipe)
  default - X      the default with one part of the recipe switched off, to show what each is worth

It prints val top-1 of the last epoch (mean +- std) and of the best epoch (the checkpoint train.py keeps,
chosen on val, so optimistic), and seconds per run; --json writes every figure.

    python benchmarks/finetune_quality.py --out /tmp/ftq [--seeds 3] [--backbone efficientnet-lite0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

ABLATIONS = {
    "default - linear-probe head (probe_init off)": {"probe_init": False},
    "default - frozen BatchNorm statistics": {"freeze_bn": False},
    "default - layer decay (1.0)": {"layer_decay": 1.0},
    "default - EMA": {"model_ema": False},
}


def linear_probe(data: Path, backbone: str) -> float:
    """LogisticRegression on the frozen backbone's pooled features of eval-preprocessed images."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from edgecls.data.folder import scan_dataset
    from edgecls.data.images import load_rgb
    from edgecls.data.presets import Preprocess
    from edgecls.models import create_model, get_spec

    spec = get_spec(backbone)
    pre = Preprocess(spec.input_size, preset=spec.preprocess)
    model = create_model(backbone, num_classes=2, pretrained=True).eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    feats = []
    hook = head.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach()))
    _, splits = scan_dataset(data)

    def features(samples):
        feats.clear()
        with torch.no_grad():
            for i in range(0, len(samples), 32):
                model(torch.stack([pre(load_rgb(p)) for p, _ in samples[i : i + 32]]))
        return torch.cat(feats).numpy(), np.array([label for _, label in samples])

    x_tr, y_tr = features(splits["train"].samples)
    x_va, y_va = features(splits["val"].samples)
    hook.remove()
    clf = LogisticRegression(max_iter=5000).fit(x_tr, y_tr)
    return float((clf.predict(x_va) == y_va).mean())


def fine_tune(data: Path, backbone: str, seed: int, run_dir: Path, extra: dict) -> dict:
    from edgecls.engine.config import TrainConfig
    from edgecls.engine.recorder import read_summary
    from edgecls.engine.trainer import fit

    cfg = TrainConfig(data=str(data), backbone=backbone, pretrained=True, epochs=10, batch_size=16, seed=seed,
                      snapshot_path=str(run_dir), model_def_path=None, workers=2, **extra)  # fmt: skip
    start = time.perf_counter()
    result = fit(cfg, log=lambda message: None)
    rows = read_summary(run_dir / "summary.csv")
    return {
        "last": float(rows[-1]["val_top1"]),
        "best": float(result.best_top1),
        "seconds": time.perf_counter() - start,
    }


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def main(argv=None) -> int:
    from stamps import write_set

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="work folder (datasets and runs)")
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sets", default="tune,heldout")
    ap.add_argument(
        "--rows", default="all", help="all, main (kneron, default), ablations, or a comma list of row names"
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out)
    os.environ.setdefault("EDGECLS_CACHE_DIR", tempfile.mkdtemp(prefix="edgecls-ftq-cache-"))
    rows = {"kneron": {"recipe": "kneron"}, "default": {}, **ABLATIONS}
    if args.rows == "main":
        rows = {k: rows[k] for k in ("kneron", "default")}
    elif args.rows == "ablations":
        rows = dict(ABLATIONS)
    elif args.rows != "all":
        rows = {k: v for k, v in rows.items() if k in args.rows.split(",")}
    report = {}
    for name in args.sets.split(","):
        data = out / f"stamps_{name}"
        write_set(data, name)
        figures = {"linear probe": {"last": [linear_probe(data, args.backbone)], "best": [], "seconds": []}}
        for row, extra in rows.items():
            figures[row] = {"last": [], "best": [], "seconds": []}
            for seed in range(args.seeds):
                run_dir = out / "runs" / name / row.replace(" ", "_") / f"seed{seed}"
                r = fine_tune(data, args.backbone, seed, run_dir, {"exist_ok": True, **extra})
                for key in ("last", "best", "seconds"):
                    figures[row][key].append(r[key])
                print(f"  {name} | {row} | seed {seed}: last {r['last']:.3f} best {r['best']:.3f} "
                      f"({r['seconds']:.0f} s)", flush=True)  # fmt: skip
        report[name] = figures
        print(f"\n{name} ({args.backbone}, {args.seeds} seeds): val top-1")
        print(f"  {'row':<42}{'last epoch':>18}{'best epoch':>18}{'s/run':>8}")
        probe = figures["linear probe"]["last"][0]
        for row, f in figures.items():
            best = mean_std(f["best"]) if f["best"] else ""
            secs = f"{statistics.mean(f['seconds']):.0f}" if f["seconds"] else ""
            print(f"  {row:<42}{mean_std(f['last']):>18}{best:>18}{secs:>8}")
        d = figures.get("default")
        if d:
            verdict = "beats" if statistics.mean(d["last"]) > probe else "does NOT beat"
            print(f"  => the default (last epoch, mean) {verdict} the linear probe ({probe:.3f})\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
