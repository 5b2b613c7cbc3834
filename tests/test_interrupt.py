"""Ctrl-C during training: a real SIGINT to a real train.py process group (the main process and its DataLoader
workers, as a terminal sends it) stops it within seconds, keeps last.pth at the last complete epoch, prints the
exact --resume command, and that command continues the run."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, copy_digits, run_cmd

from edgecls.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.timeout(300)  # each takes about 25 s; a hang fails in minutes, with every thread's stack

# Long enough to be interrupted mid-run: 30 epochs of 400 real digit images, decoded by 2 DataLoader worker
# processes every epoch (no cache), so the workers are alive when the signal comes.
ARGS = ["--backbone", "FP_classifier", "--input-size", "32", "--epochs", "30", "--batch-size", "16", "--workers",
        "2", "--cache-images", "none", "--early-stop", "0", "--hflip", "0", "--bn-recalibrate", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def digits(digits_dir, tmp_path_factory):
    """40 training and 10 validation images of each digit."""
    return copy_digits(digits_dir, tmp_path_factory.mktemp("ctrl_c") / "data", "0123456789", 40, 10)


def start_training(digits_dir, run_dir) -> tuple[subprocess.Popen, list[str], list[str], list[threading.Thread]]:
    """train.py in its own process group; its stdout and stderr lines are collected as they come (a reader
    thread each: no pipe fills, and no read waits on a process that holds the pipe open)."""
    proc = subprocess.Popen(
        [sys.executable, "train.py", str(digits_dir), *ARGS, "--snapshot-path", str(run_dir)],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=lambda stream=stream, lines=lines: lines.extend(stream), daemon=True)
        for stream, lines in ((proc.stdout, out), (proc.stderr, err))
    ]
    for reader in readers:
        reader.start()
    return proc, out, err, readers


def wait_for(condition, proc, err, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, "".join(err)[-3000:]
        assert time.monotonic() < deadline, "train.py did not get there in time"
        time.sleep(0.05)


def summary_epochs(run_dir) -> list[int]:
    with (run_dir / "summary.csv").open(newline="") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def interrupt(proc, out, err, readers, twice: bool = False) -> tuple[float, str]:
    """Ctrl-C (SIGINT to the whole foreground process group) once epoch 1 runs; (seconds to exit, stderr)."""
    try:
        wait_for(lambda: any(line.startswith("epoch 1/30") for line in out), proc, err)
        os.killpg(proc.pid, signal.SIGINT)
        if twice:
            time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGINT)  # before the first has ended the epoch, on most runs
        sent = time.monotonic()
        proc.wait(timeout=60)
        took = time.monotonic() - sent
        for reader in readers:  # to the end of both pipes (bounded: a worker still holding one is not waited on)
            reader.join(timeout=30)
        return took, "".join(err)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_ctrl_c_stops_within_seconds_keeps_last_epoch_and_prints_a_working_resume_command(digits, tmp_path):
    run_dir = tmp_path / "run"
    proc, out, err, readers = start_training(digits, run_dir)
    took, err = interrupt(proc, out, err, readers)
    assert any(line.startswith("threads: ") for line in out), out  # the budget, logged once
    assert took < 10, f"train.py took {took:.1f} s to stop after Ctrl-C"
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]  # neither main nor workers
    assert err.count("stopping after this step") == 1, err[-3000:]  # said by the main process, not its workers
    done = int(err.split("holds epoch ")[1].split()[0])
    assert done >= 1 and summary_epochs(run_dir) == list(range(1, done + 1))
    assert load_checkpoint(run_dir / "last.pth")["train"]["epoch"] == done - 1  # 0-based: the last complete epoch
    hint = err.strip().splitlines()[-1].strip()
    assert hint == f"python train.py {shlex.quote(str(digits))} --resume {shlex.quote(str(run_dir))}", err[-2000:]

    argv = shlex.split(hint)[1:] + ["--epochs", str(done + 1)]  # the printed command, one epoch further
    resumed = run_cmd(argv, env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run_dir} at epoch {done + 1}/{done + 1}" in resumed.stdout
    assert summary_epochs(run_dir) == list(range(1, done + 2))


def test_a_second_ctrl_c_quits_at_once_with_the_same_hint(digits, tmp_path):
    """The DataLoader workers, forked with the handler, neither stop the run nor print a second hint."""
    run_dir = tmp_path / "run"
    proc, out, err, readers = start_training(digits, run_dir)
    took, err = interrupt(proc, out, err, readers, twice=True)
    assert took < 10 and proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    hint = f"python train.py {shlex.quote(str(digits))} --resume {shlex.quote(str(run_dir))}"
    assert err.strip().splitlines()[-1].strip() == hint and err.count(hint) == 1, err[-2000:]
    done = int(err.split("holds epoch ")[1].split()[0])
    assert load_checkpoint(run_dir / "last.pth")["train"]["epoch"] == done - 1


def test_an_interrupt_before_any_epoch_finished_says_there_is_nothing_to_resume(tmp_path):
    from edgecls.cli.train import interrupted_text
    from edgecls.engine.interrupt import TrainingInterrupted

    text = interrupted_text(TrainingInterrupted(tmp_path, 0, 30, "my data"))
    assert "no epoch finished" in text and "--resume" not in text
    text = interrupted_text(TrainingInterrupted(tmp_path, 3, 30, "my data"))
    assert "holds epoch 3 of 30" in text and text.endswith(f"'my data' --resume {tmp_path}")


def test_a_process_started_with_ctrl_c_ignored_keeps_it_ignored():
    """A script's background job (or nohup) starts with SIGINT ignored, so that the terminal's Ctrl-C leaves it
    alone; the handler keeps it so, as Python does."""
    from edgecls.engine.interrupt import StopOnCtrlC

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopOnCtrlC():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with StopOnCtrlC() as stopper:
            assert signal.getsignal(signal.SIGINT) == stopper._handle
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
