"""Graph passes NPU compilers want, on an onnx.ModelProto (each returns how many nodes it changed).

simplify (onnxsim, onnxslim as fallback) folds constants; then: Identity/Dropout removed,
BatchNormalization folded into the Conv/Gemm before it, Reshape before Gemm -> Flatten,
global ReduceMean/AveragePool -> GlobalAveragePool. These mirror Kneron's ONNX optimizer.
On INT8 QDQ files: the all-zero int32 bias zero points are dropped (see drop_int32_zero_points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from edgecls.export.onnx_export import name_nodes


@dataclass
class PassReport:
    simplifier: str = "skipped"
    simplifier_note: str = ""
    changes: dict[str, int] = field(default_factory=dict)


def simplify(model: onnx.ModelProto, fuse_bn: bool = True) -> tuple[onnx.ModelProto, str, str]:
    """onnxsim first (checked against ORT); onnxslim when onnxsim fails; else the model unchanged."""
    notes = []
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model, skip_fuse_bn=not fuse_bn)
        if ok:
            return simplified, "onnxsim", ""
        notes.append("onnxsim: result failed its own check")
    except Exception as exc:  # onnxsim raises many types on graphs it cannot handle
        notes.append(f"onnxsim: {type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''}")
    try:
        import onnxslim

        slimmed = onnxslim.slim(model, no_shape_infer=False, skip_fusion_patterns=None if fuse_bn else ["FusionConvBN"])
        if slimmed is not None:
            return slimmed, "onnxslim", "; ".join(notes)
    except Exception as exc:
        notes.append(f"onnxslim: {type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''}")
    return model, "none", "; ".join(notes)


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _set_initializer(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    inits = _initializers(model)
    tensor = numpy_helper.from_array(array.astype(np.float32), name)
    if name in inits:
        inits[name].CopyFrom(tensor)
    else:
        model.graph.initializer.append(tensor)


def _rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    for node in model.graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Constant nodes (e.g. Clip's min/max) become initializers: NPU compilers expect weights, not nodes."""
    moved = 0
    for node in list(model.graph.node):
        if node.op_type != "Constant" or len(node.attribute) != 1 or node.attribute[0].name != "value":
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
        model.graph.node.remove(node)
        moved += 1
    return moved


def remove_identities(model: onnx.ModelProto) -> int:
    """Drop Identity and Dropout (inference no-ops), wiring consumers to the node's input."""
    graph_outputs = {o.name for o in model.graph.output}
    graph_inputs = {i.name for i in model.graph.input}
    removed = 0
    for node in list(model.graph.node):
        if node.op_type not in ("Identity", "Dropout") or len(node.input) < 1:
            continue
        src, dst = node.input[0], node.output[0]
        if len(node.output) > 1 and any(node.output[1:]):
            continue  # Dropout mask used downstream
        if dst in graph_outputs:
            if src in graph_inputs or src in graph_outputs or src in _initializers(model):
                continue
            model.graph.node.remove(node)
            _rename_tensor(model, src, dst)
        else:
            model.graph.node.remove(node)
            _rename_tensor(model, dst, src)
        removed += 1
    return removed


def _bn_params(bn: onnx.NodeProto, inits: dict) -> tuple[np.ndarray, np.ndarray] | None:
    if len(bn.input) < 5 or not all(n in inits for n in bn.input[1:5]):
        return None
    gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """BatchNormalization after Conv (or Gemm, channel axis 1) folded into its weights and bias."""
    folded = 0
    graph_outputs = {o.name for o in model.graph.output}
    for bn in list(model.graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 and any(bn.output[1:]):
            continue
        inits = _initializers(model)
        producer = next((n for n in model.graph.node if bn.input[0] in n.output), None)
        if producer is None or producer.op_type not in ("Conv", "Gemm"):
            continue
        if len(_consumers(model).get(bn.input[0], [])) != 1 or bn.input[0] in graph_outputs:
            continue
        params = _bn_params(bn, inits)
        if params is None or producer.input[1] not in inits:
            continue
        scale, shift = params
        weight = numpy_helper.to_array(inits[producer.input[1]]).astype(np.float64)
        if producer.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in producer.attribute}
            if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
                continue
            trans_b = attrs.get("transB", 0)
            weight = weight * (scale[:, None] if trans_b else scale[None, :])
        else:
            weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
        out_channels = scale.shape[0]
        if len(producer.input) > 2 and producer.input[2]:
            if producer.input[2] not in inits:
                continue
            bias = numpy_helper.to_array(inits[producer.input[2]]).astype(np.float64)
            if bias.shape != (out_channels,):
                continue
        else:
            bias = np.zeros(out_channels)
        w_name, b_name = f"{producer.name}_folded_weight", f"{producer.name}_folded_bias"
        _set_initializer(model, w_name, weight)
        _set_initializer(model, b_name, bias * scale + shift)
        producer.input[:] = [producer.input[0], w_name, b_name]
        model.graph.node.remove(bn)
        _rename_tensor(model, producer.output[0], bn.output[0])
        folded += 1
    if folded:
        _drop_unused_initializers(model)
    return folded


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _static_shapes(model: onnx.ModelProto) -> dict[str, list]:
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def reshape_to_flatten(model: onnx.ModelProto) -> int:
    """Reshape(x, [N, -1]) feeding a Gemm -> Flatten(axis=1): what NPU compilers map to a FC input."""
    inits, consumers, shapes = _initializers(model), _consumers(model), _static_shapes(model)
    changed = 0
    for node in list(model.graph.node):
        if node.op_type != "Reshape" or node.input[1] not in inits:
            continue
        if not consumers.get(node.output[0]) or any(c.op_type != "Gemm" for c in consumers[node.output[0]]):
            continue
        target = numpy_helper.to_array(inits[node.input[1]]).tolist()
        dims = shapes.get(node.input[0])
        if len(target) != 2 or not dims or len(dims) < 2 or any(d is None for d in dims[1:]):
            continue
        features = math.prod(dims[1:])
        batch_ok = (
            target[0] == 0
            or (dims[0] is not None and target[0] in (dims[0], -1) and target[1] in (features, -1))
            or (target[0] == -1 and target[1] == features)
        )
        if not batch_ok or target[1] not in (features, -1):
            continue
        flat = helper.make_node("Flatten", [node.input[0]], list(node.output), name=f"{node.name}_flatten", axis=1)
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(index, flat)
        changed += 1
    if changed:
        _drop_unused_initializers(model)
    return changed


def global_pooling(model: onnx.ModelProto) -> int:
    """ReduceMean over H,W and whole-map AveragePool -> GlobalAveragePool (+ Flatten when keepdims=0)."""
    shapes = _static_shapes(model)
    inits = _initializers(model)
    changed = 0
    for node in list(model.graph.node):
        dims = shapes.get(node.input[0]) if node.input else None
        if not dims or len(dims) != 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        replacement: list[onnx.NodeProto] = []
        if node.op_type == "ReduceMean":
            axes = attrs.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1] in inits:
                axes = numpy_helper.to_array(inits[node.input[1]]).tolist()
            if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
                continue
            if attrs.get("keepdims", 1):
                replacement = [
                    helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]], name=f"{node.name}_gap")
                ]
            else:
                mid = f"{node.output[0]}_gap"
                replacement = [
                    helper.make_node("GlobalAveragePool", [node.input[0]], [mid], name=f"{node.name}_gap"),
                    helper.make_node("Flatten", [mid], [node.output[0]], name=f"{node.name}_flatten", axis=1),
                ]
        elif node.op_type == "AveragePool":
            kernel = list(attrs.get("kernel_shape", []))
            if None in dims[2:] or kernel != dims[2:] or any(attrs.get("pads", [0])) or attrs.get("ceil_mode", 0):
                continue
            replacement = [
                helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]], name=f"{node.name}_gap")
            ]
        else:
            continue
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        for offset, new in enumerate(replacement):
            model.graph.node.insert(index + offset, new)
        changed += 1
    if changed:
        _drop_unused_initializers(model)
    return changed


def drop_int32_zero_points(model: onnx.ModelProto) -> int:
    """Remove the zero-point input of DequantizeLinear nodes over int32 initializers (quantized biases)
    when it is all zeros. The ONNX spec says int32 dequantization has no zero point (it is 0, also the
    default when the input is absent), yet ONNX Runtime's quantizer writes one int32 zero per output
    channel: 4 bytes per channel, ~3.5% of a small INT8 file. Outputs are bit-identical and ORT still
    fuses the QDQ groups into QLinearConv / QGemm."""
    inits = _initializers(model)
    dropped = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or not node.input[2]:
            continue
        x, zero_point = inits.get(node.input[0]), inits.get(node.input[2])
        if x is None or zero_point is None or x.data_type != onnx.TensorProto.INT32:
            continue
        if numpy_helper.to_array(zero_point).any():
            continue
        del node.input[2]
        dropped += 1
    if dropped:
        _drop_unused_initializers(model)
    return dropped


def optimize(
    model: onnx.ModelProto, *, simplify_graph: bool = True, fuse_bn: bool = True
) -> tuple[onnx.ModelProto, PassReport]:
    """Run simplify and every graph pass; the report counts what each pass changed."""
    report = PassReport()
    if simplify_graph:
        model, report.simplifier, report.simplifier_note = simplify(model, fuse_bn=fuse_bn)
    report.changes["Constant->initializer"] = constants_to_initializers(model)
    report.changes["Identity/Dropout removed"] = remove_identities(model)
    report.changes["BatchNorm folded"] = fold_batchnorm(model) if fuse_bn else 0
    report.changes["Reshape->Flatten"] = reshape_to_flatten(model)
    report.changes["global pool->GlobalAveragePool"] = global_pooling(model)
    name_nodes(model)
    return model, report
