"""The sampler (multivariate TPE) and the pruner (Hyperband, or median) of a study."""

from __future__ import annotations

import optuna
from optuna.samplers import BaseSampler, TPESampler

from edgecls.tune.settings import TuneConfig


class TrialSeededTPE(BaseSampler):
    """Multivariate, grouped TPE (conditional parameters allowed) whose random state is drawn afresh for each
    trial from (seed, trial number).

    Optuna seeds a sampler once per process, so a continued study, or a second process of the same study,
    would repeat the first random draws (the same settings trained twice). Seeding per trial number avoids
    that and keeps one uninterrupted process reproducible. TPE keeps no other state between trials: it
    reads the finished trials from the storage each time.
    """

    def __init__(self, seed: int, n_startup_trials: int):
        self._seed, self._n_startup = seed, n_startup_trials
        self._tpe = self._make(0)

    def _make(self, number: int) -> TPESampler:
        return TPESampler(
            seed=(self._seed * 1_000_003 + number) % 2**32, n_startup_trials=self._n_startup,
            multivariate=True, group=True, constant_liar=True,
        )  # fmt: skip

    def before_trial(self, study, trial) -> None:
        self._tpe = self._make(trial.number)
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()


def make_sampler(cfg: TuneConfig) -> BaseSampler:
    # Random trials before TPE models the results: a quarter of the study, between 3 and 10.
    return TrialSeededTPE(cfg.seed, n_startup_trials=max(3, min(10, cfg.trials // 4)))


def make_pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    """Hyperband over epochs (1 to `epochs_max`, a third kept at each rung) or the median rule."""
    if not cfg.prune:
        return optuna.pruners.NopPruner()
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs_max, reduction_factor=3)
