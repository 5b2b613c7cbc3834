"""`eval_utils/eval.py`: top-K accuracy, precision/recall/F1, confusion matrix.

Dataset mode: run a checkpoint or ONNX file over DATA_DIR/val/<class>/ (or --split).
End-to-end mode: compare a folder of prediction JSONs (inference.py's output,
`{"img_path": p, "0_0": [[score, label], ...]}`) with ground truth `{image_path: label}`.
Both append a block to eval_results.txt and write eval_results.json and confusion_matrix.png.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from edgecls.atomic import atomic_savefig, atomic_write_text
from edgecls.cli.common import (
    DefaultsHelpFormatter,
    add_config_flag,
    parse_size,
    parse_with_config,
    require_at_least,
    run_cli,
)
from edgecls.data.images import has_image_extension, is_hidden
from edgecls.data.presets import PRESETS, RESIZE_POLICIES
from edgecls.errors import UserError

LIST_LIMIT = 20  # missing / unreadable images listed in the text report (all of them go to the JSON)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="eval_utils/eval.py",
        description="Evaluate a model on a dataset split (--snapshot/--onnx + --data-dir), or prediction files "
        "against ground truth (--preds + --gts).",
        formatter_class=DefaultsHelpFormatter,
    )
    add_config_flag(p)
    g = p.add_argument_group("dataset mode")
    g.add_argument(
        "--snapshot", default=None, metavar="PTH", help="edgecls checkpoint, or a bare state_dict with --backbone"
    )
    g.add_argument("--onnx", default=None, metavar="ONNX", help="ONNX model (onnxruntime) instead of --snapshot")
    g.add_argument(
        "--data-dir",
        default=None,
        help="dataset folder holding the split (or the split folder itself), or a shard folder (edgecls data pack)",
    )
    g.add_argument("--split", default="val", help="subfolder of --data-dir to evaluate")
    g.add_argument(
        "--backbone", default=None, help="backbone for a bare state_dict (default: read from the checkpoint)"
    )
    g.add_argument("--model-def-path", default="./models/", help="folder of plugin .py files that register backbones")
    g.add_argument("--input-size", type=parse_size, default=None, metavar="HxW", help="override the stored input size")
    g.add_argument("--preprocess", default=None, choices=sorted(PRESETS), help="override the stored normalization")
    g.add_argument("--resize", default=None, choices=RESIZE_POLICIES, help="override the stored resize policy")

    g = p.add_argument_group("end-to-end mode")
    g.add_argument("--preds", default=None, metavar="FOLDER", help="folder of per-image prediction JSON files")
    g.add_argument("--gts", default=None, metavar="FILE.json", help="ground truth {image_path: label (name or id)}")

    g = p.add_argument_group("common")
    g.add_argument(
        "--class_id_path",
        "--class-id-path",
        dest="class_id_path",
        default=None,
        help='class map {"0": name, ...} (dataset mode: overrides the model\'s names; end-to-end: '
        "fixes the class list and order, default: the labels found, sorted)",
    )
    g.add_argument(
        "--topk",
        type=int,
        default=5,
        help="report top-1 .. top-K accuracy (end-to-end: at most the number of labels each prediction file lists)",
    )
    g.add_argument(
        "--save-dir",
        default=".",
        help="folder for eval_results.txt (appended), eval_results.json, confusion_matrix.png",
    )
    g.add_argument("--gpu", type=int, default=-1, help="CUDA device index; -1 for the CPU")
    g.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    g.add_argument("--workers", type=int, default=None, help="decode threads (default: min(4, CPU count))")
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="hide the progress bar (shown only when stderr is a terminal)",
    )
    return p


# ------------------------------------------------------------------------ dataset mode
def split_folder(data_dir: str, split: str) -> Path:
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"--data-dir {root}: no such folder")
    if (root / split).is_dir():
        return root / split
    if root.name == split:
        return root
    raise UserError(
        f"--data-dir {root}: no {split}/ folder; expected {root}/{split}/<class>/<images> (or pass --split)"
    )


def dataset_samples(folder: Path, classes: list[str]) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """(path, class id) for every image under folder/<class>/, plus (path, reason) for skipped files."""
    present = sorted(e.name for e in folder.iterdir() if e.is_dir() and not is_hidden(e.name))
    unknown = [c for c in present if c not in classes]
    if unknown:
        raise UserError(
            f"{folder}: class folder(s) {unknown} are not classes of the model ({classes}); "
            "pass the matching --class_id_path or remove them"
        )
    samples, skipped = [], []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(folder / name):
            dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
            for f in sorted(filenames):
                if is_hidden(f):
                    continue
                path = os.path.join(dirpath, f)
                if has_image_extension(f):
                    samples.append((path, label))
                else:
                    skipped.append((path, "unsupported file extension"))
    if not samples:
        raise UserError(f"{folder}: no images in any class folder ({', '.join(classes)})")
    return samples, skipped


def run_dataset_mode(args) -> dict:
    from edgecls.cli.inference import load_predictor, progress_bar
    from edgecls.data.shards.index import split_for_model

    predictor = load_predictor(args)
    shard_split = split_for_model(args.data_dir, args.split, predictor.classes)  # None: an image folder
    if shard_split is not None:
        folder, samples, skipped = shard_split
    else:
        folder = split_folder(args.data_dir, args.split)
        samples, skipped = dataset_samples(folder, predictor.classes)
    labels = {str(path): label for path, label in samples}  # a shard Member is named by str()
    y_true, rows, kept_paths = [], [], []
    unreadable = list(skipped)
    with progress_bar(len(samples), args.progress, desc="evaluate") as bar:
        for path, probs, error in predictor.predict_paths(
            [p for p, _ in samples], batch_size=args.batch_size, workers=args.workers
        ):
            bar.update(1)
            if error:
                unreadable.append((path, error))
                continue
            y_true.append(labels[path])
            rows.append(probs)
            kept_paths.append(path)
    scores = np.stack(rows) if rows else np.zeros((0, len(predictor.classes)))
    return {
        "mode": "dataset",
        "source": {
            "model": predictor.path,
            "kind": predictor.kind,
            "backbone": predictor.backbone,
            "data": str(folder),
        },
        "classes": predictor.classes,
        "y_true": np.asarray(y_true, np.int64),
        "scores": scores,
        "paths": kept_paths,
        "problems": {"unreadable": [{"path": p, "reason": r} for p, r in unreadable]},
    }


# --------------------------------------------------------------------- end-to-end mode
def normalize_path(path: str) -> str:
    """The key images are matched by: absolute (from the current folder), normalized, '/' separators."""
    return os.path.normcase(os.path.abspath(os.path.normpath(str(path).replace("\\", "/"))))


def read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path}: not valid JSON ({exc})") from None


def read_predictions(folder: str) -> dict[str, tuple[str, list, str]]:
    """normalized path -> (img_path as written, [[score, label], ...], file) for every *.json under folder."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--preds {root}: no such folder (expected inference.py's output folder of JSON files)")
    files = sorted(f for f in root.rglob("*.json") if not is_hidden(f.name))
    if not files:
        raise UserError(f"--preds {root}: no .json prediction files in this folder")
    out: dict[str, tuple[str, list, str]] = {}
    for f in files:
        data = read_json(f, "--preds")
        records = data if isinstance(data, list) else [data]
        for rec in records:
            if not isinstance(rec, dict) or "img_path" not in rec or "0_0" not in rec:
                raise UserError(f'--preds {f}: expected {{"img_path": ..., "0_0": [[score, label], ...]}}')
            ranked = rec["0_0"]
            if (
                not isinstance(ranked, list)
                or not ranked
                or not all(isinstance(e, list) and len(e) == 2 and _is_number(e[0]) for e in ranked)
            ):
                raise UserError(f'--preds {f}: "0_0" must be a non-empty list of [score, label] pairs')
            key = normalize_path(rec["img_path"])
            if key in out:
                raise UserError(f"--preds: {rec['img_path']} is predicted twice ({out[key][2]} and {f})")
            out[key] = (str(rec["img_path"]), ranked, str(f))
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_ground_truth(path: str) -> dict[str, tuple[str, object]]:
    data = read_json(Path(path), "--gts")
    if not isinstance(data, dict) or not data:
        raise UserError(f'--gts {path}: expected a non-empty JSON object {{"image_path": label, ...}}')
    out = {}
    for img, label in data.items():
        if not isinstance(label, (str, int)) or isinstance(label, bool):
            raise UserError(f"--gts {path}: label of {img} is {label!r}; use a class name or id")
        out[normalize_path(img)] = (img, label)
    return out


def _as_id(label) -> int | None:
    if isinstance(label, int):
        return label
    if isinstance(label, str) and label.strip().isdigit():
        return int(label)
    return None


def infer_classes(labels: list) -> list[str]:
    """Without a class map: all ids -> '0'..'max'; otherwise the names found, sorted."""
    ids = [_as_id(v) for v in labels]
    if all(i is not None for i in ids):
        return [str(i) for i in range(max(ids) + 1)]
    if any(isinstance(v, int) for v in labels):
        raise UserError(
            "the labels mix class ids and class names; pass --class_id_path class_id.json "
            "so ids can be matched to names"
        )
    return sorted({str(v) for v in labels})


def label_index(label, classes: list[str], index: dict[str, int], where: str) -> int:
    if str(label) in index:
        return index[str(label)]
    i = _as_id(label)
    if i is not None and 0 <= i < len(classes):
        return i
    raise UserError(
        f"{where}: label {label!r} is neither a class name nor an id 0..{len(classes) - 1} "
        f"(classes: {classes[:10]}{' ...' if len(classes) > 10 else ''}); check --class_id_path"
    )


def run_end_to_end_mode(args) -> dict:
    from edgecls.data.classmap import read_class_map

    preds = read_predictions(args.preds)
    gts = read_ground_truth(args.gts)
    if args.class_id_path:
        classes = read_class_map(args.class_id_path)
    else:
        classes = infer_classes(
            [lab for _, lab in gts.values()] + [lab for _, ranked, _ in preds.values() for _, lab in ranked]
        )
    index = {c: i for i, c in enumerate(classes)}
    matched = [k for k in gts if k in preds]
    no_pred = [gts[k][0] for k in gts if k not in preds]
    no_gt = [preds[k][0] for k in preds if k not in gts]
    if not matched:
        raise UserError(
            f"no image in --preds {args.preds} matches an image in --gts {args.gts} (paths are compared "
            f"absolute from the current folder, e.g. {next(iter(gts.values()))[0]!r} vs "
            f"{next(iter(preds.values()))[0]!r}); run eval from the folder inference ran in"
        )
    scores = np.full((len(matched), len(classes)), -np.inf)
    y_true = np.zeros(len(matched), np.int64)
    for row, key in enumerate(matched):
        y_true[row] = label_index(gts[key][1], classes, index, f"--gts {args.gts} ({gts[key][0]})")
        _, ranked, file = preds[key]
        for score, label in ranked:
            col = label_index(label, classes, index, f"--preds {file}")
            scores[row, col] = max(scores[row, col], float(score))
    listed = int(np.isfinite(scores).sum(axis=1).min())
    for path in no_pred[:LIST_LIMIT]:
        print(f"warning: no prediction for ground-truth image {path}", file=sys.stderr)
    for path in no_gt[:LIST_LIMIT]:
        print(f"warning: no ground truth for predicted image {path}", file=sys.stderr)
    return {
        "mode": "end-to-end",
        "source": {"preds": str(args.preds), "gts": str(args.gts)},
        "classes": classes,
        "y_true": y_true,
        "scores": scores,
        "paths": [gts[k][0] for k in matched],
        "problems": {"missing_prediction": no_pred, "missing_ground_truth": no_gt},
        "labels_per_image": listed,
    }


def reported_topk(args, result: dict) -> int:
    """--topk, capped at the fewest labels a prediction file lists (beyond that, top-K would equal top-(K-1))."""
    k = min(args.topk, len(result["classes"]))
    listed = result.get("labels_per_image")
    if listed is None or listed >= k:
        return k
    shown = "top-1 only" if listed == 1 else f"top-1..top-{listed}"
    print(
        f"warning: --topk {args.topk}: some prediction files in --preds list only {listed} label(s); reporting "
        f"{shown} (rerun inference.py with --topk {k} for more)",
        file=sys.stderr,
    )
    return listed


# --------------------------------------------------------------------------- reporting
def format_report(result: dict, report: dict) -> str:
    classes = result["classes"]
    when = _dt.datetime.now().isoformat(timespec="seconds")
    src = ", ".join(f"{k}={v}" for k, v in result["source"].items())
    lines = [
        f"=== edgecls eval {when} ({result['mode']}) ===",
        src,
        f"images evaluated: {report['num_images']}   classes: {report['num_classes']}",
    ]
    for name, items in result["problems"].items():
        if items:
            lines.append(f"{name.replace('_', ' ')}: {len(items)}")
            for item in items[:LIST_LIMIT]:
                lines.append(f"  {item['path'] + ': ' + item['reason'] if isinstance(item, dict) else item}")
            if len(items) > LIST_LIMIT:
                lines.append(f"  ... {len(items) - LIST_LIMIT} more in eval_results.json")
    lines.append("  ".join(f"{k}: {v:.4f}" for k, v in report["topk"].items()))
    lines.append(f"{'average':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    for avg in ("macro", "micro", "weighted"):
        a = report[avg]
        lines.append(f"{avg:<12}{a['precision']:>10.4f}{a['recall']:>10.4f}{a['f1']:>10.4f}{a['support']:>9}")
    width = max(12, max(len(c) for c in classes) + 2)
    lines.append(f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    pc = report["per_class"]
    for i, name in enumerate(classes):
        lines.append(
            f"{name:<{width}}{pc['precision'][i]:>10.4f}{pc['recall'][i]:>10.4f}{pc['f1'][i]:>10.4f}"
            f"{pc['support'][i]:>9}"
        )
    lines.append("confusion matrix (rows: true, columns: predicted):")
    cw = max(5, max(len(str(v)) for row in report["confusion_matrix"] for v in row) + 1)
    lines.append(" " * width + "".join(f"{i:>{cw}}" for i in range(len(classes))))
    for i, row in enumerate(report["confusion_matrix"]):
        lines.append(f"{str(i) + ' ' + classes[i]:<{width}}"[:width] + "".join(f"{v:>{cw}}" for v in row))
    return "\n".join(lines) + "\n\n"


def plot_confusion_matrix(cm: list[list[int]], classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    n = len(classes)
    size = min(4 + 0.45 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), classes, rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    if n <= 30:
        top = cm.max() if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if cm[i, j] > top / 2 else "black",
                )
    fig.tight_layout()
    atomic_savefig(fig, path)


def write_outputs(result: dict, report: dict, save_dir: str) -> tuple[Path, str]:
    out = Path(save_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = format_report(result, report)
    with open(out / "eval_results.txt", "a", encoding="utf-8") as fh:
        fh.write(text)
    payload = {
        "mode": result["mode"],
        "source": result["source"],
        "classes": result["classes"],
        **report,
        "problems": result["problems"],
    }
    atomic_write_text(json.dumps(payload, indent=2) + "\n", out / "eval_results.json")
    plot_confusion_matrix(report["confusion_matrix"], result["classes"], out / "confusion_matrix.png")
    return out, text


def main(argv: list[str] | None = None) -> int:
    from edgecls.metrics import classification_report

    args = parse_with_config(get_args_parser(), argv)
    require_at_least(args, {"topk": 1})
    if Path(args.save_dir).exists() and not Path(args.save_dir).is_dir():
        raise UserError(f"--save-dir {args.save_dir}: is a file; give a folder for the results")
    e2e = bool(args.preds or args.gts)
    dataset = bool(args.snapshot or args.onnx or args.data_dir)
    if e2e and dataset:
        raise UserError("choose one mode: --snapshot/--onnx with --data-dir, or --preds with --gts")
    if e2e:
        if not (args.preds and args.gts):
            raise UserError("end-to-end mode needs both --preds FOLDER and --gts FILE.json")
        result = run_end_to_end_mode(args)
    elif dataset:
        if not args.data_dir:
            raise UserError("dataset mode needs --data-dir DATASET (its val/ split is evaluated)")
        result = run_dataset_mode(args)
    else:
        raise UserError("nothing to evaluate: give --snapshot/--onnx with --data-dir, or --preds with --gts")
    report = classification_report(
        result["y_true"], result["scores"], len(result["classes"]), topk=reported_topk(args, result)
    )
    if report["num_images"] == 0:
        raise UserError("no image could be evaluated; see the unreadable files listed above")
    out, text = write_outputs(result, report, args.save_dir)
    print(text, end="")
    print(f"appended {out / 'eval_results.txt'}; wrote {out / 'eval_results.json'}, {out / 'confusion_matrix.png'}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
