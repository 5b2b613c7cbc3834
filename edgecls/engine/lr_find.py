"""The learning-rate range test (Smith 2017; fastai's lr_find): train for a few hundred steps while the
rate grows exponentially, record the loss, suggest a rate, and put the model back as it was.

The suggestion is the rate where the smoothed loss falls fastest (steepest descent against log rate),
taken before the loss's minimum; per-stage rate ratios (layer_decay) are kept during the sweep.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgecls.engine.loops import autocast_dtype

SMOOTHING = 0.05  # exponential smoothing of the recorded loss (bias-corrected)
DIVERGED = 4.0  # stop once the smoothed loss exceeds this times its minimum


@dataclass
class RangeTest:
    lrs: list[float] = field(default_factory=list)  # the head's rate at each step
    losses: list[float] = field(default_factory=list)  # smoothed
    suggestion: float | None = None
    steps: int = 0
    stopped_early: bool = False


def suggest(lrs: list[float], losses: list[float]) -> float | None:
    """The rate of steepest descent of the smoothed loss before its minimum (the first tenth of the sweep,
    where the smoothing settles, left out); when the loss never falls for long, a tenth of the rate at its
    minimum (Smith's rule). None with too few points."""
    if len(lrs) < 5:
        return None
    skip = max(1, len(lrs) // 10)
    lo = skip + int(np.argmin(losses[skip:]))
    if lo - skip >= 3:
        x, y = np.log10(lrs[skip : lo + 1]), np.asarray(losses[skip : lo + 1])
        pick = float(lrs[skip + int(np.argmin(np.gradient(y, x)))])
    else:
        pick = float(lrs[lo] / 10)
    return min(max(pick, lrs[0]), lrs[-1])


def range_test(model, optimizer, batches, criterion, device, *, start: float = 1e-7, end: float = 10.0,
               steps: int = 100, amp: bool = False) -> RangeTest:  # fmt: skip
    """Sweep the rate from `start` to `end` over `steps` optimizer steps on `batches` (an iterable that may be
    re-iterated); the model's and optimizer's states are restored afterwards."""
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    ratios = [g["lr"] for g in optimizer.param_groups]
    head = max(ratios) or 1.0
    ratios = [r / head for r in ratios]
    growth = (end / start) ** (1 / max(1, steps - 1))
    result, avg, best = RangeTest(), 0.0, math.inf
    model.train()
    try:
        for step, (images, labels) in enumerate(_cycle(batches, steps)):
            lr = start * growth**step
            for g, r in zip(optimizer.param_groups, ratios):
                g["lr"] = lr * r
            images, labels = images.to(device), labels.to(device)
            with torch.autocast(device.type, dtype=autocast_dtype(device), enabled=amp):
                loss = criterion(model(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            avg = SMOOTHING * loss.item() + (1 - SMOOTHING) * avg
            smoothed = avg / (1 - (1 - SMOOTHING) ** (step + 1))
            result.lrs.append(lr)
            result.losses.append(smoothed)
            result.steps = step + 1
            best = min(best, smoothed)
            if not math.isfinite(smoothed) or smoothed > DIVERGED * best:
                result.stopped_early = True
                break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_opt)
    finite = [(lr, v) for lr, v in zip(result.lrs, result.losses) if math.isfinite(v)]
    result.suggestion = suggest([a for a, _ in finite], [b for _, b in finite])
    return result


def find_lr(cfg, *, steps: int = 100, start: float = 1e-7, end: float = 10.0, log=None) -> RangeTest:
    """`edgecls lr-find`: the range test on the run `cfg` describes (its data, model, recipe and stage rates),
    writing no run folder."""
    from dataclasses import replace

    from edgecls.engine.optim import make_optimizer
    from edgecls.engine.run import Run

    run = Run.setup(replace(cfg, lr=1.0), run_dir=Path("lr-find-unused"), log=log, record=False)
    optimizer = make_optimizer(run.cfg, run._groups(1.0))
    return range_test(run.model, optimizer, run.loaders.train(0), run.criterion, run.device, start=start, end=end,
                      steps=steps, amp=run.cfg.amp)  # fmt: skip


def _cycle(batches, steps: int):
    """`steps` batches, starting the iterable again when it runs out."""
    done = 0
    while done < steps:
        produced = False
        for batch in batches:
            produced = True
            yield batch
            done += 1
            if done >= steps:
                return
        if not produced:
            return


def plot_range_test(result: RangeTest, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgecls.atomic import atomic_savefig

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, label="smoothed training loss")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggested lr {result.suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path)
