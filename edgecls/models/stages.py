"""Parameter stages of a backbone, stem first and head last: the groups that discriminative learning
rates (`layer_decay`) and gradual unfreezing work on.

Built-in CNNs need no table: one forward pass at the model's input size finds where the feature map's
resolution drops, and consecutive layers at one resolution form a stage (the usual stage boundaries of
ResNet, MobileNetV2 and EfficientNet); every layer after the last feature map (pooling, dropout, the
classifier) is the head. A registry entry (or a plugin) may declare its own with
`register_model(..., stages=fn)`, where fn(model) returns lists of parameter names.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecls.errors import UserError


def stages_by_resolution(model: nn.Module, input_size: tuple[int, int]) -> list[list[str]]:
    """Parameter names grouped by the spatial size their layer outputs, in forward order; head last."""
    owner = {id(p): n for n, p in model.named_parameters()}
    order: list[tuple[list[str], int | None]] = []  # (param names, output height or None) per leaf layer run
    hooks = []

    def record(module, _inputs, output):
        names = [owner[id(p)] for p in module.parameters(recurse=False) if id(p) in owner]
        height = output.shape[2] if isinstance(output, torch.Tensor) and output.dim() == 4 else None
        if names:
            order.append((names, height))

    for module in model.modules():
        if next(module.parameters(recurse=False), None) is not None:
            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    seen: set[str] = set()
    groups: list[list[str]] = []
    last_height: object = object()
    for names, height in order:
        names = [n for n in names if n not in seen]
        seen.update(names)
        if not names:
            continue
        key = "head" if height is None else height
        if key != last_height:
            groups.append([])
            last_height = key
        groups[-1].extend(names)
    missing = [n for n in owner.values() if n not in seen]
    if missing:  # parameters the forward pass never touched (unused layers): with the stem, frozen last
        groups[0][:0] = missing
    return groups


def parameter_stages(model: nn.Module, spec, input_size: tuple[int, int]) -> list[list[str]]:
    """The entry's own stages when it declares them, else the resolution-based ones."""
    groups = spec.stages(model) if spec.stages is not None else stages_by_resolution(model, input_size)
    names = [n for g in groups for n in g]
    own = [n for n, _ in model.named_parameters()]
    if sorted(names) != sorted(own):
        raise UserError(f"backbone {spec.name}: its stages do not list every parameter exactly once")
    return [g for g in groups if g]
