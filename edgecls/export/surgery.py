"""NPU surgery on a PyTorch module: SE blocks out, NPU-unfriendly activations -> ReLU, Dropout out.

Edge NPUs (Kneron KL520/KL720 among them) run Conv/ReLU/Clip graphs well and either lack or
emulate slowly the Sigmoid-times-input patterns of Swish and Squeeze-and-Excitation. Removing
them changes the function a trained network computes, so the report says when that happened.

A transformer (a model with LayerNorm or attention: ViT, ConvNeXt) keeps its activations: its LayerNorm and
attention do not run on those NPUs either, so a GELU -> ReLU swap would only break what it computes; the
profile check names the nodes instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

# Activations an NPU typically lacks; each becomes nn.ReLU (Kneron's NPU-form recipe).
_ACTIVATION_TYPES: tuple[type, ...] = (nn.SiLU, nn.Hardswish, nn.GELU, nn.Hardsigmoid, nn.Mish)
_ACTIVATION_NAMES = {"Swish", "MemoryEfficientSwish", "SiLU", "HSwish", "HardSwish", "HSigmoid", "GELU", "Mish"}
# Squeeze-and-Excitation modules across families (torchvision, timm-style, user code).
_SE_NAMES = {"SqueezeExcitation", "SqueezeExcite", "SEModule", "SELayer", "SEBlock", "SqueezeExcitationBlock"}
# Modules that make a network a transformer (timm's Attention, torch's MultiheadAttention, LayerNorm, LayerNorm2d).
_TRANSFORMER_TYPES: tuple[type, ...] = (nn.LayerNorm, nn.MultiheadAttention)


@dataclass
class SurgeryReport:
    se_removed: list[str] = field(default_factory=list)  # module paths
    activations_replaced: list[tuple[str, str]] = field(default_factory=list)  # (path, old type)
    dropout_removed: list[str] = field(default_factory=list)
    activations_kept: list[tuple[str, str]] = field(default_factory=list)  # (path, type): a transformer's

    @property
    def changes_function(self) -> bool:
        """True when the surgery changed what the network computes (Dropout in eval mode does not)."""
        return bool(self.se_removed or self.activations_replaced)

    def summary(self) -> str:
        kept = ""
        if self.activations_kept:
            kinds = sorted({old for _, old in self.activations_kept})
            kept = (
                f"{len(self.activations_kept)} activation(s) ({', '.join(kinds)}) kept: a transformer, where ReLU "
                "would change what it computes (the profile check names what the chip lacks)"
            )
        if not (self.changes_function or self.dropout_removed):
            return kept or "nothing to change (already NPU form)"
        parts = []
        if self.se_removed:
            parts.append(f"{len(self.se_removed)} Squeeze-and-Excitation block(s) removed")
        if self.activations_replaced:
            kinds = sorted({old for _, old in self.activations_replaced})
            parts.append(f"{len(self.activations_replaced)} activation(s) ({', '.join(kinds)}) -> ReLU")
        if self.dropout_removed:
            parts.append(f"{len(self.dropout_removed)} Dropout removed")
        return "; ".join(parts + ([kept] if kept else []))


def _is_activation(module: nn.Module) -> bool:
    return isinstance(module, _ACTIVATION_TYPES) or type(module).__name__ in _ACTIVATION_NAMES


def _is_se(module: nn.Module) -> bool:
    return type(module).__name__ in _SE_NAMES


def is_transformer(model: nn.Module) -> bool:
    """Has LayerNorm or attention: its activations are part of the design, not an NPU-form choice."""
    return any(isinstance(m, _TRANSFORMER_TYPES) or type(m).__name__.endswith("Attention") for m in model.modules())


def npu_surgery(model: nn.Module) -> SurgeryReport:
    """Edit `model` in place (and put it in eval mode); return what changed."""
    report = SurgeryReport()
    model.eval()
    # efficientnet-pytorch keeps SE inside MBConvBlock behind a flag, not as a module.
    for path, module in model.named_modules():
        if type(module).__name__ == "MBConvBlock" and getattr(module, "has_se", False):
            module.has_se = False
            report.se_removed.append(path)
    _replace_children(model, "", report, keep_activations=is_transformer(model))
    return report


def _replace_children(parent: nn.Module, prefix: str, report: SurgeryReport, keep_activations: bool) -> None:
    for name, child in list(parent.named_children()):
        path = f"{prefix}.{name}" if prefix else name
        if _is_se(child):
            setattr(parent, name, nn.Identity())  # SE returns x * scale(x): without it, x
            report.se_removed.append(path)
        elif _is_activation(child) and keep_activations:
            report.activations_kept.append((path, type(child).__name__))
        elif _is_activation(child):
            setattr(parent, name, nn.ReLU())
            report.activations_replaced.append((path, type(child).__name__))
        elif isinstance(child, nn.Dropout | nn.Dropout2d | nn.AlphaDropout):
            setattr(parent, name, nn.Identity())
            report.dropout_removed.append(path)
        else:
            _replace_children(child, path, report, keep_activations)
