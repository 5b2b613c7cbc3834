"""Resuming a run: the recorded settings, changed only where RESUME_MAY_CHANGE allows."""

from __future__ import annotations

from pathlib import Path

from edgecls.engine.checkpoint import load_checkpoint
from edgecls.engine.config import RESUME_MAY_CHANGE, TrainConfig
from edgecls.engine.early_stopping import EarlyStopping
from edgecls.errors import UserError


def resume_policy_text() -> str:
    names = [f"`{name}`" for name in RESUME_MAY_CHANGE if name != "exist_ok"]
    return ", ".join(names[:-1]) + " and " + names[-1]


def load_resume_checkpoint(target: str | Path) -> tuple[Path, dict]:
    """(run folder, last.pth contents) for a run folder or a last.pth file."""
    target = Path(target)
    ckpt_path = target / "last.pth" if target.is_dir() else target
    if not ckpt_path.is_file():
        raise UserError(f"`resume` {target}: no checkpoint found (expected a run folder with last.pth, or a .pth file)")
    ckpt = load_checkpoint(ckpt_path)
    if "train" not in ckpt:
        raise UserError(
            f"`resume` {ckpt_path}: holds no training state (a best-only or exported checkpoint); resume from last.pth"
        )
    return ckpt_path.parent, ckpt


def resumed_config(target: str | Path, changes: dict) -> tuple[TrainConfig, Path, dict]:
    """(the settings to continue with, the run folder, the checkpoint). `changes` are settings the resuming
    command gives: those in RESUME_MAY_CHANGE replace the recorded ones; any other must equal its record."""
    run_dir, ckpt = load_resume_checkpoint(target)
    recorded = dict(ckpt["train"]["config"])
    for name, value in changes.items():
        if name in RESUME_MAY_CHANGE:
            continue
        value = list(value) if isinstance(value, tuple) else value
        if recorded.get(name) == value:
            continue
        if name == "snapshot_path" and Path(value).resolve() == run_dir.resolve():
            continue  # the run's own folder, named
        raise UserError(
            f"`resume`: `{name}` {value} differs from the run's {recorded.get(name)} (command line or config); a "
            f"resumed run keeps its settings, only {resume_policy_text()} may change; to train with new "
            f"settings, start a new run with `snapshot` {run_dir / 'best.pth'}"
        )
    recorded.update({k: v for k, v in changes.items() if k in RESUME_MAY_CHANGE})
    check_unfinished(target, recorded, ckpt["train"], run_dir, "epochs" in changes)
    return TrainConfig.from_dict(recorded), run_dir, ckpt


def check_unfinished(target, recorded: dict, state: dict, run_dir: Path, epochs_given: bool) -> None:
    """Resuming a run that has nothing left to do is an error, not a run that trains nothing."""
    done = state["epoch"] + 1
    if done >= recorded["epochs"]:
        told = f"`epochs` {recorded['epochs']}: " if epochs_given else ""
        raise UserError(
            f"`resume` {target}: {told}the run has already trained {done} epoch{'s' if done != 1 else ''} (of "
            f"{recorded['epochs']}); pass `epochs` N with N > {done} to train it further"
        )
    stopper = EarlyStopping()
    stopper.load_state_dict(state["early_stopping"])
    if recorded.get("early_stop") and stopper.should_stop:
        raise UserError(
            f"`resume` {target}: the run stopped early at epoch {done} (no val improvement for "
            f"{stopper.patience} epochs; best epoch {stopper.best_epoch}), so it is finished; to "
            f"train on, start a new run with `snapshot` {run_dir / 'best.pth'}"
        )
