"""FP_classifier: Kneron's slim person/background net, a MobileNetV2 at 0.75 width.

Channels c -> c // 4 * 3, with four expansion widths pruned further (block 3: 96, block 5:
132, block 8: 276, block 12: 420), a 960-channel final 1x1 conv and Dropout + Linear head.
Input 56x32 (H x W). About 1.27 M parameters with 2 classes.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecls.models.registry import register_model
from edgecls.models.torchvision_models import new_linear


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, stride: int, expand: bool):
        super().__init__()
        layers = [_conv_bn_relu(cin, hidden, 1)] if expand else []
        layers += [
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# MobileNetV2 settings (expansion t, out channels c, repeats n, first stride s)
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
# 1-based block index -> pruned expansion width
_PRUNED_HIDDEN = {3: 96, 5: 132, 8: 276, 12: 420}


def _slim(c: int) -> int:
    return c // 4 * 3


class FPClassifier(nn.Module):
    def __init__(self, num_classes: int = 2, dropout: float = 0.2, last_channels: int = 960):
        super().__init__()
        cin = _slim(32)
        layers: list[nn.Module] = [_conv_bn_relu(3, cin, 3, stride=2)]
        block = 0
        for t, c, n, s in _SETTINGS:
            cout = _slim(c)
            for i in range(n):
                block += 1
                hidden = _PRUNED_HIDDEN.get(block, cin * t)
                layers.append(InvertedResidual(cin, hidden, cout, s if i == 0 else 1, expand=t != 1))
                cin = cout
        layers.append(_conv_bn_relu(cin, last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), new_linear(last_channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("FP_classifier", input_size=(56, 32), preprocess="kneron")
def fp_classifier(num_classes: int = 2, dropout: float = 0.2) -> nn.Module:
    """Slim MobileNetV2 person/background classifier, 56x32 input."""
    return FPClassifier(num_classes=num_classes, dropout=dropout)
