"""Classification metrics in numpy, with scikit-learn's definitions (zero_division=0).

Every function takes integer class ids 0..C-1 and an explicit class count, so classes that
never occur in the ground truth or the predictions still get a row (like sklearn with
`labels=range(C)`). tests/test_metrics.py checks each figure against scikit-learn.
"""

from __future__ import annotations

import numpy as np


def _ids(values, num_classes: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{what} holds ids outside 0..{num_classes - 1}")
    return arr


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """C x C counts; row = true class, column = predicted class."""
    t = _ids(y_true, num_classes, "y_true")
    p = _ids(y_pred, num_classes, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} entries, y_pred {p.size}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def topk_accuracy(y_true, scores, k: int) -> float:
    """Fraction of rows whose true class is among the k highest scores.

    Ranking is the one used everywhere in edgecls (Predictor.topk, prediction JSON):
    highest score first, exact ties to the lower class id. (sklearn's top_k_accuracy_score
    breaks exact ties the other way; with real scores ties do not occur.) A class whose
    score is -inf (not listed in an end-to-end prediction file) never counts as a hit.
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


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def precision_recall_f1(cm: np.ndarray) -> dict:
    """Per-class and averaged precision, recall, F1 and support from a confusion matrix.

    Returns {"per_class": {"precision", "recall", "f1", "support"} (lists, index = class id),
    "macro": {...}, "micro": {...}, "weighted": {...}} with sklearn's zero_division=0 rules:
    F1 = 2TP / (2TP + FP + FN), 0 where that denominator is 0.
    """
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    fp, fn = predicted - tp, support - tp
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)

    total_support = support.sum()
    weights = support / total_support if total_support else np.zeros_like(support)
    mp = float(_safe_div(tp.sum(), predicted.sum()))
    mr = float(_safe_div(tp.sum(), support.sum()))
    mf = float(_safe_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum()))
    n = len(tp)
    return {
        "per_class": {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": support.astype(np.int64).tolist(),
        },
        "macro": {
            "precision": float(precision.sum() / n),
            "recall": float(recall.sum() / n),
            "f1": float(f1.sum() / n),
            "support": int(total_support),
        },
        "micro": {"precision": mp, "recall": mr, "f1": mf, "support": int(total_support)},
        "weighted": {
            "precision": float((precision * weights).sum()),
            "recall": float((recall * weights).sum()),
            "f1": float((f1 * weights).sum()),
            "support": int(total_support),
        },
    }


def classification_report(y_true, scores, num_classes: int, topk: int = 5) -> dict:
    """All eval figures from true ids and an N x C score matrix (top-1 = argmax of each row).

    Returns {"num_images", "num_classes", "topk": {"top1": .., "top2": .., ...}, "accuracy",
    "per_class", "macro", "micro", "weighted", "confusion_matrix"}.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != num_classes:
        raise ValueError(f"scores must be N x {num_classes}, got {s.shape}")
    t = _ids(y_true, num_classes, "y_true")
    if len(t) != len(s):
        raise ValueError(f"{len(t)} labels for {len(s)} score rows")
    pred = top1_ids(s)
    cm = confusion_matrix(t, pred, num_classes)
    k_max = max(1, min(int(topk), num_classes))
    report = {
        "num_images": int(len(t)),
        "num_classes": int(num_classes),
        "accuracy": float((pred == t).mean()) if len(t) else 0.0,
        "topk": {f"top{k}": topk_accuracy(t, s, k) for k in range(1, k_max + 1)},
    }
    report.update(precision_recall_f1(cm))
    report["confusion_matrix"] = cm.tolist()
    return report


def top1_ids(scores) -> np.ndarray:
    """Index of each row's highest score, exact ties to the lower class id."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.argmax(s, axis=1).astype(np.int64)
