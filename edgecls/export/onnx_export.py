"""torch.nn.Module -> onnx.ModelProto: fixed 1x3xHxW input (NPUs want batch 1), every node named.

Uses the TorchScript exporter (`dynamo=False`), which writes opsets 11-13 that NPU toolchains read.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter

import onnx
import torch
import torch.nn as nn

from edgecls.atomic import atomic_write_bytes
from edgecls.errors import UserError

DEFAULT_OPSET = 13
SUPPORTED_OPSETS = (11, 12, 13)
INPUT_NAME, OUTPUT_NAME = "input", "output"


class _WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(self.model(x), dim=1)


def export_onnx(
    model: nn.Module,
    input_size: tuple[int, int],
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    softmax: bool = False,
    fuse_bn: bool = True,
) -> onnx.ModelProto:
    """Trace `model` (eval mode) at 1x3xHxW. fuse_bn=False keeps BatchNormalization nodes."""
    if opset not in SUPPORTED_OPSETS:
        raise UserError(
            f"`opset` {opset}: choose one of {', '.join(map(str, SUPPORTED_OPSETS))} (NPU toolchains read 11-13)"
        )
    model = model.eval()
    net = _WithSoftmax(model) if softmax else model
    dummy = torch.zeros(1, 3, *input_size)
    buf = io.BytesIO()
    # EVAL mode folds Conv+BatchNorm in the exporter; PRESERVE (model still in eval) keeps BN nodes.
    training = torch.onnx.TrainingMode.EVAL if fuse_bn else torch.onnx.TrainingMode.PRESERVE
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                net,
                (dummy,),
                buf,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                do_constant_folding=True,
                training=training,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
            )
        except RuntimeError as exc:
            raise UserError(
                f"torch.onnx.export failed at {input_size[0]}x{input_size[1]}, opset {opset}: "
                f"{str(exc).splitlines()[0][:300]}; try another `input_size` or `opset`"
            ) from None
    proto = onnx.load_model_from_string(buf.getvalue())
    name_nodes(proto)
    return proto


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every node a unique, readable name (`Conv_12`); NPU compilers report errors by node name."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        name = node.name.strip("/").replace("/", "_") or f"{node.op_type}_{index}"
        if name in seen:
            name = f"{name}_{index}"
        seen.add(name)
        node.name = name


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def save_onnx_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> int:
    """Write to a temp file beside the target, then rename: no half-written .onnx after a crash."""
    data = model.SerializeToString()
    atomic_write_bytes(data, path, fsync=True)
    return len(data)
