"""Optimizer, learning-rate schedule and loss for a TrainConfig."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from edgecls.engine.config import TrainConfig
from edgecls.errors import UserError


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
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
    """Per-step schedule: linear warmup, then cosine to 1% or step decay (x0.1 every 30 epochs)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.scheduler == "cosine":
            t = (step - warm) / max(1, total - warm)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if cfg.scheduler == "step":
            return 0.1 ** ((step // steps_per_epoch) // 30)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
