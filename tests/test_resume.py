"""--resume: a seeded CPU run killed with SIGKILL and resumed ends exactly like one never
interrupted (same metrics every epoch, identical best and last weights)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, copy_digits, run_cmd

from edgecls.engine.checkpoint import load_checkpoint

METRICS = ["epoch", "train_loss", "train_acc", "val_loss", "val_top1", "val_topk", "lr"]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one thread: bit-for-bit repeatable CPU math


@pytest.fixture(scope="module")
def resume_data(digits_dir, tmp_path_factory) -> Path:
    """Digits 0-3: 40 train and 8 val real images per class, copied from the shared fixture."""
    return copy_digits(digits_dir, tmp_path_factory.mktemp("resume") / "data", n_train=40, n_val=8)


def flags(data: Path, run: Path) -> list[str]:
    return [
        str(REPO / "train.py"),
        str(data),
        "--backbone",
        "FP_classifier",
        "--input-size",
        "32",
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "--optimizer",
        "ADAMW",
        "--lr",
        "3e-3",
        "--hflip",
        "0.5",
        "--crop-scale",
        "0.7",
        "--workers",
        "0",
        "--seed",
        "0",
        "--patience",
        "10",
        "--snapshot-path",
        str(run),
    ]


def rows(run: Path) -> list[dict]:
    path = run / "summary.csv"
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def metrics(run: Path) -> list[dict]:
    return [{k: r[k] for k in METRICS} for r in rows(run)]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    differing = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differing, f"{a.name}: {len(differing)} tensors differ, e.g. {differing[:3]}"


@pytest.fixture(scope="module")
def uninterrupted(resume_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run_a") / "run"
    proc = run_cmd(flags(resume_data, run), cwd=run.parent, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(rows(run)) == 4
    return run


def test_killed_and_resumed_run_matches_uninterrupted_run(resume_data, uninterrupted, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), **ENV)
    proc = subprocess.Popen(
        [sys.executable, *flags(resume_data, run)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while len(rows(run)) < 2:  # summary.csv is rewritten right after last.pth of each epoch
            assert proc.poll() is None, "training exited before epoch 2 finished"
            assert time.monotonic() < deadline, "epoch 2 never finished"
            time.sleep(0.02)
        proc.kill()  # SIGKILL: no cleanup, no chance to finish writing anything
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -9
    done = len(rows(run))
    assert done < 4, "the run finished before it could be interrupted"
    saved_epoch = load_checkpoint(run / "last.pth")["train"]["epoch"]
    assert saved_epoch + 1 >= 2

    resumed = run_cmd(
        [str(REPO / "train.py"), str(resume_data), "--resume", str(run), "--workers", "0"], cwd=tmp_path, env=ENV
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run} at epoch {saved_epoch + 2}/4" in resumed.stdout
    assert metrics(run) == metrics(uninterrupted)  # every epoch's losses, accuracies and lr, exactly
    assert_same_weights(run / "best.pth", uninterrupted / "best.pth")
    assert_same_weights(run / "last.pth", uninterrupted / "last.pth")
    assert load_checkpoint(run / "last.pth")["train"]["epoch"] == 3


def test_resume_from_a_last_pth_file_with_a_larger_epoch_budget_and_autotuning_on(resume_data, uninterrupted, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    assert load_checkpoint(run / "last.pth")["train"]["config"]["cudnn_benchmark"] is False  # the default
    proc = run_cmd(
        [
            str(REPO / "train.py"),
            str(resume_data),
            "--resume",
            str(run / "last.pth"),
            "--epochs=5",
            "--workers",
            "0",
            "--cudnn-benchmark",
            "--lr",
            "3e-3",
            "--batch-size",
            "16",
        ],  # the run's own values
        cwd=tmp_path,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 5/5" in proc.stdout
    assert load_checkpoint(run / "last.pth")["train"]["config"]["cudnn_benchmark"] is True  # speed only: may change
    got = rows(run)
    assert [int(r["epoch"]) for r in got] == [1, 2, 3, 4, 5]
    assert metrics(run)[:4] == metrics(uninterrupted)  # history kept, not duplicated
    assert load_checkpoint(run / "last.pth")["train"]["epoch"] == 4


def test_resume_on_a_dataset_with_other_classes_is_refused(resume_data, uninterrupted, tmp_path):
    other = tmp_path / "other"
    for split in ("train", "val"):
        for digit in "012":
            shutil.copytree(resume_data / split / digit, other / split / digit)
    proc = run_cmd(
        [str(REPO / "train.py"), str(other), "--resume", str(uninterrupted), "--workers", "0", "--epochs", "6"],
        cwd=tmp_path,
        env=ENV,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: --resume: the dataset's classes")


def test_resuming_a_finished_run_or_changing_its_settings_is_refused_and_writes_nothing(
    resume_data, uninterrupted, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    cases = [
        ([], "the run has already trained 4 epochs (of 4); pass --epochs N with N > 4"),
        (["--epochs", "3"], "--epochs 3: the run has already trained 4 epochs"),
        (["--epochs", "6", "--lr", "0.1"], "--resume: --lr 0.1 differs from the run's 0.003"),
        (["--epochs=6", "--batch-size=8"], "--resume: --batch-size 8 differs from the run's 16"),
    ]
    for extra, message in cases:
        proc = run_cmd(
            [str(REPO / "train.py"), str(resume_data), "--resume", str(run), "--workers", "0", *extra],
            cwd=tmp_path,
            env=ENV,
        )
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
