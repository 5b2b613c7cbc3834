"""Checkpoint contract (docs/ARCHITECTURE.md): metadata + state_dict, written atomically, read safely.

    {"format": "edgecls-checkpoint/1",
     "model": {"name": "resnet18", "kwargs": {...}},
     "task": "classify",
     "classes": ["ants", "bees"],
     "preprocess": {...Preprocess.to_dict()...},
     "state_dict": {...},
     "model_name": "..."             # optional: train.py --model-name
     "train": {...resume state...}   # optional
     "metrics": {...}                # optional
     "data": {"root", "train", "val"}  # optional: the folders it was trained and validated on
     "recipe": {"name", "sources"}}    # optional: the training recipe and which settings came from it

Loading always uses `torch.load(weights_only=True)`: a checkpoint can never run code.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecls.atomic import atomic_path
from edgecls.data.presets import Preprocess
from edgecls.errors import UserError

FORMAT = "edgecls-checkpoint/1"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)


def make_checkpoint(
    model: nn.Module,
    *,
    backbone: str,
    model_kwargs: dict,
    classes: list[str],
    preprocess: Preprocess,
    train_state: dict | None = None,
    metrics: dict | None = None,
    model_name: str | None = None,
    data: dict | None = None,
    task: str = "classify",
    recipe: dict | None = None,
) -> dict:
    """data: where the training images came from ({"root", "train", "val"} folders), so export and eval
    find the validation images from the checkpoint alone."""
    model = getattr(model, "module", model)  # unwrap DDP
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    ckpt = {
        "format": FORMAT,
        "model": {"name": backbone, "kwargs": dict(model_kwargs)},
        "task": task,
        "classes": list(classes),
        "preprocess": preprocess.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if model_name is not None:
        ckpt["model_name"] = model_name
    if train_state is not None:
        ckpt["train"] = train_state
    if metrics is not None:
        ckpt["metrics"] = metrics
    if data is not None:
        ckpt["data"] = dict(data)
    if recipe is not None:
        ckpt["recipe"] = dict(recipe)
    return ckpt


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    atomic_torch_save(ckpt, path)


_PICKLE_HINT = (
    "it is a full pickled model, and unpickling can run arbitrary code, so edgecls refuses it. "
    "Convert it once in a Python you trust: "
    "torch.save(torch.load(PATH, weights_only=False).state_dict(), 'weights.pth'), "
    "then pass weights.pth"
)


def load_raw(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True and user-facing errors."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: checkpoint not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Every weights_only failure mentions "weights_only"; only a pickled object (a full
        # model) names an unsupported global. Garbage bytes are "unreadable", not "unsafe".
        if "Unsupported global" in str(exc):
            raise UserError(f"{p}: {_PICKLE_HINT}") from None
        raise UserError(f"{p}: not a readable PyTorch checkpoint ({_unpickler_reason(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - torch.load on arbitrary bytes raises KeyError, RuntimeError, EOFError...
        detail = (str(exc).splitlines() or [type(exc).__name__ + ": empty or truncated file"])[0][:200]
        if isinstance(exc, KeyError):
            detail = f"unknown pickle opcode {exc}"
        raise UserError(f"{p}: not a readable PyTorch checkpoint ({detail})") from None


def _unpickler_reason(exc: Exception) -> str:
    """The reason in torch's weights_only message, without its advice to load unsafely."""
    text = str(exc)
    _, marker, rest = text.partition("WeightsUnpickler error:")
    reason = next((line.strip() for line in rest.splitlines() if line.strip()), "") if marker else ""
    return (reason or text.splitlines()[0])[:200]


def is_edgecls_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format", "").startswith("edgecls-checkpoint/")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load an edgecls checkpoint (metadata + state_dict)."""
    obj = load_raw(path)
    if not is_edgecls_checkpoint(obj):
        raise UserError(
            f"{path}: not an edgecls checkpoint (no format tag); a bare state_dict can be used "
            "as initial weights with `snapshot` together with `backbone`"
        )
    return obj


def extract_state_dict(obj: Any, path: str | os.PathLike) -> dict:
    """Weights from an edgecls checkpoint, a bare state_dict or a {'state_dict': ...} dict."""
    if is_edgecls_checkpoint(obj):
        return obj["state_dict"]
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {k.removeprefix("module."): v for k, v in obj.items()}
    raise UserError(f"{path}: holds no state_dict of tensors")


@dataclass
class LoadedModel:
    """A network rebuilt from a weights file, with what it needs to be used."""

    model: nn.Module  # eval mode, on the CPU
    backbone: str
    classes: list[str]
    preprocess: Preprocess
    checkpoint: dict | None  # the edgecls checkpoint; None for a bare state_dict


class WeightsMismatch(UserError):
    """The weights do not fit the network built for them; `detail` is torch's own account of why."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.detail = detail


def load_model(
    source: Any,
    *,
    backbone: str | None = None,
    classes: list[str] | None = None,
    model_def_path: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
) -> LoadedModel:
    """The one checkpoint-to-model loader. `source`: a file, or what load_raw read from `path`.

    An edgecls checkpoint rebuilds the network it names (`backbone` and `classes` are not used); a bare
    state_dict needs both, and takes the backbone's default preprocessing. Weights that do not fit raise
    WeightsMismatch; callers check their own settings against the checkpoint first."""
    from edgecls.models import create_model, get_spec, load_plugins

    if isinstance(source, (str, os.PathLike)):
        source, path = load_raw(source), source
    where = path if path is not None else "checkpoint"
    load_plugins(model_def_path)
    if is_edgecls_checkpoint(source):
        backbone, kwargs = source["model"]["name"], dict(source["model"].get("kwargs", {}))
        classes, preprocess = [str(c) for c in source["classes"]], Preprocess.from_dict(source["preprocess"])
    elif not backbone or classes is None:
        raise UserError(f"{where}: a bare state_dict (no edgecls metadata) needs a backbone and the class names")
    else:
        spec, kwargs = get_spec(backbone), {}
        preprocess = Preprocess(input_size=spec.input_size, preset=spec.preprocess)
    model = create_model(backbone, num_classes=len(classes), **kwargs)
    fit_weights(model, extract_state_dict(source, where), where, backbone, len(classes))
    checkpoint = source if is_edgecls_checkpoint(source) else None
    return LoadedModel(model.eval(), backbone, list(classes), preprocess, checkpoint)


def fit_weights(model: nn.Module, state: dict, path, backbone: str, num_classes: int) -> None:
    """load_state_dict with user-facing errors: a head of another size names both counts."""
    try:
        model.load_state_dict(state)
        return
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        detail = lines[1].strip() if len(lines) > 1 else str(exc)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    heads = [k for k in mismatched if own[k].shape[1:] == state[k].shape[1:] and own[k].shape[0] == num_classes]
    if mismatched and not missing and not unexpected and heads == mismatched:
        raise WeightsMismatch(
            f"{path}: the weights have {state[heads[0]].shape[0]} outputs but the class map has "
            f"{num_classes} classes; pass the class_id.json written with these weights",
            detail,
        )
    example = (missing or unexpected or mismatched)[:3]
    raise WeightsMismatch(
        f"{path}: weights do not fit `backbone` {backbone} (e.g. {example}); wrong `backbone`?", detail
    )


def model_from_checkpoint(ckpt: dict, model_def_path: str | None = None) -> nn.Module:
    """Rebuild the network named in an edgecls checkpoint and load its weights (eval mode)."""
    return load_model(ckpt, model_def_path=model_def_path).model


def load_initial_weights(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """`snapshot` (initial weights): load the matching tensors; a head of another size is skipped (reported)."""
    state = extract_state_dict(load_raw(path), path)
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    # BatchNorm's scalar step counters match in any two nets; they prove nothing.
    if not any(not k.endswith("num_batches_tracked") for k in compatible):
        raise UserError(f"`snapshot` {path}: no tensor matches this backbone's layers; wrong `backbone`?")
    model.load_state_dict(compatible, strict=False)
    return sorted(set(own) - set(compatible))
