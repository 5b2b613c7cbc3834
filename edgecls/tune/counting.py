"""Counting a study's trials toward `--trials N`, with retries.

A trial killed mid-run is failed (by heartbeat) and queued once more with the same parameters; the retry
lists the failed trial's number in its `retry_history` system attribute (Optuna's retry callback). The
failed one then no longer counts: the retry takes its place. So every trial counts except a failed one
that was retried, and a study ends with exactly N counted trials, each complete, pruned, or failed
for good (an error in training, or a retry that was killed too).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the failed trials that were queued again."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def lineages(trials: list[FrozenTrial]) -> int:
    """Trials that count toward `trials`, running and waiting ones included."""
    retried = retried_numbers(trials)
    return sum(1 for t in trials if t.number not in retried)


def finished(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Counted trials that have ended."""
    retried = retried_numbers(trials)
    return [t for t in trials if t.state.is_finished() and t.number not in retried]


def state_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    done = finished(trials)
    return {
        "complete": sum(t.state == TrialState.COMPLETE for t in done),
        "pruned": sum(t.state == TrialState.PRUNED for t in done),
        "failed": sum(t.state == TrialState.FAIL for t in done),
        "retried": len(retried_numbers(trials)),
    }


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None
