"""The thread budget (edgecls/threads.py): its rules as a pure function, and OMP_WAIT_POLICY set before torch
loads in real processes started through every entry point, unless the user set it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

from edgecls.threads import plan_threads


@pytest.mark.parametrize(
    "cpus, busy, workers, expected",
    [
        (2, 0.0, 0, 2),  # idle: every core
        (2, 1.0, 0, 1),  # one other busy process on 2 cores: one thread (17 img/s against 1 with two spinning)
        (2, 0.4, 0, 2),  # a passing blip does not count as a core
        (2, 0.6, 0, 1),
        (2, 3.0, 0, 1),  # never fewer than one
        (16, 2.0, 0, 14),
        (16, 0.0, 4, 12),  # DataLoader workers decoding every epoch take their cores
        (2, 0.0, 2, 1),
    ],
)
def test_auto_budget_fits_the_free_cores(cpus, busy, workers, expected):
    budget = plan_threads(cpus, busy, workers)
    assert (budget.intra, budget.interop, budget.source) == (expected, 1, "auto")
    assert str(expected) in budget.describe() and "auto" in budget.describe()


def test_auto_budget_never_exceeds_torchs_own_choice_and_shares_cores_between_ranks():
    assert plan_threads(16, 0.0, default=8).intra == 8  # torch picks the physical cores
    assert plan_threads(16, 0.0, ranks=4).intra == 4  # torchrun: 4 processes share the 16 cores
    assert plan_threads(16, 4.0, ranks=4).intra == 3  # ... and the other jobs' 4 busy cores
    assert plan_threads(2, 0.0, ranks=4).intra == 1


def test_the_users_choice_wins():
    requested = plan_threads(2, 5.0, workers=2, requested=6, env_threads=3)
    assert (requested.intra, requested.source) == (6, "threads")  # `threads` N, even above the free cores
    env = plan_threads(2, 5.0, workers=2, env_threads=3)
    assert (env.intra, env.source) == (3, "OMP_NUM_THREADS")
    assert "OMP_NUM_THREADS" in env.describe()


# A real child process: records OMP_WAIT_POLICY at the moment torch is first imported (an import hook), runs the
# entry point with --help, then imports torch itself if the entry point did not.
PROBE = """
import os, runpy, sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY", "<unset>"))
sys.meta_path.insert(0, Watch())
target, sys.argv = sys.argv[1], [sys.argv[1], "--help"]
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit:
    pass
import torch
print("OMP_WAIT_POLICY at torch import:", seen[0])
"""

ENTRY_POINTS = ["train.py", "inference.py", "pytorch2onnx.py", "eval_utils/eval.py", "serve.py", "edgecls"]


def probe(entry: str, **env: str) -> str:
    """The probe's output for `entry`, run with OMP_WAIT_POLICY removed from its environment (importing edgecls
    in this test process set it here) and `env` added."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "EDGECLS_THREADS")}
    r = subprocess.run(
        [sys.executable, "-c", PROBE, entry], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**clean, "PYTHONPATH": str(REPO), **env},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_set_a_passive_omp_wait_before_torch_loads(entry):
    out = probe(entry)
    assert "OMP_WAIT_POLICY at torch import: PASSIVE" in out, out[-2000:]


def test_the_users_wait_policy_and_the_off_switch_are_kept():
    assert "OMP_WAIT_POLICY at torch import: ACTIVE" in probe("train.py", OMP_WAIT_POLICY="ACTIVE")
    assert "OMP_WAIT_POLICY at torch import: <unset>" in probe("edgecls", EDGECLS_THREADS="off")
