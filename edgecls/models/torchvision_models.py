"""torchvision mobilenetv2 / resnet18 / resnet50 with a new head (Kneron's init).

`pretrained=True` loads torchvision's ImageNet weights from the torch hub cache ($TORCH_HOME/hub/checkpoints,
default ~/.cache/torch): nothing is downloaded at run time. On a connected machine the file arrives with
`python -c "import torchvision; torchvision.models.resnet18(weights='DEFAULT')"`; offline, copy it there.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from edgecls.errors import UserError
from edgecls.models.registry import register_model


def hub_weights(name: str, weights) -> dict:
    """The state_dict of a torchvision weights entry, read from the hub cache only."""
    filename = weights.url.rsplit("/", 1)[-1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise UserError(
            f"`pretrained` {name}: torchvision's ImageNet weights are not in the torch hub cache; place {filename} "
            f"(from {weights.url}) in {path.parent} (set TORCH_HOME to use another cache)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file is the user's to replace
        raise UserError(f"`pretrained` {name}: {path} is not a readable weights file ({exc}); replace it") from None


def new_linear(in_features: int, num_classes: int) -> nn.Linear:
    """The Kneron head init: xavier-uniform weights, bias 0.01."""
    layer = nn.Linear(in_features, num_classes)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.constant_(layer.bias, 0.01)
    return layer


@register_model("mobilenetv2", input_size=(224, 224), preprocess="imagenet", has_pretrained=True)
def mobilenetv2(num_classes: int, dropout: float = 0.2, width_mult: float = 1.0, pretrained: bool = False) -> nn.Module:
    """torchvision MobileNetV2 (width 1.0), new Linear head; ImageNet weights from the torch hub cache."""
    model = torchvision.models.mobilenet_v2(weights=None, width_mult=width_mult, dropout=dropout)
    if pretrained:
        model.load_state_dict(hub_weights("mobilenetv2", torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1))
    model.classifier[-1] = new_linear(model.classifier[-1].in_features, num_classes)
    return model


@register_model("resnet18", input_size=(224, 224), preprocess="imagenet", has_pretrained=True)
def resnet18(num_classes: int, pretrained: bool = False) -> nn.Module:
    """torchvision ResNet18, new Linear head; ImageNet weights from the torch hub cache."""
    model = torchvision.models.resnet18(weights=None)
    if pretrained:
        model.load_state_dict(hub_weights("resnet18", torchvision.models.ResNet18_Weights.IMAGENET1K_V1))
    model.fc = new_linear(model.fc.in_features, num_classes)
    return model


@register_model("resnet50", input_size=(224, 224), preprocess="imagenet", has_pretrained=True)
def resnet50(num_classes: int, pretrained: bool = False) -> nn.Module:
    """torchvision ResNet50, new Linear head; ImageNet weights from the torch hub cache."""
    model = torchvision.models.resnet50(weights=None)
    if pretrained:
        model.load_state_dict(hub_weights("resnet50", torchvision.models.ResNet50_Weights.IMAGENET1K_V1))
    model.fc = new_linear(model.fc.in_features, num_classes)
    return model
