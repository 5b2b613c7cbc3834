"""ONNX metadata contract: the same `classes` and `preprocess` as the checkpoint, as JSON.

metadata_props keys:
    edgecls.format      "edgecls-onnx/1"
    edgecls.classes     JSON list of class names, index = output column
    edgecls.preprocess  JSON of Preprocess.to_dict()
    edgecls.backbone    backbone name (informational)
    edgecls.softmax     "1" when the graph already ends in Softmax, else "0"
A .onnx file with these is enough to classify an image correctly.
"""

from __future__ import annotations

import json

import onnx

from edgecls.data.presets import Preprocess
from edgecls.errors import UserError

FORMAT = "edgecls-onnx/1"


def write_metadata(
    model: onnx.ModelProto, *, classes: list[str], preprocess: Preprocess, backbone: str, softmax: bool = False
) -> onnx.ModelProto:
    values = {
        "edgecls.format": FORMAT,
        "edgecls.classes": json.dumps(list(classes)),
        "edgecls.preprocess": json.dumps(preprocess.to_dict()),
        "edgecls.backbone": backbone,
        "edgecls.softmax": "1" if softmax else "0",
    }
    keep = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    return model


def read_metadata(props: dict[str, str], path: str = "model.onnx") -> dict:
    """From a {key: value} map (onnx or onnxruntime's custom_metadata_map) to
    {'classes', 'preprocess' (Preprocess), 'backbone', 'softmax'}; missing keys -> UserError."""
    if "edgecls.classes" not in props or "edgecls.preprocess" not in props:
        raise UserError(
            f"{path}: carries no edgecls metadata (classes, preprocessing); export it with pytorch2onnx.py, "
            "or pass `class_id_path` and `input_size`/`preprocess`"
        )
    try:
        classes = json.loads(props["edgecls.classes"])
        preprocess = Preprocess.from_dict(json.loads(props["edgecls.preprocess"]))
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: edgecls metadata is malformed ({exc})") from None
    return {
        "classes": [str(c) for c in classes],
        "preprocess": preprocess,
        "backbone": props.get("edgecls.backbone", ""),
        "softmax": props.get("edgecls.softmax", "0") == "1",
    }


def metadata_of(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}
