#!/usr/bin/env python3
"""Few-shot accuracy of pretrained efficientnet-lite0 features on real photos of new classes.

Data: Debian's tuxpaint-stamps-default, the `tune` and `heldout` sets of benchmarks/stamps.py merged
(11 classes: photographs of birds, mammals, food, plants, space, town, vehicles, household, clothes,
seasonal things and money; lite0 was trained on ImageNet, not on these classes as such).

Measured, each image embedded once (edgecls.embed.features.Embedder, features before the head):
  1. 5-way 1-shot and 5-shot, EPISODES seeded episodes, QUERY queries per class (edgecls.embed.few_shot):
     nearest prototype by cosine, and beside it on the same episodes a logistic regression (scikit-learn)
     fitted on the same support embeddings; mean accuracy with its 95% interval (1.96 std / sqrt(episodes)).
  2. Beside them, whole-data figures on the stamps train/val split (11-way): nearest prototype with every
     train/ image as support, and a classifier fine-tuned with `train.py --pretrained` (finetune recipe,
     --finetune-epochs epochs on the CPU) - val top-1 of its best.pth.
  3. The prototype ONNX check: `pytorch2onnx.py --backbone efficientnet-lite0 --pretrained --prototypes
     SUPPORT` from a 5-shot support folder (11 classes), then Predictor.from_path(X.onnx) on every other image:
     the share whose top-1 equals the numpy prototypes' (compute_prototypes + cosine_scores).

    python benchmarks/few_shot.py --out /tmp/few_shot_bench          (apt-get install tuxpaint-stamps-default)
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from stamps import write_set  # noqa: E402

from edgecls.embed.embed import embed_images  # noqa: E402
from edgecls.embed.features import Embedder  # noqa: E402
from edgecls.embed.few_shot import episode_accuracies, mean_ci95, prototype_scores  # noqa: E402
from edgecls.embed.prototypes import compute_prototypes, cosine_scores  # noqa: E402

BACKBONE = "efficientnet-lite0"


def merged_stamps(out: Path) -> Path:
    """OUT/all/{train,val}/<class>/: the tune and heldout sets side by side (11 classes)."""
    merged = out / "all"
    if (merged / ".complete").is_file():
        return merged
    for name in ("tune", "heldout"):
        write_set(out / name, name)
        for split in ("train", "val"):
            for folder in sorted((out / name / split).iterdir()):
                shutil.copytree(folder, merged / split / folder.name, dirs_exist_ok=True)
    (merged / ".complete").touch()
    return merged


def logistic_regression(support: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=10.0, max_iter=1000).fit(support, labels).predict_proba(queries)


def episodes_table(vectors, codes, n_classes, episodes: int, query: int, seed: int) -> list[dict]:
    rows = []
    for k in (1, 5):
        out = episode_accuracies(
            vectors, codes, n_classes, n_way=5, k_shot=k, query=query, episodes=episodes, seed=seed + k,
            classifiers={"prototype": prototype_scores, "logreg": logistic_regression},
        )  # fmt: skip
        for name, acc in out.items():
            mean, ci = mean_ci95(acc)
            rows.append({"method": name, "k_shot": k, "accuracy": round(mean, 4), "ci95": round(ci, 4)})
    return rows


def finetune(data: Path, out: Path, epochs: int) -> dict:
    """train.py --pretrained (finetune recipe) on the stamps train/ split; the best epoch's val top-1."""
    run = out / "finetune_run"
    cmd = [sys.executable, str(REPO / "train.py"), str(data), "--backbone", BACKBONE, "--pretrained",
           "--epochs", str(epochs), "--batch-size", "32", "--workers", "2", "--snapshot-path", str(run),
           "--exist-ok", "--no-final-eval", "--model-def-path", ""]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    rows = list(csv.DictReader((run / "summary.csv").open()))
    best = max(rows, key=lambda r: float(r["val_top1"]))
    return {"epochs": len(rows), "best_epoch": int(best["epoch"]), "val_top1": float(best["val_top1"]),
            "seconds": round(time.perf_counter() - started, 1), "command": " ".join(cmd)}  # fmt: skip


def onnx_check(emb, data: Path, out: Path, embedder: Embedder) -> dict:
    """5-shot support folder -> prototype ONNX -> Predictor top-1 vs numpy prototypes on the other images."""
    from edgecls.predict import Predictor

    train = [i for i, p in enumerate(emb.paths) if Path(p).relative_to(data).parts[0] == "train"]
    support_dir = out / "support5"
    shutil.rmtree(support_dir, ignore_errors=True)
    chosen: dict[str, list[int]] = {}
    for i in train:
        if len(chosen.setdefault(emb.labels[i], [])) < 5:
            chosen[emb.labels[i]].append(i)
    for label, rows in chosen.items():
        (support_dir / label).mkdir(parents=True)
        for i in rows:
            shutil.copy(emb.paths[i], support_dir / label / Path(emb.paths[i]).name)
    onnx_path = out / "prototypes5.onnx"
    cmd = [sys.executable, str(REPO / "pytorch2onnx.py"), "--backbone", BACKBONE, "--pretrained",
           "--prototypes", str(support_dir), "--save-path", str(onnx_path), "--model-def-path", ""]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0 or not onnx_path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return {"status": "export failed", "detail": tail[-1] if tail else "", "command": " ".join(cmd)}
    support = {i for rows in chosen.values() for i in rows}
    classes, protos = compute_prototypes(
        emb.vectors[sorted(support)], [emb.labels[i] for i in sorted(support)], sorted(chosen)
    )
    queries = [i for i in range(len(emb.paths)) if i not in support]
    numpy_top1 = np.argmax(cosine_scores(emb.vectors[queries], protos), axis=1)
    predictor = Predictor.from_path(str(onnx_path))
    onnx_top1, agree = [], 0
    for (_, probs, _), expected in zip(predictor.predict_paths([emb.paths[i] for i in queries]), numpy_top1):
        name = predictor.topk(probs, 1)[0][1] if probs is not None else None
        onnx_top1.append(name)
        agree += name == classes[expected]
    truth = [emb.labels[i] for i in queries]
    return {
        "status": "done", "command": " ".join(cmd), "queries": len(queries), "agree": agree,
        "agreement": round(agree / len(queries), 6), "onnx_classes": list(predictor.classes),
        "numpy_top1_accuracy": round(float(np.mean([classes[j] == t for j, t in zip(numpy_top1, truth)])), 4),
    }  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="work folder (datasets, runs, the ONNX file, results.json)")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--query", type=int, default=10, help="queries per class (the smallest class has 16 images)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--finetune-epochs", type=int, default=3, help="0: skip the fine-tuned classifier")
    ap.add_argument("--skip-onnx", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = merged_stamps(out)
    embedder = Embedder.load(BACKBONE)
    paths = sorted(str(p) for p in data.rglob("*.jpg"))
    emb = embed_images(embedder, paths, root=data)
    classes = sorted(set(emb.labels))
    codes = [classes.index(lab) for lab in emb.labels]
    counts = {c: codes.count(i) for i, c in enumerate(classes)}
    print(f"{len(paths)} stamp photos, {len(classes)} classes: {counts}", flush=True)
    results: dict = {"backbone": BACKBONE, "images": len(paths), "classes": counts, "query": args.query,
                     "episodes": args.episodes, "seed": args.seed}  # fmt: skip
    results["episodes_table"] = episodes_table(emb.vectors, codes, len(classes), args.episodes, args.query, args.seed)
    for row in results["episodes_table"]:
        print(f"  5-way {row['k_shot']}-shot {row['method']:>9}: {row['accuracy']:.4f} \u00b1 {row['ci95']:.4f}")
    split = np.array([Path(p).relative_to(data).parts[0] for p in emb.paths])
    tr, va = split == "train", split == "val"
    _, protos = compute_prototypes(emb.vectors[tr], [lab for lab, t in zip(emb.labels, tr) if t], classes)
    pred = np.argmax(cosine_scores(emb.vectors[va], protos), axis=1)
    truth = np.array(codes)[va]
    results["whole_data_prototypes_val_top1"] = round(float(np.mean(pred == truth)), 4)
    print(f"  11-way val top-1, prototypes of all train/ images: {results['whole_data_prototypes_val_top1']:.4f}")
    if args.finetune_epochs:
        results["finetuned"] = finetune(data, out, args.finetune_epochs)
        print(f"  11-way val top-1, fine-tuned classifier: {results['finetuned']}", flush=True)
    if not args.skip_onnx:
        results["onnx_prototypes"] = onnx_check(emb, data, out, embedder)
        print(f"  prototype ONNX vs numpy top-1: {results['onnx_prototypes']}")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
