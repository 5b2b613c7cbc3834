"""DDP on the CPU: `torchrun --nproc-per-node 2 train.py` (gloo) converges, only rank 0 writes, resume works.

Every file the training processes open for writing (or rename) inside the run folder is
recorded by a Python audit hook installed through sitecustomize.py, per rank, so "written by
rank 0 only" is observed, not assumed.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
from conftest import requires_gloo, torchrun_train

AUDIT_HOOK = """
import os, sys
_run_dir = os.environ.get("EDGECLS_TEST_RUN_DIR")
_log_dir = os.environ.get("EDGECLS_TEST_AUDIT_DIR")
if _run_dir and _log_dir and "RANK" in os.environ:
    _log = open(os.path.join(_log_dir, "rank%s-pid%d.txt" % (os.environ["RANK"], os.getpid())), "a", buffering=1)
    _run_dir = os.path.realpath(_run_dir)

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        elif event in ("os.rename", "os.replace"):
            path, writing = args[1], True
        else:
            return
        if writing and isinstance(path, (str, bytes, os.PathLike)):
            p = os.fsdecode(path)
            if os.path.realpath(p).startswith(_run_dir + os.sep):
                _log.write(event + " " + p + "\\n")

    sys.addaudithook(_hook)
"""


def torchrun(args: list[str], run_dir: Path, audit_dir: Path, hook_dir: Path, timeout: float = 600):
    env = dict(OMP_NUM_THREADS="1", EDGECLS_TEST_RUN_DIR=str(run_dir), EDGECLS_TEST_AUDIT_DIR=str(audit_dir))
    return torchrun_train(args, hook_dir, AUDIT_HOOK, env=env, timeout=timeout)


def written_by_rank(audit_dir: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in audit_dir.glob("rank*-pid*.txt"):
        rank = f.name.split("-")[0][4:]
        out.setdefault(rank, []).extend(line.split(" ", 1)[1] for line in f.read_text().splitlines())
    return {rank: paths for rank, paths in out.items() if paths}


def hooked_ranks(audit_dir: Path) -> set[str]:
    return {f.name.split("-")[0][4:] for f in audit_dir.glob("rank*-pid*.txt")}


def summary_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "summary.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@requires_gloo
def test_torchrun_two_cpu_processes_converge_and_only_rank0_writes(digits_dir, tmp_path):
    hook_dir, audit_dir, run_dir = tmp_path / "hook", tmp_path / "audit", tmp_path / "run"
    audit_dir.mkdir()
    common = [
        str(digits_dir),
        "--backbone",
        "FP_classifier",
        "--input-size",
        "32",
        "--batch-size",
        "16",
        "--optimizer",
        "ADAMW",
        "--lr",
        "3e-3",
        "--hflip",
        "0",
        "--crop-scale",
        "0.8",
        "--workers",
        "0",
        "--model-def-path",
        "",
        "--early-stop",
        "0",
    ]

    proc = torchrun([*common, "--epochs", "3", "--snapshot-path", str(run_dir)], run_dir, audit_dir, hook_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # converged: 10 classes, chance is 0.1
    rows = summary_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["val_top1"]) > 0.6, rows
    assert all(float(r["peak_mem_mb"]) > 0 for r in rows)
    # each epoch line printed once (rank 0 logs), one final table
    for epoch in (1, 2, 3):
        assert proc.stdout.count(f"epoch {epoch}/3 ") == 1, proc.stdout
    assert proc.stdout.count("best model") == 1

    # only rank 0 opened or renamed anything in the run folder; nothing partial left behind
    assert hooked_ranks(audit_dir) == {"0", "1"}  # the hook ran in both training processes
    writes = written_by_rank(audit_dir)
    assert set(writes) == {"0"}, {k: v[:5] for k, v in writes.items()}
    written = {Path(p).name for p in writes["0"]}
    assert {"summary.csv", "last.pth", "best.pth", "class_id.json", "args.yaml"} <= {n for n in os.listdir(run_dir)}
    assert written  # the hook saw rank 0's writes: the check above is not vacuous
    assert {"val_results.json", "val_confusion_matrix.png", "val_misclassified.png"} <= written  # the end of training
    assert proc.stdout.count("val files ") == 1
    leftovers = [n for n in os.listdir(run_dir) if n.endswith(".tmp") or ".tmp" in n]
    assert leftovers == []

    # resume under torchrun with a larger epoch budget: one new row, no duplicated epochs
    for f in audit_dir.iterdir():
        f.unlink()
    proc = torchrun([*common, "--resume", str(run_dir), "--epochs", "4"], run_dir, audit_dir, hook_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming" in proc.stdout and proc.stdout.count("epoch 4/4 ") == 1
    rows = summary_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["val_top1"]) > 0.6
    assert set(written_by_rank(audit_dir)) == {"0"}
    last = torch.load(run_dir / "last.pth", weights_only=True)
    assert last["train"]["epoch"] == 3
