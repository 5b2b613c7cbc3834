"""TuneConfig: `edgecls tune`'s settings, one table like TrainConfig (which it extends).

Every train.py setting is a tune flag too and sets the value every trial starts from (`--backbone`, `--gpu`,
`--pretrained`...); the search space then overrides the ones it searches. What the search itself decides
(`epochs`, from `--epochs-max` and the space) and where trials write (`snapshot_path`) are not flags here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from edgecls.engine.config import HARDWARE, STOP, TrainConfig
from edgecls.settings import NEGATED, SWITCH, TOGGLE, setting

SEARCH = "search"
METRICS = {"val_top1": "maximize", "val_loss": "minimize"}
PRUNERS = ("hyperband", "median")

# Settings a continued study may change: where things are and how fast they run, never what a trial means.
CONTINUE_MAY_CHANGE = (
    "data", "workers", "gpu", "cudnn_benchmark", "model_def_path", "cache_images", "compile",
    "trials", "timeout", "out", "storage", "prune", "pruner", "keep_pruned", "heartbeat",
)  # fmt: skip


@dataclass
class TuneConfig(TrainConfig):
    # ---- hidden train.py settings: the search sets them
    epochs: int = setting(100, "set per trial from `epochs_max` and the space", cli=False)
    snapshot_path: str | None = setting(None, "each trial trains in STUDY_DIR/trials/<number>/", cli=False)
    exist_ok: bool = setting(False, "", cli=False)
    seed: int = setting(0, "random seed of the sampler and of every trial's training", group=HARDWARE, parse=int)
    final_eval: bool = setting(
        False,
        "run train.py's end-of-training evaluation (figures, per-image predictions) in every trial; off by default: "
        "trials are compared on their validation metric, and the figures would cost each trial time",
        group=STOP,
        kind=TOGGLE,
    )
    # ---- the search
    trials: int | None = setting(
        None, "finished trials the study ends with (a continued study counts its earlier ones)", group=SEARCH,
        parse=int, at_least=1, metavar="N",
    )  # fmt: skip
    out: str | None = setting(
        None, "study folder: journal, trials/, trials.csv, best.yaml, best.pth, plots (default: tune/<study>)",
        group=SEARCH, metavar="DIR",
    )  # fmt: skip
    timeout: float | None = setting(
        None, "start no new trial after this many seconds (the running one finishes)", group=SEARCH, parse=float,
        within="(0, inf)", metavar="S",
    )  # fmt: skip
    study: str | None = setting(None, "study name (default: the dataset folder's name)", group=SEARCH, metavar="NAME")
    storage: str | None = setting(
        None, "postgresql://USER@HOST/DB or mysql://...: share one study between processes on several machines "
        "(default: a journal file in the study folder, for processes on this machine)", group=SEARCH, metavar="URL",
    )  # fmt: skip
    space: str | None = setting(
        None, "YAML search space that narrows or replaces the default one (see docs/tune.md)", group=SEARCH,
        metavar="FILE.yaml",
    )  # fmt: skip
    metric: str = setting("val_top1", "what the search optimises, per epoch", group=SEARCH, choices=tuple(METRICS))
    epochs_max: int = setting(20, "most epochs a trial trains (the top of the epochs range)", group=SEARCH,
                              parse=int, at_least=1, metavar="E")  # fmt: skip
    prune: bool = setting(True, "no pruning: every trial trains to its end", group=SEARCH, kind=NEGATED,
                          flags=("--no-prune",))  # fmt: skip
    pruner: str = setting("hyperband", "how unpromising trials are stopped early", group=SEARCH, choices=PRUNERS)
    keep_pruned: bool = setting(False, "keep the run folders of pruned trials", group=SEARCH, kind=SWITCH)
    heartbeat: int = setting(
        10, "seconds between a running trial's heartbeats; a trial silent for 6 heartbeats (its process was "
        "killed) is marked failed and retried once", group=SEARCH, parse=int, at_least=1, metavar="S",
    )  # fmt: skip

    @property
    def direction(self) -> str:
        return METRICS[self.metric]

    @property
    def grace(self) -> int:
        """Seconds without a heartbeat after which a running trial counts as dead."""
        return 6 * self.heartbeat

    @property
    def study_name(self) -> str:
        return self.study or Path(self.data or ".").resolve().name

    @property
    def study_dir(self) -> Path:
        return Path(self.out) if self.out else Path("tune") / self.study_name

    def base_train_config(self) -> TrainConfig:
        """The TrainConfig every trial starts from, before the space's values are applied."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})
