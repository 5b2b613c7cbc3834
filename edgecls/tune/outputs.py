"""What a study leaves in its folder: trials.csv, best.yaml, best.pth, three plots; and the progress line.

Every file is written atomically from the study's storage, so any process of the study (on any machine)
writes the same files, and the last one to finish leaves them complete.
"""

from __future__ import annotations

import csv
import io
import socket
import warnings
from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial

from edgecls.atomic import atomic_copy, atomic_savefig, atomic_write_text
from edgecls.engine.config import TrainConfig
from edgecls.settings import NEGATED, POSITIONAL, flag_of, settings_of
from edgecls.tune.counting import best_trial, finished, retried_numbers
from edgecls.tune.trial import CONFIG_ATTR

NOT_IN_BEST_YAML = ("snapshot_path", "exist_ok")  # where the tuned run was written, not how it trained
PLOTS = {
    "history.png": "plot_optimization_history",
    "importances.png": "plot_param_importances",
    "parallel.png": "plot_parallel_coordinate",
}


# ----------------------------------------------------------------------------- files


def write_outputs(study: optuna.Study, study_dir: Path, metric: str, plots: bool = False) -> list[str]:
    """trials.csv, best.yaml, best.pth (when the best trial ran here) and, if asked, the plots.
    Returns notes about anything left out (no complete trial yet, a plot the study cannot draw yet)."""
    trials = study.get_trials(deepcopy=False)
    write_trials_csv(trials, study_dir / "trials.csv", metric)
    notes = []
    best = best_trial(study)
    if best is None:
        notes.append("no trial has completed yet: no best.yaml, best.pth or plots")
        return notes
    atomic_write_text(best_yaml_text(best, study.study_name, metric), study_dir / "best.yaml")
    notes += copy_best_checkpoint(best, study_dir / "best.pth")
    if plots:
        notes += write_plots(study, study_dir)
    return notes


def write_trials_csv(trials: list[FrozenTrial], path: Path, metric: str) -> None:
    """One row per trial: number, state, the metric, seconds, epochs trained, pruned epoch, retry, parameters."""
    names = sorted({name for t in trials for name in t.params})
    retried = retried_numbers(trials)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["number", "state", metric, "seconds", "epochs_run", "pruned_at", "retry_of", "host", *names])
    for t in trials:
        state = "FAIL (retried)" if t.number in retried else t.state.name
        value = t.value if t.value is not None else (max(t.intermediate_values.items())[1] if t.intermediate_values
                                                     else "")  # fmt: skip
        history = t.system_attrs.get("retry_history") or []
        writer.writerow(
            [t.number, state, value, t.user_attrs.get("seconds", _seconds(t)), len(t.intermediate_values),
             t.user_attrs.get("pruned_at", ""), history[-1] if history else "", t.user_attrs.get("host", ""),
             *(t.params.get(n, "") for n in names)]
        )  # fmt: skip
    atomic_write_text(buf.getvalue(), path)


def _seconds(t: FrozenTrial):
    if t.datetime_start and t.datetime_complete:
        return round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
    return ""


def train_flags(cfg: TrainConfig) -> dict:
    """train.py --config keys (its flag names) -> values that rebuild `cfg` (paths of the run left out)."""
    out = {}
    for f, s in settings_of(TrainConfig):
        if not s.cli or s.kind == POSITIONAL or f.name in NOT_IN_BEST_YAML:
            continue
        value = getattr(cfg, f.name)
        if s.kind == NEGATED:
            value = not value  # the flag is --no-x
        if f.name == "input_size" and value is not None:
            value = f"{value[0]}x{value[1]}"
        out[flag_of(f, s).lstrip("-")] = value
    return out


def best_yaml_text(best: FrozenTrial, study_name: str, metric: str) -> str:
    cfg = TrainConfig.from_dict(best.user_attrs[CONFIG_ATTR])
    header = (
        f"# edgecls tune, study {study_name!r}: best trial {best.number}, {metric} {best.value:.4f}\n"
        "# retrain it: python train.py --config best.yaml DATASET_DIR\n"
    )
    return header + yaml.safe_dump(train_flags(cfg), sort_keys=False)


def copy_best_checkpoint(best: FrozenTrial, dst: Path) -> list[str]:
    src = Path(best.user_attrs.get("run_dir", "")) / "best.pth"
    if best.user_attrs.get("host") != socket.gethostname() or not src.is_file():
        return [f"best.pth: trial {best.number} ran on {best.user_attrs.get('host', 'another machine')}; "
                "its checkpoint is in that machine's study folder"]  # fmt: skip
    same = dst.is_file() and (dst.stat().st_mtime, dst.stat().st_size) == (src.stat().st_mtime, src.stat().st_size)
    if not same:  # copies keep the source's time, so an unchanged best is not copied again
        atomic_copy(src, dst)
    return []


def write_plots(study: optuna.Study, study_dir: Path) -> list[str]:
    """Optuna's matplotlib plots; one the study cannot draw yet (too few trials) is noted, not an error."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    notes = []
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():  # matplotlib's and Optuna's remarks on small studies
                warnings.simplefilter("ignore")
                ax = getattr(ovm, function)(study)
        except Exception as exc:  # noqa: BLE001 - a plot Optuna cannot draw yet must not end the study
            notes.append(f"{name}: not drawn ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
            continue
        ax = ax.flat[0] if hasattr(ax, "flat") else ax
        ax.figure.set_size_inches(10, 6)
        ax.figure.tight_layout()
        atomic_savefig(ax.figure, study_dir / name)
    return notes


# ----------------------------------------------------------------------------- the progress line


def fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def progress_line(outcome, trials: list[FrozenTrial], study: optuna.Study, n_trials: int, metric: str) -> str:
    """trial 7 [8/16]  complete  val_top1 0.9625  best 0.9712 (trial 2)  41 s  lr=0.003 optimizer=ADAMW ..."""
    done = len(finished(trials))
    how = {"COMPLETE": "complete", "PRUNED": f"pruned at epoch {outcome.pruned_at}"}.get(outcome.state, "failed")
    value = "-" if outcome.value is None else f"{outcome.value:.4f}"
    best = best_trial(study)
    best_text = f"best {best.value:.4f} (trial {best.number})" if best is not None else "best -"
    params = " ".join(f"{k}={fmt(v)}" for k, v in outcome.params.items())
    return (
        f"trial {outcome.number} [{done}/{n_trials}]  {how:<18} {metric} {value}  {best_text}  "
        f"{outcome.seconds:.0f} s  {params}"
    )


def disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
