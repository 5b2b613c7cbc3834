"""Example plugin: a tiny 4-layer CNN registered as `tinynet`.

Any `*.py` file in the folder given by `--model-def-path` (default `./models/`) is imported
before training, export or inference; calling `register_model` there makes the backbone
available by name, exactly like the built-in ones:

    python train.py DATA --backbone tinynet --input-size 32 --model-def-path ./models/

Checkpoints record only the name and constructor kwargs, so every later step
(inference.py, eval, export) needs the same `--model-def-path` to rebuild the network.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecls.models import register_model


def conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 conv + BatchNorm + ReLU: the operators every edge NPU runs natively."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, width, 2),
            conv_bn_relu(width, width * 2, 2),
            conv_bn_relu(width * 2, width * 4, 2),
            conv_bn_relu(width * 4, width * 4, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


# input_size is (H, W); preprocess is one of the presets: kneron | imagenet | unit | lite.
@register_model("tinynet", input_size=(32, 32), preprocess="kneron")
def tinynet(num_classes: int, width: int = 16) -> nn.Module:
    """Tiny 4-layer CNN example plugin (models/example_tinynet.py), 32x32."""
    return TinyNet(num_classes, width=width)
