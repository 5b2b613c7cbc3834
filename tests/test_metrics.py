"""edgecls.evaluation's figures against scikit-learn on real classifier outputs (sklearn digits): the figures
come from scikit-learn, the top-K from edgecls' own ranking rule (ties to the lower class id, -inf never a hit)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from edgecls import evaluation as metrics


@pytest.fixture(scope="module")
def digit_scores():
    """Probabilities of a real (deliberately weak) classifier on held-out digits: errors in many classes."""
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    clf = LogisticRegression(max_iter=40, C=1e-4).fit(x_tr[:150], y_tr[:150])
    return y_te, clf.predict_proba(x_te)


def assert_matches_sklearn(y_true, scores, num_classes):
    labels = list(range(num_classes))
    rep = metrics.classification_report(y_true, scores, num_classes, topk=5)
    y_pred = scores.argmax(axis=1)
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for k in range(1, 6):
        expected = skm.top_k_accuracy_score(y_true, scores, k=k, labels=labels)
        assert rep["topk"][f"top{k}"] == pytest.approx(expected), k
    assert rep["topk"]["top1"] == pytest.approx(rep["accuracy"])
    np.testing.assert_array_equal(rep["confusion_matrix"], skm.confusion_matrix(y_true, y_pred, labels=labels))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    np.testing.assert_allclose(rep["per_class"]["precision"], p)
    np.testing.assert_allclose(rep["per_class"]["recall"], r)
    np.testing.assert_allclose(rep["per_class"]["f1"], f)
    np.testing.assert_array_equal(rep["per_class"]["support"], s)
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        assert rep[avg]["precision"] == pytest.approx(p), avg
        assert rep[avg]["recall"] == pytest.approx(r), avg
        assert rep[avg]["f1"] == pytest.approx(f), avg
    return rep


def test_all_figures_match_sklearn(digit_scores):
    y, scores = digit_scores
    rep = assert_matches_sklearn(y, scores, 10)
    assert 0.3 < rep["accuracy"] < 0.99  # a weak model: the comparison covers real mistakes
    assert rep["topk"]["top5"] > rep["topk"]["top1"]


def test_class_absent_from_ground_truth(digit_scores):
    y, scores = digit_scores
    keep = y != 7
    rep = assert_matches_sklearn(y[keep], scores[keep], 10)
    assert rep["per_class"]["support"][7] == 0
    assert rep["per_class"]["recall"][7] == 0.0


def test_class_absent_from_predictions(digit_scores):
    y, scores = digit_scores
    scores = scores.copy()
    scores[:, 3] = 0.0  # the model never predicts 3, yet 3 is in the ground truth
    rep = assert_matches_sklearn(y, scores, 10)
    assert rep["per_class"]["precision"][3] == 0.0 and rep["per_class"]["support"][3] > 0


def test_class_absent_from_both_sides_and_extra_classes(digit_scores):
    y, scores = digit_scores
    keep = y != 2
    s = np.concatenate([scores[keep], np.zeros((keep.sum(), 2))], axis=1)  # 12 classes, 10..11 unused
    s[:, 2] = 0.0
    rep = assert_matches_sklearn(y[keep], s, 12)
    assert rep["per_class"]["f1"][2] == rep["per_class"]["f1"][11] == 0.0


def test_unlisted_scores_never_count_as_topk_hits():
    y = np.array([0, 1, 2])
    s = np.full((3, 4), -np.inf)
    s[:, 0] = 0.9  # each prediction file lists only class 0
    assert metrics.topk_accuracy(y, s, 3) == pytest.approx(1 / 3)


def test_empty_and_bad_input():
    rep = metrics.classification_report(np.zeros(0, int), np.zeros((0, 3)), 3)
    assert rep["num_images"] == 0 and rep["macro"]["f1"] == 0.0 and rep["weighted"]["precision"] == 0.0
    with pytest.raises(ValueError, match="outside"):
        metrics.classification_report([0, 5], np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match="N x 3"):
        metrics.classification_report([0], np.zeros((1, 4)), 3)


def test_exact_ties_go_to_the_lower_class_id():
    """Predictor.topk's rule: of two equal scores the lower class id ranks first (top-1 and top-K alike)."""
    s = np.array([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4]])
    assert metrics.topk_accuracy([0, 1], s, 1) == 1.0 and metrics.topk_accuracy([1, 2], s, 1) == 0.0
    assert metrics.topk_accuracy([1, 2], s, 2) == 1.0
    rep = metrics.classification_report([1, 2], s, 3, topk=2)
    assert rep["accuracy"] == 0.0 and rep["confusion_matrix"] == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]


def matrix_block(classes: list[str]) -> list[str]:
    result = {"mode": "dataset", "source": {"model": "m.pth"}, "classes": classes, "problems": {}}
    rep = metrics.classification_report([0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], 2, topk=1)
    lines = metrics.format_report(result, rep).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("confusion matrix"))
    return lines[start : start + 4]


def test_text_confusion_matrix_names_its_columns_like_its_rows():
    legend, head, first, second = matrix_block(["ants", "bees"])
    assert head.split() == ["ants", "bees"]
    assert first.split() == ["ants", "1", "0"] and second.split() == ["bees", "1", "1"]
    legend, head, first, second = matrix_block(["golden_retriever", "labrador_retriever"])
    assert "columns are class ids, each row starts with its id" in legend
    assert head.split() == ["0", "1"] and first.startswith("0 golden_retriever") and second.startswith("1 labrador")


@pytest.mark.parametrize(
    ("topk", "classes", "k", "note"),
    [
        (5, 10, 5, None),
        (5, 5, 4, "with 5 classes top-5 would always be 1.0; reporting top-4"),
        (9, 3, 2, "with 3 classes top-9 would always be 1.0; reporting top-2"),
        (5, 2, 1, "with 2 classes top-5 would always be 1.0; reporting top-1 only"),
        (1, 2, 1, None),
    ],
)
def test_topk_is_kept_below_the_class_count(topk, classes, k, note):
    assert metrics.capped_topk(topk, classes) == (k, note)
