"""INT8 with ONNX Runtime static quantization: QDQ format, per-channel weights, calibrated on
real training images passed through the model's own preprocessing (the same as at inference)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static


class _ImageReader(CalibrationDataReader):
    def __init__(self, input_name: str, inputs: np.ndarray):
        self._items = iter([{input_name: inputs[i:i + 1]} for i in range(len(inputs))])

    def get_next(self):
        return next(self._items, None)


def quantize_int8(model: onnx.ModelProto, calib_inputs: np.ndarray, method: str = "minmax") -> onnx.ModelProto:
    """FP32 model + N preprocessed calibration images (N x 3 x H x W) -> INT8 QDQ model.

    Per-channel weight scales need QuantizeLinear's `axis` (opset 13); at opset 11/12 weights are per-tensor.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    props = [(p.key, p.value) for p in model.metadata_props]
    model = _short_names(model)
    with tempfile.TemporaryDirectory(prefix="edgecls-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, src)
        input_name = model.graph.input[0].name
        quantize_static(
            str(src), str(dst), _ImageReader(input_name, calib_inputs.astype(np.float32)),
            quant_format=QuantFormat.QDQ, per_channel=opset >= 13, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=calibrate,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
        quantized = onnx.load_model(dst)
    del quantized.metadata_props[:]
    for key, value in props:
        quantized.metadata_props.add(key=key, value=value)
    return quantized


def _short_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy with intermediate tensors renamed t0, t1...: QDQ adds a scale and zero point per tensor, each
    named after it, and long exporter names would cost several percent of a small INT8 file."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    keep = {v.name for v in [*model.graph.input, *model.graph.output]}
    names: dict[str, str] = {}
    for tensor in model.graph.initializer:
        names.setdefault(tensor.name, f"w{len(names)}")
        tensor.name = names[tensor.name]
    for node in model.graph.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name and name not in keep:
                    field[i] = names.setdefault(name, f"t{len(names)}")
    del model.graph.value_info[:]
    return model
