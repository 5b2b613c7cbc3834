"""Evaluation (eval_utils/eval.py's library): scores + true classes -> figures, a report, a JSON, a plot.

Dataset mode runs a Predictor over DATA_DIR/<split>/<class>/; end-to-end mode reads inference.py's
prediction records (`{"img_path": p, "0_0": [[score, label], ...]}`) and matches them to ground truth
`{image_path: label}` by normalized path. Both give a result dict (classes, y_true, an N x C score matrix,
problems) that `classification_report` turns into figures: precision, recall, F1 and the confusion
matrix from scikit-learn (labels=range(C), zero_division=0), top-K from `topk_accuracy` (edgecls' ranking
rule, which scikit-learn's top_k_accuracy_score does not follow).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path

import numpy as np

from edgecls.atomic import atomic_savefig, atomic_write_text
from edgecls.data.images import has_image_extension
from edgecls.data.layout import class_folders, iter_files
from edgecls.errors import UserError

LIST_LIMIT = 20  # missing / unreadable images listed in the text report and warnings (all go to the JSON)


# ------------------------------------------------------------------------ dataset mode
def check_save_dir(save_dir: str, what: str = "save_dir") -> None:
    if Path(save_dir).exists() and not Path(save_dir).is_dir():
        raise UserError(f"`{what}` {save_dir}: is a file; give a folder for the results")


def split_folder(data_dir: str, split: str) -> Path:
    """DATA_DIR/<split>, or DATA_DIR itself when it is the split folder."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"`data_dir` {root}: no such folder")
    if (root / split).is_dir():
        return root / split
    if root.name == split:
        return root
    raise UserError(
        f"`data_dir` {root}: no {split}/ folder; expected {root}/{split}/<class>/<images> (or pass `split`)"
    )


def has_split(data_dir: str, split: str) -> bool:
    """Does the dataset (a folder or a shard folder) hold this split, e.g. a test/ beside train/ and val/?"""
    from edgecls.data.shards.index import load_index, shard_index_path

    root = Path(data_dir)
    if shard_index_path(root) is not None:
        return split in load_index(root)["splits"]
    return (root / split).is_dir() and bool(class_folders(root / split))


def dataset_samples(folder: Path, classes: list[str]) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """(path, class id) for every image under folder/<class>/, plus (path, reason) for skipped files."""
    unknown = [c for c in class_folders(folder) if c not in classes]
    if unknown:
        raise UserError(
            f"{folder}: class folder(s) {unknown} are not classes of the model ({classes}); "
            "pass the matching `class_id_path` or remove them"
        )
    samples, skipped = [], []
    for label, name in enumerate(classes):
        for path in iter_files(folder / name):
            if has_image_extension(path):
                samples.append((path, label))
            else:
                skipped.append((path, "unsupported file extension"))
    if not samples:
        raise UserError(f"{folder}: no images in any class folder ({', '.join(classes)})")
    return samples, skipped


def run_dataset_mode(
    predictor, data_dir: str, split: str = "val", batch_size: int = 32, workers: int | None = None, progress=False
) -> dict:
    """Run `predictor` over every image of DATA_DIR/<split>/<class>/, or of a shard folder's split (edgecls data
    pack); unreadable files are listed, not fatal."""
    from edgecls.data.shards.index import split_for_model
    from edgecls.progress import progress_bar

    shard_split = split_for_model(data_dir, split, predictor.classes)  # None: an image folder
    if shard_split is not None:
        folder, samples, skipped = shard_split
    else:
        folder = split_folder(data_dir, split)
        samples, skipped = dataset_samples(folder, predictor.classes)
    labels = {str(path): label for path, label in samples}  # a shard Member is named by str()
    sources = {str(path): path for path, _ in samples}
    y_true, rows, kept_paths = [], [], []
    unreadable = list(skipped)
    with progress_bar(len(samples), progress, desc="evaluate") as bar:
        for path, probs, error in predictor.predict_paths(
            [p for p, _ in samples], batch_size=batch_size, workers=workers
        ):
            bar.update(1)
            if error:
                unreadable.append((path, error))
                continue
            y_true.append(labels[str(path)])
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
        "images": [sources[p] for p in kept_paths],  # what load_rgb opens (a file path or a shard Member)
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
        raise UserError(f"`preds` {root}: no such folder (expected inference.py's output folder of JSON files)")
    files = sorted(Path(p) for p in iter_files(root) if p.endswith(".json"))
    if not files:
        raise UserError(f"`preds` {root}: no .json prediction files in this folder")
    out: dict[str, tuple[str, list, str]] = {}
    for f in files:
        data = read_json(f, "`preds`")
        for rec in data if isinstance(data, list) else [data]:
            ranked = check_record(rec, f)
            key = normalize_path(rec["img_path"])
            if key in out:
                raise UserError(f"`preds`: {rec['img_path']} is predicted twice ({out[key][2]} and {f})")
            out[key] = (str(rec["img_path"]), ranked, str(f))
    return out


def check_record(rec, file: Path) -> list:
    """The [[score, label], ...] list of one prediction record, or a one-line error naming the file."""
    if not isinstance(rec, dict) or "img_path" not in rec or "0_0" not in rec:
        raise UserError(f'`preds` {file}: expected {{"img_path": ..., "0_0": [[score, label], ...]}}')
    ranked = rec["0_0"]
    pairs = isinstance(ranked, list) and all(isinstance(e, list) and len(e) == 2 and _is_number(e[0]) for e in ranked)
    if not ranked or not pairs:
        raise UserError(f'`preds` {file}: "0_0" must be a non-empty list of [score, label] pairs')
    return ranked


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_ground_truth(path: str) -> dict[str, tuple[str, object]]:
    """normalized path -> (image path as written, label) from a {image_path: label (name or id)} JSON file."""
    data = read_json(Path(path), "`gts`")
    if not isinstance(data, dict) or not data:
        raise UserError(f'`gts` {path}: expected a non-empty JSON object {{"image_path": label, ...}}')
    out = {}
    for img, label in data.items():
        if not isinstance(label, (str, int)) or isinstance(label, bool):
            raise UserError(f"`gts` {path}: label of {img} is {label!r}; use a class name or id")
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
            "the labels mix class ids and class names; pass `class_id_path` class_id.json "
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
        f"(classes: {classes[:10]}{' ...' if len(classes) > 10 else ''}); check `class_id_path`"
    )


def run_end_to_end_mode(preds: str, gts: str, class_id_path: str | None = None) -> dict:
    """Match the prediction records under `preds` to the ground truth in `gts`; a class a record does not
    list scores -inf for that image."""
    from edgecls.data.classmap import read_class_map

    records, truth = read_predictions(preds), read_ground_truth(gts)
    if class_id_path:
        classes = read_class_map(class_id_path)
    else:
        listed = [lab for _, ranked, _ in records.values() for _, lab in ranked]
        classes = infer_classes([lab for _, lab in truth.values()] + listed)
    matched = [k for k in truth if k in records]
    if not matched:
        raise UserError(
            f"no image in `preds` {preds} matches an image in `gts` {gts} (paths are compared "
            f"absolute from the current folder, e.g. {next(iter(truth.values()))[0]!r} vs "
            f"{next(iter(records.values()))[0]!r}); run eval from the folder inference ran in"
        )
    y_true, scores = _score_matrix(matched, records, truth, classes, gts)
    return {
        "mode": "end-to-end",
        "source": {"preds": str(preds), "gts": str(gts)},
        "classes": classes,
        "y_true": y_true,
        "scores": scores,
        "paths": [truth[k][0] for k in matched],
        "images": [truth[k][0] for k in matched],
        "problems": {
            "missing_prediction": [truth[k][0] for k in truth if k not in records],
            "missing_ground_truth": [records[k][0] for k in records if k not in truth],
        },
        "labels_per_image": int(np.isfinite(scores).sum(axis=1).min()),
    }


def _score_matrix(matched, records, truth, classes, gts) -> tuple[np.ndarray, np.ndarray]:
    index = {c: i for i, c in enumerate(classes)}
    scores = np.full((len(matched), len(classes)), -np.inf)
    y_true = np.zeros(len(matched), np.int64)
    for row, key in enumerate(matched):
        y_true[row] = label_index(truth[key][1], classes, index, f"`gts` {gts} ({truth[key][0]})")
        _, ranked, file = records[key]
        for score, label in ranked:
            col = label_index(label, classes, index, f"`preds` {file}")
            scores[row, col] = max(scores[row, col], float(score))
    return y_true, scores


def capped_topk(topk: int, num_classes: int) -> tuple[int, str | None]:
    """(K, what was capped or None): `topk` kept below the class count, since top-K over every class is always
    1.0 and says nothing. The one rule for train's epoch lines, final table and curves, and for eval; K 1 means
    top-1 only."""
    k = max(1, min(int(topk), num_classes - 1))
    if k == topk:
        return k, None
    shown = "top-1 only" if k == 1 else f"top-{k}"
    return k, f"with {num_classes} classes top-{topk} would always be 1.0; reporting {shown}"


def reported_topk(topk: int, result: dict) -> tuple[int, str | None]:
    """(K to report, a warning or None): `topk`, capped below the class count (capped_topk) and at the fewest
    labels a prediction file lists (beyond that, top-K would equal top-(K-1))."""
    k, note = capped_topk(topk, len(result["classes"]))
    note = note and f"`topk` {topk}: {note}"
    listed = result.get("labels_per_image")
    if listed is None or listed >= k:
        return k, note
    shown = "top-1 only" if listed == 1 else f"top-1..top-{listed}"
    return listed, (
        f"`topk` {topk}: some prediction files in `preds` list only {listed} label(s); reporting "
        f"{shown} (rerun inference.py with `topk` {k} for more)"
    )


# ---------------------------------------------------------------------------- metrics
def _ids(values, num_classes: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{what} holds ids outside 0..{num_classes - 1}")
    return arr


def topk_accuracy(y_true, scores, k: int) -> float:
    """Fraction of rows whose true class is among the k highest scores.

    Ranking is the one used everywhere in edgecls (Predictor.topk, prediction JSON): highest score first,
    exact ties to the lower class id (sklearn's top_k_accuracy_score breaks exact ties the other way). A class
    whose score is -inf (not listed in an end-to-end prediction file) never counts as a hit.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = _ids(y_true, s.shape[1], "y_true")
    if t.size == 0:
        return 0.0
    k = max(1, min(int(k), s.shape[1]))
    ranked = np.argsort(-s, axis=1, kind="stable")[:, :k]
    hit = (ranked == t[:, None]).any(axis=1)
    hit &= np.isfinite(s[np.arange(len(t)), t])
    return float(hit.mean())


def classification_report(y_true, scores, num_classes: int, topk: int = 5) -> dict:
    """All eval figures from true ids and an N x C score matrix (top-1: each row's highest score, exact ties
    to the lower class id). {"num_images", "num_classes", "accuracy", "topk": {"top1": ..}, "per_class",
    "macro", "micro", "weighted", "confusion_matrix"}; every figure is 0 without images."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != num_classes:
        raise ValueError(f"scores must be N x {num_classes}, got {s.shape}")
    t = _ids(y_true, num_classes, "y_true")
    if len(t) != len(s):
        raise ValueError(f"{len(t)} labels for {len(s)} score rows")
    pred = np.argmax(s, axis=1).astype(np.int64) if len(s) else np.zeros(0, np.int64)
    report = {
        "num_images": int(len(t)),
        "num_classes": int(num_classes),
        "accuracy": float((pred == t).mean()) if len(t) else 0.0,
        "topk": {f"top{k}": topk_accuracy(t, s, k) for k in range(1, max(1, min(int(topk), num_classes)) + 1)},
    }
    report.update(_sklearn_figures(t, pred, num_classes))
    return report


def _sklearn_figures(t: np.ndarray, pred: np.ndarray, num_classes: int) -> dict:
    """Per-class and averaged precision / recall / F1 / support and the confusion matrix (scikit-learn)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = list(range(num_classes))
    if not len(t):  # scikit-learn refuses empty input; every figure is 0
        zeros, average = [0.0] * num_classes, {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
        per_class = {"precision": zeros, "recall": zeros, "f1": zeros, "support": [0] * num_classes}
        cm = [[0] * num_classes for _ in labels]
        return {
            "per_class": per_class,
            **{a: dict(average) for a in ("macro", "micro", "weighted")},
            "confusion_matrix": cm,
        }
    p, r, f, support = precision_recall_fscore_support(t, pred, labels=labels, zero_division=0)
    out = {"per_class": {"precision": p.tolist(), "recall": r.tolist(), "f1": f.tolist(), "support": support.tolist()}}
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(t, pred, labels=labels, average=avg, zero_division=0)
        out[avg] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(len(t))}
    out["confusion_matrix"] = confusion_matrix(t, pred, labels=labels).tolist()
    return out


# --------------------------------------------------------------------------- reporting
def format_report(result: dict, report: dict) -> str:
    """The block eval_results.txt gets (and eval prints): figures, per-class table, confusion matrix."""
    classes = result["classes"]
    when = _dt.datetime.now().isoformat(timespec="seconds")
    lines = [
        f"=== edgecls eval {when} ({result['mode']}) ===",
        ", ".join(f"{k}={v}" for k, v in result["source"].items()),
        f"images evaluated: {report['num_images']}   classes: {report['num_classes']}",
        *_problem_lines(result["problems"]),
        "  ".join(f"{k}: {v:.4f}" for k, v in report["topk"].items()),
        f"{'average':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}",
    ]
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
    lines += _matrix_lines(report["confusion_matrix"], classes, width)
    return "\n".join(lines) + "\n\n"


def _problem_lines(problems: dict) -> list[str]:
    lines = []
    for name, items in problems.items():
        if items:
            lines.append(f"{name.replace('_', ' ')}: {len(items)}")
            for item in items[:LIST_LIMIT]:
                lines.append(f"  {item['path'] + ': ' + item['reason'] if isinstance(item, dict) else item}")
            if len(items) > LIST_LIMIT:
                lines.append(f"  ... {len(items) - LIST_LIMIT} more in eval_results.json")
    return lines


NAME_WIDTH = 8  # class names up to this long head the text matrix's columns; longer ones: class ids


def _matrix_lines(cm: list[list[int]], classes: list[str], width: int) -> list[str]:
    """Rows and columns named alike: by class name when every name is short, else by class id (each row then
    starts with its id and name, the legend of the columns)."""
    named = max(len(c) for c in classes) <= NAME_WIDTH
    heads = classes if named else [str(i) for i in range(len(classes))]
    cw = max(5, max(len(str(v)) for row in cm for v in row) + 1, max(len(h) for h in heads) + 1)
    legend = "" if named else "; columns are class ids, each row starts with its id"
    lines = [f"confusion matrix (rows: true, columns: predicted{legend}):"]
    lines.append(" " * width + "".join(f"{h:>{cw}}" for h in heads))
    for i, row in enumerate(cm):
        label = classes[i] if named else f"{i} {classes[i]}"
        lines.append(f"{label:<{width}}"[:width] + "".join(f"{v:>{cw}}" for v in row))
    return lines


# ----------------------------------------------------------------------------- figures
MISCLASSIFIED_LIMIT = 25  # images in the misclassified grid: the most confident mistakes
GRID_COLUMNS = 5
THUMBNAIL = 160  # pixels, the longer side of an image in the grid


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def short_label(name: str, limit: int = 14) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def figure_title(model: str, split: str, report: dict) -> str:
    """'<model> · <split> · top-1 0.9667 (360 images)': the head line of every evaluation figure."""
    return f"{model} \u00b7 {split} \u00b7 top-1 {report['accuracy']:.4f} ({report['num_images']} images)"


def eval_title(result: dict, report: dict) -> str:
    """figure_title for eval's two modes: the model and the split folder, or the prediction folder."""
    src = result["source"]
    if result["mode"] == "dataset":
        name = Path(src["model"]).name
        model = f"{src['backbone']} ({name})" if src.get("backbone") else name
        return figure_title(model, Path(str(src["data"]).split("-*.tar")[0]).name, report)
    return figure_title(f"predictions {Path(src['preds']).name}", f"vs {Path(src['gts']).name}", report)


def confusion_figsize(num_classes: int) -> tuple[float, float]:
    """Inches (100 pixels each); halves, so the PNG's pixel size is exact."""
    side = min(4 + 0.5 * num_classes, 30)
    return side + 1.0, side


def plot_confusion_matrix(
    cm: list[list[int]], classes: list[str], path: Path, title: str = "", normalize: bool = False
) -> None:
    """Counts, or each row divided by its true-class count (normalize); short names stay horizontal."""
    plt = pyplot()
    cm = np.asarray(cm)
    n = len(classes)
    rows = cm.sum(axis=1, keepdims=True)
    shown = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0) if normalize else cm
    fig, ax = plt.subplots(figsize=confusion_figsize(n), layout="constrained")
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class" if normalize else "images")
    labels = [short_label(c) for c in classes]
    turn = max(len(c) for c in labels) > 3
    ax.set_xticks(range(n), labels, rotation=45 if turn else 0, ha="right" if turn else "center",
                  rotation_mode="anchor")  # fmt: skip
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    view = "row-normalised (each true class sums to 1)" if normalize else "counts"
    ax.set_title(f"{title}\nconfusion matrix, {view}" if title else f"confusion matrix, {view}", fontsize=10)
    if n <= 30:
        top = shown.max() if shown.size else 0
        for i in range(n):
            for j in range(n):
                text = f"{shown[i, j]:.2f}" if normalize else str(cm[i, j])
                color = "white" if shown[i, j] > top / 2 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
    atomic_savefig(fig, path)


def per_class_figsize(num_classes: int) -> tuple[float, float]:
    return 8.0, min(2.5 + 0.5 * num_classes, 60)


def plot_per_class(report: dict, classes: list[str], path: Path, title: str = "") -> None:
    """Precision, recall and F1 of every class as grouped horizontal bars (names stay readable)."""
    plt = pyplot()
    pc, n = report["per_class"], len(classes)
    fig, ax = plt.subplots(figsize=per_class_figsize(n), layout="constrained")
    y = np.arange(n)
    for offset, key in zip((-0.27, 0.0, 0.27), ("precision", "recall", "f1")):
        ax.barh(y + offset, pc[key], height=0.27, label=key)
    ax.set_yticks(y, [f"{short_label(c)} ({s})" for c, s in zip(classes, pc["support"])])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (class support in brackets)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=3)
    head = f"per-class precision, recall, F1 (macro F1 {report['macro']['f1']:.4f})"
    ax.set_title(f"{title}\n{head}" if title else head, fontsize=10)
    atomic_savefig(fig, path)


def misclassified(result: dict, limit: int = MISCLASSIFIED_LIMIT) -> tuple[list[int], int]:
    """(rows of the wrongly predicted images, most confident first, at most `limit`; how many are wrong)."""
    scores, truth = np.asarray(result["scores"], np.float64), np.asarray(result["y_true"])
    if not len(scores):
        return [], 0
    pred = np.argmax(scores, axis=1)
    top = scores[np.arange(len(pred)), pred]
    wrong = np.flatnonzero(pred != truth)
    order = wrong[np.argsort(-top[wrong], kind="stable")]
    return order[:limit].tolist(), len(wrong)


def misclassified_figsize(shown: int) -> tuple[float, float]:
    rows = max(1, math.ceil(shown / GRID_COLUMNS))
    return 2.0 * GRID_COLUMNS, 2.5 * rows + 0.5


def _thumbnail(source) -> np.ndarray | None:
    from PIL import Image

    from edgecls.data.images import load_rgb

    try:
        img = load_rgb(source)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombWarning, Image.DecompressionBombError):
        return None
    img.thumbnail((THUMBNAIL, THUMBNAIL))
    return np.asarray(img)


def plot_misclassified(result: dict, path: Path, title: str = "", limit: int = MISCLASSIFIED_LIMIT) -> None:
    """A grid of the most confident mistakes: each image with its true class, predicted class and score."""
    plt = pyplot()
    rows, wrong = misclassified(result, limit)
    classes, scores = result["classes"], np.asarray(result["scores"], np.float64)
    w, h = misclassified_figsize(len(rows))
    fig, axes = plt.subplots(max(1, math.ceil(len(rows) / GRID_COLUMNS)), GRID_COLUMNS, figsize=(w, h),
                             layout="constrained", squeeze=False)  # fmt: skip
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, rows):
        thumb = _thumbnail(result["images"][i])
        if thumb is None:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(thumb, interpolation="nearest")  # small images drawn large, pixels kept sharp
        p = int(np.argmax(scores[i]))
        truth = short_label(classes[int(result["y_true"][i])], 16)
        ax.set_title(f"true {truth}\npred {short_label(classes[p], 16)} {scores[i, p]:.2f}", fontsize=9,
                     color="tab:red")  # fmt: skip
    if not rows:
        axes[0, GRID_COLUMNS // 2].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    head = f"{len(rows)} of {wrong} misclassified, most confident first"
    fig.suptitle(f"{title}\n{head}" if title else head, fontsize=10)
    atomic_savefig(fig, path)


# ----------------------------------------------------------------------------- outputs
def prediction_rows(result: dict) -> list[dict]:
    """Per image: path, true class, predicted class and its score: the top-1 of inference.py's record for the
    same image (same softmax scores, ties to the lower class id)."""
    classes, scores = result["classes"], np.asarray(result["scores"])
    pred = np.argmax(scores, axis=1) if len(scores) else np.zeros(0, np.int64)
    return [
        {"path": str(p), "true": classes[int(t)], "predicted": classes[int(k)], "score": float(scores[i, k])}
        for i, (p, t, k) in enumerate(zip(result["paths"], result["y_true"], pred))
    ]


def results_payload(result: dict, report: dict) -> dict:
    """eval_results.json: the source, classes, every figure, the problems and the per-image predictions."""
    return {
        "mode": result["mode"],
        "source": result["source"],
        "classes": result["classes"],
        **report,
        "problems": result["problems"],
        "predictions": prediction_rows(result),
    }


def default_save_dir(root: str | Path = Path("runs") / "eval") -> Path:
    """A new folder runs/eval/<date-time> (like training's snapshots/<date-time>); -2, -3 ... when taken."""
    from edgecls.classify import claim_run_folder  # the one exclusive-mkdir rule, shared with inference

    return claim_run_folder(_dt.datetime.now().strftime("%Y%m%d-%H%M%S"), base=root)


def write_outputs(
    result: dict, report: dict, save_dir: str | Path, misclassified_dir: str | Path | None = None
) -> tuple[Path, str, list[Path]]:
    """Append the text report to eval_results.txt; write eval_results.json, confusion_matrix.png (counts),
    confusion_matrix_normalized.png, per_class.png and, with misclassified_dir, its misclassified.png.
    Returns (the folder, the text, the files written)."""
    out = Path(save_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = format_report(result, report)
    with open(out / "eval_results.txt", "a", encoding="utf-8") as fh:
        fh.write(text)
    atomic_write_text(json.dumps(results_payload(result, report), indent=2) + "\n", out / "eval_results.json")
    title, classes = eval_title(result, report), result["classes"]
    files = [out / "eval_results.txt", out / "eval_results.json"]
    files += [out / "confusion_matrix.png", out / "confusion_matrix_normalized.png", out / "per_class.png"]
    plot_confusion_matrix(report["confusion_matrix"], classes, files[2], title)
    plot_confusion_matrix(report["confusion_matrix"], classes, files[3], title, normalize=True)
    plot_per_class(report, classes, files[4], title)
    if misclassified_dir is not None:
        Path(misclassified_dir).mkdir(parents=True, exist_ok=True)
        files.append(Path(misclassified_dir) / "misclassified.png")
        plot_misclassified(result, files[-1], title)
    return out, text, files


def write_split_outputs(result: dict, report: dict, folder: Path, split: str, title: str) -> list[Path]:
    """The end of training's files for one split, in the run folder: SPLIT_results.json (eval_results.json's
    content), SPLIT_confusion_matrix.png (row-normalised), SPLIT_per_class.png, SPLIT_misclassified.png."""
    files = [folder / f"{split}_{name}" for name in ("results.json", "confusion_matrix.png", "per_class.png",
                                                     "misclassified.png")]  # fmt: skip
    atomic_write_text(json.dumps(results_payload(result, report), indent=2) + "\n", files[0])
    plot_confusion_matrix(report["confusion_matrix"], result["classes"], files[1], title, normalize=True)
    plot_per_class(report, result["classes"], files[2], title)
    plot_misclassified(result, files[3], title)
    return files
