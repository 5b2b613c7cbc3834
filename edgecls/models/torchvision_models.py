"""torchvision mobilenetv2 / resnet18 / resnet50 with a new head (Kneron's init)."""

from __future__ import annotations

import torch.nn as nn
import torchvision

from edgecls.models.registry import register_model


def new_linear(in_features: int, num_classes: int) -> nn.Linear:
    """The Kneron head init: xavier-uniform weights, bias 0.01."""
    layer = nn.Linear(in_features, num_classes)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.constant_(layer.bias, 0.01)
    return layer


@register_model("mobilenetv2", input_size=(224, 224), preprocess="imagenet")
def mobilenetv2(num_classes: int, dropout: float = 0.2, width_mult: float = 1.0) -> nn.Module:
    """torchvision MobileNetV2 (width 1.0), new Linear head."""
    model = torchvision.models.mobilenet_v2(weights=None, width_mult=width_mult, dropout=dropout)
    model.classifier[-1] = new_linear(model.classifier[-1].in_features, num_classes)
    return model


@register_model("resnet18", input_size=(224, 224), preprocess="imagenet")
def resnet18(num_classes: int) -> nn.Module:
    """torchvision ResNet18, new Linear head."""
    model = torchvision.models.resnet18(weights=None)
    model.fc = new_linear(model.fc.in_features, num_classes)
    return model


@register_model("resnet50", input_size=(224, 224), preprocess="imagenet")
def resnet50(num_classes: int) -> nn.Module:
    """torchvision ResNet50, new Linear head."""
    model = torchvision.models.resnet50(weights=None)
    model.fc = new_linear(model.fc.in_features, num_classes)
    return model
