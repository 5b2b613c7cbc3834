"""train.py's CPU thread budget (edgecls.threads), made as training starts: by then the loaders say whether
DataLoader worker processes decode images every epoch (cache mode none: they compete with the model for the
cores) or a cache serves the batches in this process (no worker is busy)."""

from __future__ import annotations

from edgecls import threads
from edgecls.engine.callbacks import Callback


class ApplyThreadBudget(Callback):
    def __init__(self, requested: int = 0):
        self.requested = requested
        self.budget: threads.ThreadBudget | None = None

    def on_train_start(self, run) -> None:
        workers = run.cfg.workers if run.loaders.mode == "none" else 0
        self.budget = threads.configure(self.requested, workers, log=run.log)
