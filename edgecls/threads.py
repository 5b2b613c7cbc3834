"""The process's CPU thread budget: OpenMP's passive wait, then intra-op and interop threads that fit, with the
DataLoader workers, into the cores this process may use after what other processes are using now.

Why: OpenMP threads spin at each parallel region's barrier while a peer is descheduled, so beside one other
busy process training slowed about 10x (FP_classifier 32x32, 2 cores, 2 threads: 1 img/s; with
OMP_WAIT_POLICY=PASSIVE: 11 img/s; with 1 thread: 17 img/s). libgomp reads OMP_WAIT_POLICY once, when torch is
first imported, so `prefer_passive_wait` runs on `import edgecls` (edgecls/__init__.py), before any entry point
imports torch; DataLoader workers and torchrun children inherit the environment.

User choices win: a command's `threads` N, else OMP_NUM_THREADS, else the automatic budget (`plan_threads`).
EDGECLS_THREADS=off turns both parts off (torch's own defaults: the behaviour before, for comparisons).
This module imports torch only in `apply`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

SWITCH = "EDGECLS_THREADS"  # "off": no passive wait, no budget
OFF_WORDS = ("off", "0", "no", "false")


def enabled(env=os.environ) -> bool:
    return env.get(SWITCH, "").strip().lower() not in OFF_WORDS


def prefer_passive_wait(env=os.environ) -> None:
    """OMP_WAIT_POLICY=PASSIVE unless the user set it (or EDGECLS_THREADS=off); effective only before torch loads."""
    if enabled(env):
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass(frozen=True)
class ThreadBudget:
    intra: int  # torch intra-op threads of this process (0: left to torch)
    interop: int  # torch interop threads (0: left to torch)
    cpus: int  # cores this process may use
    busy: float  # cores other processes were using when the budget was made
    workers: int  # worker processes counted against the cores
    source: str  # auto | threads | OMP_NUM_THREADS | off

    def describe(self) -> str:
        if self.source == "off":
            return f"threads: torch's defaults ({SWITCH}=off)"
        why = {
            "threads": "given",
            "OMP_NUM_THREADS": "from OMP_NUM_THREADS",
            "auto": f"auto: {self.cpus} CPU(s), {self.busy:.1f} busy with other processes"
            + (f", {self.workers} for DataLoader workers" if self.workers else ""),
        }[self.source]
        return f"threads: {self.intra} intra-op, {self.interop} interop ({why})"


def plan_threads(
    cpus: int,
    busy: float,
    workers: int = 0,
    requested: int = 0,
    *,
    ranks: int = 1,
    env_threads: int | None = None,
    default: int | None = None,
) -> ThreadBudget:
    """The budget, a pure function. cpus: cores this process may use; busy: cores other processes use (the
    machine's runnable count less this process); workers: this process's busy worker processes; requested: the
    user's `threads` (0: auto); ranks: processes of this run on the machine (torchrun), sharing the cores;
    env_threads: OMP_NUM_THREADS; default: torch's own thread count, never exceeded by the automatic budget
    (torch picks the physical cores, and hyperthreads slow its kernels)."""
    cpus, ranks = max(1, int(cpus)), max(1, int(ranks))
    if requested and requested > 0:
        intra, source = int(requested), "threads"
    elif env_threads and env_threads > 0:
        intra, source = int(env_threads), "OMP_NUM_THREADS"
    else:
        share = max(1, cpus // ranks)
        others = int(max(0.0, busy) / ranks + 0.5)  # the other processes' load, shared by this run's ranks
        intra, source = max(1, share - others - max(0, workers)), "auto"
        if default:
            intra = min(intra, int(default))
    # Eager training and inference run no inter-op parallel work: one interop thread is enough, and each extra
    # one is another thread to schedule on a busy machine.
    return ThreadBudget(intra, 1, cpus, round(max(0.0, busy), 2), max(0, workers), source)


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask: taskset, cgroups' cpusets), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cpus(samples: int = 10, interval: float = 0.01) -> float:
    """Cores other processes are using now: Linux's runnable count (/proc/loadavg, which counts the reader
    itself) averaged over `samples` readings, less this process. The 1-minute load average lags a job started a
    moment ago by a minute, so it is only the fallback (other systems)."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as fh:
                counts.append(int(fh.read().split()[3].split("/")[0]))
        except (OSError, IndexError, ValueError):
            break
        if i + 1 < samples:
            time.sleep(interval)
    if counts:
        return max(0.0, sum(counts) / len(counts) - 1)
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def env_threads(env=os.environ) -> int | None:
    try:
        value = int(env.get("OMP_NUM_THREADS", "").split(",")[0])
    except ValueError:
        return None
    return value if value > 0 else None


def machine_budget(requested: int = 0, workers: int = 0, ranks: int | None = None) -> ThreadBudget:
    """The budget for this process on this machine now (EDGECLS_THREADS=off: torch's defaults)."""
    if not enabled():
        return ThreadBudget(0, 0, usable_cpus(), 0.0, workers, "off")
    if ranks is None:
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # set by torchrun
    # this run's other ranks are no other job's load
    busy = 0.0 if requested or env_threads() else max(0.0, busy_cpus() - (ranks - 1))
    return plan_threads(
        usable_cpus(), busy, workers, requested, ranks=ranks, env_threads=env_threads(), default=torch_default()
    )


_TORCH_DEFAULT: list[int] = []


def torch_default() -> int:
    """torch's intra-op thread count before this module changed it."""
    import torch

    if not _TORCH_DEFAULT:
        _TORCH_DEFAULT.append(torch.get_num_threads())
    return _TORCH_DEFAULT[0]


def apply(budget: ThreadBudget) -> ThreadBudget:
    """Set torch's thread counts to the budget (nothing for source off)."""
    import torch

    if budget.intra:
        torch_default()
        torch.set_num_threads(budget.intra)
    if budget.interop:
        try:
            torch.set_num_interop_threads(budget.interop)
        except RuntimeError:  # torch allows it once, before any inter-op work: a later run here keeps the first's
            budget = replace(budget, interop=torch.get_num_interop_threads())
    return budget


def configure(requested: int = 0, workers: int = 0, log=None) -> ThreadBudget:
    """Make the process's budget, apply it and log it once (`log`: a print-like function, or None)."""
    budget = apply(machine_budget(requested, workers))
    if log is not None:
        log(budget.describe())
    return budget
