"""An exponential moving average of the weights (timm's --model-ema), on torch's AveragedModel.

The decay comes from the run's step count: the average's time constant is EMA_FRACTION of all training
steps, so a 100-step fine-tune averages over about its last 10 steps and a 100k-step run over its last
10k (a fixed 0.9998 would leave a short run's average on its first, untrained weights). Buffers (BatchNorm
running statistics) are averaged too.
"""

from __future__ import annotations

import math

import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

EMA_FRACTION = 0.1


def ema_decay(total_steps: int) -> float:
    return math.exp(-1.0 / max(1.0, EMA_FRACTION * total_steps))


class ModelEma:
    def __init__(self, model: nn.Module, total_steps: int):
        self.decay = ema_decay(total_steps)
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)

    @property
    def module(self) -> nn.Module:
        """The averaged network (same class as the model)."""
        return self.averaged.module

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state)
