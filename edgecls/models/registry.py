"""Backbone registry: one decorator per model entrypoint and one `create_model` factory.

Each entry knows its default input size (H, W) and preprocessing preset, so a user only
names the backbone. Plugins: any `*.py` in `--model-def-path` that calls `register_model`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from edgecls.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int] = (224, 224)
    preprocess: str = "imagenet"
    has_pretrained: bool = False
    description: str = ""
    source: str = "builtin"
    defaults: dict = field(default_factory=dict)
    stages: Callable[[nn.Module], list[list[str]]] | None = None  # parameter names, stem -> head (models/stages.py)


_REGISTRY: dict[str, ModelSpec] = {}


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def register_model(
    name: str,
    *,
    input_size: tuple[int, int] = (224, 224),
    preprocess: str = "imagenet",
    has_pretrained: bool = False,
    description: str = "",
    stages: Callable[[nn.Module], list[list[str]]] | None = None,
):
    """Decorator: `@register_model("resnet18", input_size=(224, 224))` over `fn(num_classes, **kw)`.

    stages: optional fn(model) -> lists of parameter names from stem to head, for layer-wise learning
    rates and gradual unfreezing; without it they are found by feature-map resolution (models/stages.py)."""

    def wrap(fn: Callable[..., nn.Module]):
        _REGISTRY[name] = ModelSpec(
            name=name,
            builder=fn,
            input_size=tuple(input_size),
            preprocess=preprocess,
            has_pretrained=has_pretrained,
            description=description or _first_line(fn.__doc__),
            source=getattr(fn, "__module__", "builtin"),
            stages=stages,
        )
        return fn

    return wrap


def _ensure_builtins() -> None:
    # Importing the family modules runs their @register_model decorators.
    from edgecls.models import (  # noqa: F401
        classic_cnn,
        conv_autoencoder,
        efficientnet,
        fp_classifier,
        torchvision_models,
        vit,
    )


def list_models() -> list[str]:
    _ensure_builtins()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    _ensure_builtins()
    if name not in _REGISTRY:
        raise UserError(
            f"`backbone` {name!r} is not registered; choose one of {', '.join(sorted(_REGISTRY))} "
            "or add a plugin file under `model_def_path`"
        )
    return _REGISTRY[name]


def takes_kwarg(name: str, kwarg: str) -> bool:
    """Does the backbone's builder accept `kwarg` (e.g. dropout)?"""
    import inspect

    params = inspect.signature(get_spec(name).builder).parameters
    return kwarg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def create_model(name: str, num_classes: int, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a registered backbone with a fresh `num_classes` head."""
    spec = get_spec(name)
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    if pretrained and not spec.has_pretrained:
        raise UserError(
            f"`pretrained`: no offline weights are installed for {name!r}; "
            f"backbones with weights: {', '.join(n for n in list_models() if _REGISTRY[n].has_pretrained)}"
        )
    if pretrained:
        kwargs["pretrained"] = True
    return spec.builder(num_classes=num_classes, **kwargs)


def load_plugins(model_def_path: str | os.PathLike | None) -> list[str]:
    """Import every `*.py` in the folder (each registers its backbones); return new names."""
    if not model_def_path:
        return []
    folder = Path(model_def_path)
    if not folder.exists():
        return []  # the default ./models/ may be absent when running from elsewhere
    if not folder.is_dir():
        raise UserError(f"`model_def_path` {folder}: not a folder")
    _ensure_builtins()
    before = set(_REGISTRY)
    for file in sorted(folder.glob("*.py")):
        if file.name.startswith("_"):
            continue
        mod_name = f"edgecls_plugin_{file.stem}"
        if mod_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(mod_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # a user's plugin failing is their input, not our bug
            del sys.modules[mod_name]
            raise UserError(f"{file}: model definition failed to import: {exc!r}") from None
    return sorted(set(_REGISTRY) - before)
