"""Few-shot: episodic training on digits 0-4, evaluation on the held-out digits 5-9, the CI arithmetic, errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from edgecls.embed.few_shot import episode_accuracies, mean_ci95, prototype_scores, rows_by_class, sample_episodes
from tests.conftest import copy_digits, run_cmd

COMMON = ["--backbone", "FP_classifier", "--input-size", "32", "--hflip", "0", "--workers", "0", "--model-def-path", ""]
TRAIN = ["--crop-scale", "0.8", "--dropout", "0"]  # measured: better transfer to new digits than the defaults
EPISODIC = ["--episodic", "--n-way", "5", "--k-shot", "1", "--query", "5"]


@pytest.fixture(scope="module")
def splits(digits_dir, tmp_path_factory):
    """seen: digits 0-4 (train/ 40, val/ 20 per class); unseen: digits 5-9 (30 per class), never trained on."""
    root = tmp_path_factory.mktemp("few_shot")
    seen = copy_digits(digits_dir, root / "seen", digits="01234", n_train=40, n_val=20)
    unseen = copy_digits(digits_dir, root / "unseen", digits="56789", n_train=30, n_val=0)
    return seen, unseen, root


@pytest.fixture(scope="module")
def episodic_run(splits):
    seen, _, root = splits
    run = root / "run"
    args = [str(seen), *EPISODIC, *TRAIN, "--episodes-per-epoch", "40", "--epochs", "6", "--snapshot-path", str(run)]
    proc = run_cmd(["train.py", *args, *COMMON])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, proc


def few_shot_eval(model_args, data, save_dir, *extra):
    args = ["--few-shot", *model_args, "--data", str(data), "--n-way", "5", "--k-shot", "1,5", "--query", "10"]
    proc = run_cmd(["eval_utils/eval.py", *args, "--episodes", "200", "--save-dir", str(save_dir), *extra])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((save_dir / "few_shot.json").read_text()), proc


def test_episodic_run_is_a_normal_run(episodic_run):
    run, proc = episodic_run
    rows = list(csv.DictReader((run / "summary.csv").open()))
    assert len(rows) == 6
    top1 = [float(r["val_top1"]) for r in rows]
    assert max(top1) > 0.7  # 5-way 1-shot on val/ episodes of digits 0-4 (chance 0.2)
    ckpt = torch.load(run / "best.pth", weights_only=True)
    assert ckpt["task"] == "episodic" and ckpt["classes"] == list("01234")
    assert ckpt["metrics"]["val_top1"] == max(top1)
    assert "top-1" in proc.stdout and not (run / "eval").exists()  # no classifier evaluation of an untrained head


def test_held_out_digits_far_above_chance_and_above_untrained(episodic_run, splits, tmp_path):
    """The trained features separate digits they never saw (5-9) far better than chance and than the same
    network untrained (its random-init weights, saved by a 1-episode run with lr 0). Measured (seed 0):
    1-shot 0.41 +- 0.013 on 200 episodes (chance 0.2; the untrained network scores chance), 5-shot 0.51;
    trained on only 5 classes the features transfer weakly (raw pixels give 0.83), hence the margin 0.3."""
    run, _ = episodic_run
    seen, unseen, _ = splits
    trained, proc = few_shot_eval(["--snapshot", str(run / "best.pth")], unseen, tmp_path / "trained")
    acc = {r["k_shot"]: r for r in trained["results"]}
    assert acc[1]["accuracy"] > 0.3 and acc[5]["accuracy"] > acc[1]["accuracy"] + 0.03
    assert 0 < acc[1]["ci95"] < 0.03
    assert "5-way 1-shot: accuracy" in proc.stdout and trained["chance"] == 0.2
    untrained_run = tmp_path / "untrained"
    base = [str(seen), *EPISODIC, "--episodes-per-epoch", "1", "--epochs", "1", "--lr", "0", "--bn-recalibrate", "0"]
    proc = run_cmd(["train.py", *base, "--snapshot-path", str(untrained_run), *COMMON])
    assert proc.returncode == 0, proc.stderr[-3000:]
    untrained, _ = few_shot_eval(["--snapshot", str(untrained_run / "best.pth")], unseen, tmp_path / "u")
    assert acc[1]["accuracy"] > untrained["results"][0]["accuracy"] + 0.08
    # seeded: the same figures again
    again, _ = few_shot_eval(["--snapshot", str(run / "best.pth")], unseen, tmp_path / "again")
    assert again["results"] == trained["results"]


def test_confidence_interval_arithmetic():
    acc = np.array([0.2, 0.4, 0.6, 0.8, 1.0])
    mean, ci = mean_ci95(acc)
    assert mean == pytest.approx(0.6)
    assert ci == pytest.approx(1.96 * np.sqrt(0.08) / np.sqrt(5))  # population std of acc is sqrt(0.08)


def test_episodes_are_seeded_disjoint_and_class_major():
    labels = np.repeat(np.arange(8), 12)
    by_class = rows_by_class(labels, 8)
    first = list(sample_episodes(by_class, 5, 2, 3, 4, seed=1))
    again = list(sample_episodes(by_class, 5, 2, 3, 4, seed=1))
    assert all((a.support == b.support).all() and (a.query == b.query).all() for a, b in zip(first, again))
    for ep in first:
        assert len(set(ep.classes)) == 5 and not set(ep.support) & set(ep.query)
        assert (labels[ep.support] == np.repeat(ep.classes, 2)).all()
        assert (labels[ep.query] == np.repeat(ep.classes, 3)).all()


def test_perfect_features_score_one_and_logistic_regression_runs_on_the_same_episodes():
    from sklearn.linear_model import LogisticRegression

    labels = np.repeat(np.arange(6), 10)
    vectors = np.eye(6, dtype=np.float32)[labels] + 0.01 * np.random.default_rng(0).normal(size=(60, 6))

    def logreg(support, y, queries):
        return LogisticRegression(max_iter=200).fit(support, y).predict_proba(queries)

    out = episode_accuracies(
        vectors, labels, 6, n_way=5, k_shot=2, query=4, episodes=20, seed=0,
        classifiers={"prototype": prototype_scores, "logreg": logreg},
    )  # fmt: skip
    assert (out["prototype"] == 1.0).all() and (out["logreg"] == 1.0).all()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--n-way", "6"], "--n-way 6: train/ has only 5 classes"),
        (["--k-shot", "5", "--query", "40"], "fewer than --k-shot + --query = 45"),
        (["--mixup", "0.2"], "--episodic: --mixup 0.2 does not apply"),
        (["--lr", "auto"], "--lr auto does not apply"),
    ],
)
def test_train_errors(splits, tmp_path, extra, message):
    seen, _, _ = splits
    run = tmp_path / "run"
    proc = run_cmd(["train.py", str(seen), *EPISODIC, *extra, "--epochs", "1", "--snapshot-path", str(run), *COMMON])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not run.exists() or not any(run.iterdir())  # refused before any file


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--onnx", "x.onnx", "--backbone", "resnet18", "--pretrained"], "--few-shot needs one model"),
        (["--pretrained"], "--pretrained needs --backbone NAME"),
        (["CKPT", "--n-way", "9"], "--n-way 9: "),
        (["CKPT", "--k-shot", "1,5", "--query", "26"], "fewer than --k-shot + --query = 31"),
    ],
)
def test_eval_errors(episodic_run, splits, tmp_path, extra, message):
    _, unseen, _ = splits
    extra = ["--snapshot", str(episodic_run[0] / "best.pth")] + extra[1:] if extra[0] == "CKPT" else extra
    args = ["--few-shot", "--data", str(unseen), "--save-dir", str(tmp_path / "e"), "--model-def-path", "", *extra]
    proc = run_cmd(["eval_utils/eval.py", *args])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_episodic_resume_is_exact(splits, tmp_path):
    """A run stopped after epoch 2 and resumed ends with the same summary.csv as one never stopped."""
    from edgecls.engine.callbacks import Callback
    from edgecls.engine.config import TrainConfig
    from edgecls.engine.trainer import fit, resume

    class StopAfterTwo(Callback):
        def on_epoch_end(self, run, metrics):
            if metrics["epoch"] == 2:
                run.stop("stopped by the test")

    seen, _, _ = splits
    kw = dict(
        data=str(seen),
        backbone="FP_classifier",
        input_size=(32, 32),
        hflip=0.0,
        workers=0,
        model_def_path=None,
        episodic=True,
        k_shot=1,
        query=5,
        episodes_per_epoch=4,
        epochs=3,
        early_stop=0,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as train.py's thread budget does on this shared machine; 2 threads crawl here
    try:
        fit(TrainConfig(snapshot_path=str(tmp_path / "whole"), **kw), log=lambda m: None)
        fit(TrainConfig(snapshot_path=str(tmp_path / "parts"), **kw), callbacks=[StopAfterTwo()], log=lambda m: None)
        resume(tmp_path / "parts", log=lambda m: None)
    finally:
        torch.set_num_threads(threads)

    def rows(run):
        return [(r["train_loss"], r["val_top1"], r["val_loss"]) for r in csv.DictReader((run / "summary.csv").open())]

    assert len(rows(tmp_path / "whole")) == 3 and rows(tmp_path / "parts") == rows(tmp_path / "whole")
