"""One trial: sample its settings, check them as train.py does, train in-process, report each epoch.

The engine runs the training (`edgecls.engine.trainer.fit`); `ReportToTrial`, an engine callback, reports
the metric after every epoch and stops the run when the pruner says so. The trial's run folder is
STUDY_DIR/trials/<number>/: kept with its best.pth when the trial completes (last.pth, only needed to
resume a run, is removed: a finished trial is never run again), removed when it is pruned (unless
`keep_pruned`: then kept like a complete one), left without checkpoints when training raised an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from edgecls.atomic import atomic_write_text
from edgecls.engine.callbacks import Callback
from edgecls.engine.config import TrainConfig
from edgecls.errors import UserError
from edgecls.tune.settings import TuneConfig
from edgecls.tune.space import Space
from edgecls.tune.storage import Heartbeat, StudyStorage, retry_once

CONFIG_ATTR = "config"  # the trial's full TrainConfig (to_dict), for best.yaml on any machine


@dataclass
class Outcome:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL (a NaN value, or failed meanwhile by another process)
    value: float | None
    pruned_at: int | None
    seconds: float
    params: dict


class ReportToTrial(Callback):
    """After each epoch: report the best `metric` so far to the trial; stop the run if the pruner says so.

    The best-so-far (not the epoch's own value) is reported, so the rungs the pruner compares are as steady
    as the trial's final value, which is its best epoch's."""

    def __init__(self, trial: optuna.Trial, metric: str, maximize: bool, prune: bool):
        self.trial, self.metric, self.maximize, self.prune = trial, metric, maximize, prune
        self.best: float | None = None
        self.pruned_at: int | None = None

    def on_epoch_end(self, run, metrics: dict) -> None:
        value, epoch = float(metrics[self.metric]), int(metrics["epoch"])
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best = value
        self.trial.report(self.best, epoch)
        if self.prune and self.trial.should_prune():
            self.pruned_at = epoch
            run.stop(f"pruned at epoch {epoch}: best {self.metric} {self.best:.4f}")


def trial_dir(cfg: TuneConfig, number: int) -> Path:
    return cfg.study_dir / "trials" / f"{number:04d}"


def trial_config(cfg: TuneConfig, values: dict, run_dir: Path) -> TrainConfig:
    """The tune command's training settings with the sampled values, checked by train.py's own rules."""
    settings = {"epochs": cfg.epochs_max, **values, "snapshot_path": str(run_dir)}
    train_cfg = dataclasses.replace(cfg.base_train_config(), **settings)
    train_cfg.check()
    return train_cfg


def run_trial(
    study: optuna.Study, trial: optuna.Trial, cfg: TuneConfig, space: Space, storage: StudyStorage
) -> Outcome | None:
    """Train one claimed trial and tell the study how it ended; an Outcome (None: another process failed it)."""
    run_dir = trial_dir(cfg, trial.number)
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    reporter = ReportToTrial(trial, cfg.metric, cfg.direction == "maximize", cfg.prune)
    lines: list[str] = []
    started = time.monotonic()
    try:
        with Heartbeat(storage, trial._trial_id, cfg.heartbeat, log=_warn):
            train_cfg = trial_config(cfg, space.sample(trial, vars(cfg.base_train_config())), run_dir)
            trial.set_user_attr(CONFIG_ATTR, train_cfg.to_dict())
            train_in_process(train_cfg, reporter, lines)
        return finish(study, trial, reporter, time.monotonic() - started, run_dir, lines, cfg.keep_pruned)
    except optuna.exceptions.UpdateFinishedTrialError:
        _warn(f"trial {trial.number} was marked failed by another process (no heartbeat for {cfg.grace} s)")
        tidy(run_dir, lines, keep=False)
        return None
    except (KeyboardInterrupt, UserError):
        # Ctrl-C, or a problem with the input (a folder, a file): queue the trial once more with the same
        # parameters, as for a killed one; should the retry fail too, it counts as failed.
        if tell_failed(study, trial, retry=True):
            tidy(run_dir, lines, keep=False)
        raise
    except BaseException:
        if tell_failed(study, trial, retry=False):
            tidy(run_dir, lines, keep=True)
        raise


def finish(study, trial, reporter: ReportToTrial, seconds: float, run_dir: Path, lines, keep_pruned: bool) -> Outcome:
    """Tell the study how the trial ended (pruned, or complete with its best value) and tidy its folder.
    It ends FAIL instead if its value is NaN, or if another process failed it meanwhile (a stopped heartbeat)."""
    trial.set_user_attr("seconds", round(seconds, 2))
    if reporter.pruned_at is not None:
        trial.set_user_attr("pruned_at", reporter.pruned_at)
        told = study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
    else:
        told = study.tell(trial, reporter.best, skip_if_finished=True)
    kept = told.state == TrialState.COMPLETE or (told.state == TrialState.PRUNED and keep_pruned)
    tidy(run_dir, lines, keep=kept, drop=("last.pth",))
    return Outcome(trial.number, told.state.name, reporter.best, reporter.pruned_at, seconds, dict(trial.params))


def train_in_process(train_cfg: TrainConfig, reporter: ReportToTrial, lines: list[str]) -> None:
    """fit() in this process; its log lines and printed table go to the trial's train.log, not the screen."""
    from edgecls.engine.trainer import fit

    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            fit(train_cfg, callbacks=[reporter], log=lines.append)
    finally:
        lines.extend(captured.getvalue().splitlines())
        release_memory()


def release_memory() -> None:
    """Free the finished run's model and image cache now, so the next trial's cache policy (which measures free
    GPU memory) sees the whole device, not what this one left to the garbage collector."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def tell_failed(study: optuna.Study, trial: optuna.Trial, retry: bool) -> bool:
    """Mark the trial failed (and queue it again once if `retry`); False if it had already ended."""
    if study._storage.get_trial(trial._trial_id).state.is_finished():
        return False  # told already (it finished), or failed by another process for a stopped heartbeat
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    if retry:
        retry_once()(study, study._storage.get_trial(trial._trial_id))
    return True


def remove_retried_folders(trials: list) -> None:
    """The partial run folders, on this machine, of trials that died and were queued again (the retry trains
    in a folder of its own)."""
    from edgecls.tune.counting import retried_numbers

    retried, host = retried_numbers(trials), socket.gethostname()
    for t in trials:
        folder = Path(t.user_attrs.get("run_dir", ""))
        if t.number in retried and t.user_attrs.get("host") == host and folder.name and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def tidy(run_dir: Path, lines: list[str], keep: bool, drop: tuple[str, ...] = ("best.pth", "last.pth")) -> None:
    """Keep the folder (without the `drop` files, plus its train.log) or remove it."""
    if not run_dir.is_dir():
        return
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in drop:
        (run_dir / name).unlink(missing_ok=True)
    if lines:
        atomic_write_text("\n".join(lines) + "\n", run_dir / "train.log")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
