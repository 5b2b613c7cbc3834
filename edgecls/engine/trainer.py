"""fit(): the training loop over a Run's steps, with callbacks; resume() continues a run folder.

    result = fit(TrainConfig(data="my_data", backbone="resnet18"), callbacks=[MyCallback()])
    result = resume("snapshots/<run>", changes={"epochs": 30})

Every epoch's randomness (shuffle order, augmentation, dropout) is seeded from (seed, epoch), and the RNG
states are saved in last.pth, so a run killed and resumed ends exactly like one never interrupted
(seeded, CPU).
"""

from __future__ import annotations

from pathlib import Path

from edgecls.engine.callbacks import Callback, CallbackList, default_callbacks
from edgecls.engine.config import TrainConfig
from edgecls.engine.interrupt import interrupted
from edgecls.engine.resume import resumed_config
from edgecls.engine.run import Run, RunResult


def fit(cfg: TrainConfig, callbacks: list[Callback] = (), log=None) -> RunResult:
    """Train a new run with these settings."""
    return train(Run.setup(cfg, log=log), callbacks)


def resume(target: str | Path, changes: dict | None = None, callbacks: list[Callback] = (), log=None) -> RunResult:
    """Continue the run in `target` (a run folder or its last.pth) exactly where it stopped."""
    cfg, run_dir, ckpt = resumed_config(target, changes or {})
    run = Run.setup(cfg, run_dir=run_dir, resume_from=ckpt, log=log)
    run.restore(ckpt)
    return train(run, callbacks)


def train(run: Run, callbacks: list[Callback] = ()) -> RunResult:
    """The loop: train an epoch, validate, record, let the callbacks speak (and stop it)."""
    hooks = CallbackList([*default_callbacks(run.cfg), *callbacks])
    run.log(run.describe())
    hooks.on_train_start(run)
    for epoch in range(run.start_epoch, run.cfg.epochs):
        metrics = run.train_epoch(epoch) if not run.interrupted else {}
        metrics.update(run.validate() if not run.interrupted else {})
        if run.interrupted:  # Ctrl-C: last.pth keeps the last complete epoch
            run.close()
            raise interrupted(run)
        run.end_epoch(epoch, metrics)
        hooks.on_epoch_end(run, metrics)
        if run.stop_reason is not None:
            break
    result = run.result()
    hooks.on_train_end(run, result)
    run.close()
    return result
