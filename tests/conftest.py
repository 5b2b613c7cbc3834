"""Shared fixtures: real digit images written as folders, and one small trained checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# The Ctrl-C tests send SIGINT to child processes, which must start with its default action, as a terminal's
# foreground job does. A runner that starts pytest with SIGINT ignored (a background job of a script, some CI
# runners) would pass that on to every child, and Python then leaves Ctrl-C ignored; Python's own handler here
# is reset to the default action at each exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the verify cache out of the user's home during tests."""
    os.environ["EDGECLS_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgecls_cache"))
    yield


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """scikit-learn digits (1,797 real 32x32 PNGs), DIR/train/<digit>/, DIR/val/<digit>/. Read-only for tests."""
    from edgecls.data.demo import build_demo_dataset

    return build_demo_dataset(tmp_path_factory.mktemp("digits") / "data", source="digits", val_fraction=0.2, seed=0)


@pytest.fixture(scope="session")
def trained_run(digits_dir, tmp_path_factory) -> Path:
    """A run folder (best.pth, last.pth, class_id.json...) of FP_classifier trained on digits; ~97% val top-1."""
    from edgecls.engine.config import TrainConfig
    from edgecls.engine.trainer import fit

    run = tmp_path_factory.mktemp("run") / "fp"
    fit(
        TrainConfig(
            data=str(digits_dir),
            backbone="FP_classifier",
            input_size=(32, 32),
            epochs=6,
            batch_size=32,
            optimizer="ADAMW",
            lr=3e-3,
            hflip=0.0,
            crop_scale=0.8,
            workers=0,
            snapshot_path=str(run),
            model_def_path=None,
            seed=0,
        )
    )
    return run


@pytest.fixture(scope="session")
def trained_ckpt(trained_run) -> Path:
    return trained_run / "best.pth"


def copy_digits(digits_dir: Path, dest: Path, digits: str = "0123", n_train: int = 24, n_val: int = 8) -> Path:
    """dest/{train,val}/<digit>/: the first n real images per digit copied from the shared read-only fixture."""
    import shutil

    for split, n in (("train", n_train), ("val", n_val)):
        for digit in digits:
            out = dest / split / digit
            out.mkdir(parents=True)
            for src in sorted((digits_dir / split / digit).iterdir())[:n]:
                shutil.copy(src, out / src.name)
    return dest


def run_cmd(
    args: list[str], cwd: Path | None = None, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a repo script / module in a real subprocess with the current interpreter."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(
        [sys.executable, *args], cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env=full_env
    )


requires_gloo = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this torch build has no gloo backend",
)


def torchrun_train(
    args: list[str], hook_dir: Path, audit_hook: str, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 train.py ARGS`, every process running `audit_hook` at start-up.

    The hook source is written as hook_dir/sitecustomize.py, which Python imports in each rank (and in its
    DataLoader workers), so what the ranks open or write is observed from inside, not assumed.
    """
    hook_dir.mkdir(parents=True, exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(audit_hook)
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hook_dir), str(REPO)]), **(env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run(
        [*cmd, str(REPO / "train.py"), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env
    )
