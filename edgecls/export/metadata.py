"""ONNX metadata contract: the same `classes` and `preprocess` as the checkpoint, as JSON.

metadata_props keys:
    edgecls.format         "edgecls-onnx/1"
    edgecls.kind           "classifier" | "embedding" | "prototypes" (absent in older files: classifier)
    edgecls.classes        JSON list of class names, index = output column ([] for an embedding export)
    edgecls.preprocess     JSON of Preprocess.to_dict()
    edgecls.backbone       backbone name (informational)
    edgecls.softmax        "1" when the graph already ends in Softmax, else "0"
    edgecls.source_sha256  sha256 of the checkpoint it was exported from, or "pretrained:<backbone>"
    edgecls.temperature    prototypes only: the host tail is softmax(temperature * cosine)
A .onnx file with these is enough to classify (or embed) an image correctly.
"""

from __future__ import annotations

import json

import onnx

from edgecls.data.presets import Preprocess
from edgecls.errors import UserError

FORMAT = "edgecls-onnx/1"
KINDS = ("classifier", "embedding", "prototypes", "autoencoder")


def write_metadata(
    model: onnx.ModelProto,
    *,
    classes: list[str],
    preprocess: Preprocess,
    backbone: str,
    softmax: bool = False,
    kind: str = "classifier",
    source_sha256: str = "",
    temperature: float | None = None,
) -> onnx.ModelProto:
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {KINDS}")
    values = {
        "edgecls.format": FORMAT,
        "edgecls.kind": kind,
        "edgecls.classes": json.dumps(list(classes)),
        "edgecls.preprocess": json.dumps(preprocess.to_dict()),
        "edgecls.backbone": backbone,
        "edgecls.softmax": "1" if softmax else "0",
        "edgecls.source_sha256": source_sha256,
    }
    if temperature is not None:
        values["edgecls.temperature"] = repr(float(temperature))
    drop = set(values) | {"edgecls.temperature"}
    keep = [p for p in model.metadata_props if p.key not in drop]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    return model


def read_metadata(props: dict[str, str], path: str = "model.onnx") -> dict:
    """From a {key: value} map (onnx or onnxruntime's custom_metadata_map) to {'classes', 'preprocess'
    (Preprocess), 'backbone', 'softmax', 'kind', 'source_sha256', 'temperature' (float | None)};
    missing keys -> UserError."""
    if "edgecls.classes" not in props or "edgecls.preprocess" not in props:
        raise UserError(
            f"{path}: carries no edgecls metadata (classes, preprocessing); export it with pytorch2onnx.py, "
            "or pass `class_id_path` and `input_size`/`preprocess`"
        )
    kind = props.get("edgecls.kind", "classifier")
    try:
        classes = json.loads(props["edgecls.classes"])
        preprocess = Preprocess.from_dict(json.loads(props["edgecls.preprocess"]))
        temperature = float(props["edgecls.temperature"]) if "edgecls.temperature" in props else None
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: edgecls metadata is malformed ({exc})") from None
    if kind not in KINDS:
        raise UserError(f"{path}: edgecls.kind {kind!r} is not one this edgecls reads ({', '.join(KINDS)}); upgrade")
    if kind == "prototypes" and temperature is None:
        raise UserError(f"{path}: a prototypes export without edgecls.temperature; re-export it with pytorch2onnx.py")
    return {
        "classes": [str(c) for c in classes],
        "preprocess": preprocess,
        "backbone": props.get("edgecls.backbone", ""),
        "softmax": props.get("edgecls.softmax", "0") == "1",
        "kind": kind,
        "source_sha256": props.get("edgecls.source_sha256", ""),
        "temperature": temperature,
    }


def metadata_of(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}
