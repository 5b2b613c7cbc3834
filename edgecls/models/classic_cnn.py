"""classic-cnn: the baseline of the catalog system we replace, made NPU-friendly.

`depth` blocks of Conv3x3 -> BatchNorm -> ReLU -> MaxPool(2) -> Dropout (channels `width`, doubling per
block), then three fully connected layers (hidden, hidden // 2, classes) with ReLU and Dropout between
them. Only Conv, BatchNormalization, Relu, MaxPool, Flatten and Gemm reach the ONNX graph (Dropout is
removed at export), every one on the kl520 profile. The flattened feature map's size depends on the input
size, so the builder takes it (the run passes it, and the checkpoint records it).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecls.errors import UserError
from edgecls.models.registry import register_model
from edgecls.models.torchvision_models import new_linear


def conv_block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Dropout(dropout),
    )


@register_model("classic-cnn", input_size=(64, 64), preprocess="imagenet")
class ClassicCNN(nn.Module):
    """Conv/BN/ReLU/MaxPool/Dropout blocks then three fully connected layers; width, depth, hidden settable."""

    def __init__(
        self,
        num_classes: int,
        width: int = 32,
        depth: int = 3,
        hidden: int = 256,
        dropout: float = 0.3,
        conv_dropout: float = 0.1,
        input_size=(64, 64),
    ):
        super().__init__()
        height, wide = (int(v) for v in input_size)
        if width < 1 or depth < 1 or hidden < 2:
            raise UserError(f"classic-cnn: width {width}, depth {depth}, hidden {hidden}: each must be positive")
        if min(height, wide) < 2**depth:
            raise UserError(
                f"classic-cnn: input {height}x{wide} is too small for depth {depth} (each block halves it); "
                f"use an input of at least {2**depth} or a smaller depth"
            )
        blocks, cin = [], 3
        for i in range(depth):
            cout = width * 2**i
            blocks.append(conv_block(cin, cout, conv_dropout))
            cin, height, wide = cout, height // 2, wide // 2
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(cin * height * wide, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.classifier = new_linear(hidden // 2, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.features(x)))
