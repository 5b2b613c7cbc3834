"""BatchNorm statistics that describe the trained network ("precise BN", Wu & Johnson 2021).

A BatchNorm layer's running mean and variance are an exponential average over the whole trajectory: with
momentum 0.1 they still hold 0.9**steps of their initial values (mean 0, variance 1) and of early,
different weights. In a short run that residue is not small. Measured (issue 14, mobilenetv2 from scratch,
640 photos, 3 epochs = 60 steps): the depthwise-conv BatchNorms' running variances were 2-11x the true
variance of the final network (true variances ~1e-4..1e-3, residue 0.9**60 ~ 2e-3), so eval mode predicted
one class for every image while train mode (batch statistics) was 100% right; the training and eval input
pipelines gave the same statistics (within 1%), so the inputs were not the cause.

Frozen BatchNorms (`freeze_bn`, or those of frozen stages) are left as they are: their statistics are the
ones training used. After each epoch the other statistics are recomputed from scratch with a plain average over up to
`images` training images (forward only, no gradient), for the raw weights and the EMA's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


def is_batchnorm(module: nn.Module) -> bool:
    """A BatchNorm layer that keeps running statistics."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if is_batchnorm(m)]


@torch.no_grad()
def recompute_bn_stats(
    model: nn.Module, batches, images: int, device: torch.device, amp: bool = False, skip=frozenset()
) -> int:
    """Replace the running statistics of every BatchNorm but those in `skip` (they stay in eval mode) by their
    plain average over up to `images` images of `batches` (an iterable of (images, labels)); returns the
    images used (0: no BatchNorm, nothing done). Under DDP the statistics are then averaged over the ranks,
    so every rank holds the same."""
    layers = [m for m in batchnorms(model) if m not in skip]
    if not layers or images <= 0:
        return 0
    from edgecls.engine.loops import autocast_dtype

    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    was_training = model.training
    model.train()
    for m in skip:
        m.eval()
    seen = 0
    try:
        for x, _ in batches:
            take = min(len(x), images - seen)
            if take < 2:  # BatchNorm needs two images; a last single one adds nothing
                break
            with torch.autocast(device.type, dtype=autocast_dtype(device), enabled=amp):
                model(x[:take].to(device, non_blocking=True))
            seen += take
            if seen >= images:
                break
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        for m in layers:
            for buffer in (m.running_mean, m.running_var):
                dist.all_reduce(buffer)
                buffer /= world
    return seen
