"""Optimizer (one parameter group per backbone stage), learning-rate schedule and loss for a TrainConfig.

Stages come from the registry (edgecls/models/stages.py), stem first, head last. With `layer_decay` d the
head trains at `lr` and each stage below at d times the stage above (discriminative rates, ULMFiT / BEiT).
Schedules are torch's own, chained with SequentialLR and stepped once per batch; each group keeps its ratio.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.optim import lr_scheduler

from edgecls.engine.config import TrainConfig
from edgecls.errors import UserError

WARMUP_START = 0.01  # warmup starts at this fraction of each group's rate
COSINE_FLOOR = 0.01  # cosine ends at this fraction (as Kneron's trainer did)
SLANTED_RATIO = 32  # slanted-triangular: the lowest rate is the peak / this (ULMFiT)
SLANTED_CUT = 0.1  # ... and the peak comes at this fraction of the steps when warmup_epochs is 0
STEP_EPOCHS = 30  # step schedule: x0.1 every this many epochs


def stage_parameters(model: nn.Module, stages: list[list[str]]) -> list[list[nn.Parameter]]:
    named = dict(model.named_parameters())
    return [[named[n] for n in names] for names in stages]


def param_groups(model: nn.Module, stages: list[list[str]], lr: float, layer_decay: float) -> list[dict]:
    """One optimizer group per stage, the head at lr and each stage below at layer_decay times the next."""
    groups = []
    depth = len(stages) - 1
    for i, params in enumerate(stage_parameters(model, stages)):
        groups.append({"params": params, "lr": lr * layer_decay ** (depth - i), "stage": i})
    return groups


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """`params`: parameters or param-group dicts (each group's own lr is kept)."""
    name = cfg.optimizer.upper()
    if name == "SGD":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
        )
    if name == "ASGD":
        return torch.optim.ASGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "ADAM":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "ADAMW":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise UserError(f"`optimizer` {cfg.optimizer}: choose one of SGD, ASGD, ADAM, ADAMW")


def make_scheduler(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    """Per-step schedule: [linear warmup ->] cosine | step | constant; or slanted-triangular / onecycle."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    if cfg.scheduler == "onecycle":
        peaks = [g["lr"] for g in optimizer.param_groups]
        pct = warm / total if warm > 0 else 0.3
        return lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total, pct_start=max(pct, 1 / total))
    if cfg.scheduler == "slanted-triangular":
        cut = warm if warm > 0 else max(1, int(SLANTED_CUT * total))
        up = lr_scheduler.LinearLR(optimizer, start_factor=1 / SLANTED_RATIO, end_factor=1.0, total_iters=cut)
        down = lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=1 / SLANTED_RATIO, total_iters=total - cut)
        return lr_scheduler.SequentialLR(optimizer, [up, down], milestones=[cut])
    if cfg.scheduler == "cosine":
        main = lr_scheduler.LambdaLR(optimizer, _Cosine(total - warm))
    elif cfg.scheduler == "step":
        main = lr_scheduler.StepLR(optimizer, step_size=STEP_EPOCHS * steps_per_epoch, gamma=0.1)
    else:
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warm <= 0:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_START, end_factor=1.0, total_iters=warm)
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warm])


class _Cosine:
    """Cosine from 1 to COSINE_FLOOR of each group's own rate over `steps` (a picklable LambdaLR factor).
    Not CosineAnnealingLR: its floor, eta_min, is one absolute rate for every group, so with per-stage
    rates the lower stages would end above their own peak's 1% and the ratios between stages be lost."""

    def __init__(self, steps: int):
        self.steps = max(1, steps)

    def __call__(self, step: int) -> float:
        t = min(1.0, step / self.steps)
        return COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * t))


def trainable_stages(cfg: TrainConfig, epoch: int, num_stages: int) -> int:
    """How many stages (counted from the head) train in `epoch` (0-based)."""
    if epoch < cfg.head_epochs:
        return 1
    if cfg.gradual_unfreeze:
        return min(num_stages, epoch - cfg.head_epochs + 1)
    return num_stages


def apply_freezing(model: nn.Module, stages: list[list[str]], trainable: int, frozen_backbone: bool) -> None:
    """requires_grad for this epoch: the top `trainable` stages (only the head with freeze_backbone)."""
    keep = 1 if frozen_backbone else trainable
    for i, params in enumerate(stage_parameters(model, stages)):
        for p in params:
            p.requires_grad_(i >= len(stages) - keep)


def class_weight_tensor(spec: str, counts: list[int]) -> torch.Tensor | None:
    """none | balanced (inverse frequency) | comma list, one weight per class."""
    if spec in (None, "", "none"):
        return None
    if spec == "balanced":
        total, n = sum(counts), len(counts)
        return torch.tensor([total / (n * c) if c else 0.0 for c in counts], dtype=torch.float32)
    try:
        weights = [float(v) for v in spec.split(",")]
    except ValueError:
        raise UserError(f"`class_weights` {spec!r}: use none, balanced, or one number per class like 1,2.5,1") from None
    if len(weights) != len(counts):
        raise UserError(f"`class_weights` has {len(weights)} values but the dataset has {len(counts)} classes")
    return torch.tensor(weights, dtype=torch.float32)


def make_loss(cfg: TrainConfig, counts: list[int]) -> nn.Module:
    return nn.CrossEntropyLoss(
        weight=class_weight_tensor(cfg.class_weights, counts), label_smoothing=cfg.label_smoothing
    )


def head_module(model: nn.Module) -> nn.Module:
    """The classifier head: the last nn.Linear in module order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("`freeze_backbone`: this backbone has no Linear head to keep trainable")
    return linears[-1]


def freeze_backbone(model: nn.Module) -> None:
    head = head_module(model)
    head_params = {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad = id(p) in head_params
