"""The study: create it or continue it, claim trials one at a time, stop at exactly `trials`.

    summary = tune(TuneConfig(data="my_data", trials=16), log=print)

A study is a name plus a storage (Optuna's model); running the same command again continues it. Each
process loops: under the study's claim lock it fails trials whose heartbeat stopped (each is queued once
more), then takes a queued trial or, while fewer than `trials` count, a new one; it trains it, writes the
study folder's files and prints a progress line. When every trial is claimed it waits for those running
elsewhere, so a trial whose process died is retried rather than left RUNNING, and it ends when all have.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from edgecls.atomic import atomic_write_text
from edgecls.errors import UserError
from edgecls.tune.counting import best_trial, finished, lineages, state_counts
from edgecls.tune.outputs import disk_mb, progress_line, write_outputs
from edgecls.tune.settings import CONTINUE_MAY_CHANGE, TuneConfig
from edgecls.tune.space import Space, load_space
from edgecls.tune.storage import CLAIM_LOCK, JOURNAL, StudyStorage, database_url, open_storage, quiet_optuna
from edgecls.tune.trial import remove_retried_folders, run_trial

MANIFEST = "study.json"
SETTINGS_ATTR = "edgecls"
NOT_RECORDED = ("epochs", "snapshot_path", "exist_ok")  # set by the search, per trial


@dataclass
class Summary:
    study: str
    study_dir: Path
    storage: str
    trials: int
    counts: dict
    best_number: int | None
    best_value: float | None
    disk_mb: float
    notes: list[str]


def tune(cfg: TuneConfig, log=print) -> Summary:
    """Run (or continue) the study until it holds `trials` finished trials, or `timeout` passes."""
    quiet_optuna()
    space, classes = check_start(cfg)
    label = storage_label(cfg.storage)
    check_study_dir(cfg.study_dir, cfg.study_name, label)
    storage = open_storage(cfg.storage, cfg.study_dir, cfg.study_name, cfg.heartbeat, cfg.grace)
    study = open_study(cfg, storage, space, classes, label)
    log(
        f"study {cfg.study_name!r} in {storage.label}: {len(finished(study.get_trials(deepcopy=False)))} of "
        f"{cfg.trials} trials finished; searching {space.describe()}"
    )
    log(
        f"trials train in {cfg.study_dir / 'trials'}/<number>/; a finished trial keeps its best.pth, a pruned one "
        f"is removed{' (kept: --keep-pruned)' if cfg.keep_pruned else ''}"
    )
    try:
        work(study, storage, cfg, space, log)
    finally:
        notes = write_outputs(study, cfg.study_dir, cfg.metric, plots=True)
    trials = study.get_trials(deepcopy=False)
    best = best_trial(study)
    return Summary(
        cfg.study_name, cfg.study_dir, storage.label, cfg.trials, state_counts(trials),
        best.number if best else None, best.value if best else None, disk_mb(cfg.study_dir), notes,
    )  # fmt: skip


def work(study: optuna.Study, storage: StudyStorage, cfg: TuneConfig, space: Space, log) -> None:
    """Claim and train trials until none is left to claim and none runs elsewhere (or `timeout`)."""
    started, said_waiting = time.monotonic(), False
    while cfg.timeout is None or time.monotonic() - started < cfg.timeout:
        with storage.lock():
            trial, running = claim(study, storage, cfg.trials)
        remove_retried_folders(study.get_trials(deepcopy=False))
        if trial is None:
            if not running:
                return
            if not said_waiting:
                log(f"waiting for trial(s) {', '.join(map(str, running))}, running in other processes")
                said_waiting = True
            time.sleep(cfg.heartbeat)
            continue
        said_waiting = False
        outcome = run_trial(study, trial, cfg, space, storage)
        write_outputs(study, cfg.study_dir, cfg.metric)
        if outcome is not None:
            log(progress_line(outcome, study.get_trials(deepcopy=False), study, cfg.trials, cfg.metric))
    log(f"timeout: {cfg.timeout:g} s passed; running the same command again continues the study")


def claim(study: optuna.Study, storage: StudyStorage, n_trials: int) -> tuple[optuna.Trial | None, list[int]]:
    """(a trial to run, or None and the numbers of trials running elsewhere). Call under the claim lock."""
    optuna.storages.fail_stale_trials(study)  # dead trials -> FAIL, each queued again once (WAITING)
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.WAITING for t in trials) and lineages(trials) >= n_trials:
        return None, [t.number for t in trials if t.state == TrialState.RUNNING]
    with warnings.catch_warnings():  # "heartbeat is meant for Study.optimize": run_trial beats itself
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask()  # a queued retry first, else a new trial
    storage.record_heartbeat(trial._trial_id)  # before the lock is released: it is alive from the start
    return trial, []


# ----------------------------------------------------------------------------- starting


def check_start(cfg: TuneConfig) -> tuple[Space, list[str]]:
    """Everything that can be checked before a file is written: settings, data, backbones, the space."""
    from edgecls.data.classmap import discover_classes
    from edgecls.engine.optim import class_weight_tensor
    from edgecls.models import get_spec, load_plugins
    from edgecls.models.registry import takes_kwarg

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("`tune` runs one training at a time per process; start several tune processes, not torchrun")
    cfg.check()
    if cfg.trials is None:
        raise UserError("`trials`: give the number of trials the study ends with, e.g. `trials` 16")
    if not cfg.data:
        raise UserError("`data`: give the dataset folder (DATASET/train/<class>/, DATASET/val/<class>/)")
    if not Path(cfg.data).is_dir():
        raise UserError(f"{cfg.data}: dataset folder not found")
    classes = discover_classes(Path(cfg.data) / "train")
    if not (Path(cfg.data) / "val").is_dir():
        raise UserError(
            f"{cfg.data}: no val/ images; create DATASET/val/<class>/ (e.g. `edgecls data split {cfg.data}`)"
        )
    space = load_space(cfg.space, cfg.epochs_max)
    load_plugins(cfg.model_def_path)
    get_spec(cfg.backbone)
    class_weight_tensor(cfg.class_weights, [1] * len(classes))
    choices = {name: list(p.choices) if p.choices else [] for name, p in space.params.items()}
    try:  # the space's choices that only the data and the registry can judge
        for backbone in choices.get("backbone", []):
            get_spec(backbone)
        for weights in choices.get("class_weights", []):
            class_weight_tensor(weights, [1] * len(classes))
    except UserError as exc:
        raise UserError(f"`space` {cfg.space}: {exc}") from None
    if cfg.dropout is not None and "backbone" not in space.params and not takes_kwarg(cfg.backbone, "dropout"):
        raise UserError(f"`dropout` {cfg.dropout}: {cfg.backbone} has no dropout layer; leave `dropout` out")
    return space, classes


def storage_label(url: str | None) -> str:
    """How the manifest names the storage: the journal file, or the database URL without its password."""
    return JOURNAL if url is None else database_url(url).render_as_string(hide_password=True)


def check_study_dir(study_dir: Path, name: str, label: str) -> None:
    """The folder is new, empty, or this study's own (its study.json names this study and storage)."""
    if study_dir.exists() and not study_dir.is_dir():
        raise UserError(f"`out` {study_dir}: is a file; give a folder for the study")
    manifest = study_dir / MANIFEST
    if manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text())
            known = (recorded["study"], recorded["storage"])
        except (ValueError, KeyError, TypeError):
            raise UserError(f"`out` {study_dir}: {MANIFEST} is not edgecls's; choose another `out`") from None
        if known != (name, label):
            raise UserError(
                f"`out` {study_dir}: holds study {known[0]!r} in {known[1]}, not {name!r} in {label}; give the "
                "same `study` and `storage`, or another `out`"
            )
    elif study_dir.is_dir() and any(p.name not in (JOURNAL, CLAIM_LOCK) for p in study_dir.iterdir()):
        raise UserError(f"`out` {study_dir}: not empty and not a study folder (no {MANIFEST}); choose another `out`")


def open_study(cfg: TuneConfig, storage: StudyStorage, space: Space, classes: list[str], label: str) -> optuna.Study:
    """Create the study or load it; a continued study must have been started with the same settings."""
    from edgecls.tune.search import make_pruner, make_sampler

    study = optuna.create_study(
        study_name=cfg.study_name, storage=storage.storage, direction=cfg.direction, load_if_exists=True,
        sampler=make_sampler(cfg), pruner=make_pruner(cfg),
    )  # fmt: skip
    settings = json.loads(json.dumps(study_settings(cfg, space, classes)))
    with storage.lock():
        recorded = study.user_attrs.get(SETTINGS_ATTR)
        if recorded is None:
            study.set_user_attr(SETTINGS_ATTR, settings)
        elif recorded != settings:
            raise UserError(f"`study` {cfg.study_name}: {difference(recorded, settings)}")
    if not (cfg.study_dir / MANIFEST).is_file():
        manifest = {"study": cfg.study_name, "storage": label, "metric": cfg.metric, "direction": cfg.direction}
        atomic_write_text(json.dumps(manifest, indent=2) + "\n", cfg.study_dir / MANIFEST)
    return study


def study_settings(cfg: TuneConfig, space: Space, classes: list[str]) -> dict:
    """What a trial means: the metric, the space, the classes and the training settings it starts from."""
    train = {
        k: v
        for k, v in cfg.base_train_config().to_dict().items()
        if k not in CONTINUE_MAY_CHANGE and k not in NOT_RECORDED
    }
    return {"metric": cfg.metric, "epochs_max": cfg.epochs_max, "space": space.to_dict(), "classes": classes,
            "train": train}  # fmt: skip


def difference(recorded: dict, now: dict) -> str:
    """One line saying which setting differs from the study's."""
    keep = "a continued study keeps its settings; give the study's, or start another `study`"
    for key in ("metric", "epochs_max"):
        if recorded.get(key) != now.get(key):
            return f"started with `{key}` {recorded.get(key)}, not {now.get(key)}; {keep}"
    if recorded.get("classes") != now.get("classes"):
        return f"started on classes {recorded.get('classes')}, this dataset has {now.get('classes')}; {keep}"
    for key, value in now.get("train", {}).items():
        if recorded.get("train", {}).get(key) != value:
            return f"started with `{key}` {recorded['train'].get(key)}, not {value}; {keep}"
    return f"its search space differs from this one (`space`): {recorded.get('space')}; {keep}"
