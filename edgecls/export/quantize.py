"""INT8 with ONNX Runtime static quantization: QDQ format, per-channel weights, calibrated on
real training images passed through the model's own preprocessing (the same as at inference).

Two steps beyond ONNX Runtime's defaults:
- Bias correction (Nagel et al., "Data-Free Quantization", 2019, empirical form): rounding the
  weights shifts each output channel's mean by E[x * dW]; that shift is measured on the
  calibration images (FP32 activations, the INT8 file's exact weights) and taken off the channel's
  bias. Depthwise convolutions (9 or 25 weights per channel, as in MobileNet / EfficientNet-Lite)
  are where it matters.
- Activation ranges from the 99.999th percentile of each tensor's values over the calibration
  images (`percentile`) rather than their extremes (`minmax`): one outlier pixel in one image no
  longer stretches a whole tensor's 256 levels.
Calibration runs in chunks, so memory holds a chunk's activations, not every image's.

Weights use 7 of their 8 bits (ONNX Runtime's `reduce_range`, |q| <= 64). ONNX Runtime runs a QDQ file by
fusing it into QLinearConv / QGemm, whose x86 kernels on CPUs without VNNI (AVX2 only) multiply uint8
activations by int8 weights with vpmaddubsw: two products are added into a saturating int16, and with
full-range weights (255 * 127 * 2 > 32767) that sum silently clips. The same INT8 file then scored
differently on different CPUs: on the test suite's digits checkpoint (FP_classifier 32x32, 150 val
images) on an AVX2-only AMD EPYC, full-range weights gave 90.0% fused against 94.7% unfused (the ONNX
spec's arithmetic, ORT_DISABLE_ALL) and FP32's 95.3%. With 7-bit weights every pair stays below 32767,
so fused and unfused agree on every CPU (96.0% both); bias correction takes up the coarser rounding.

Measured with benchmarks/int8_accuracy.py's checkpoints on the demo digits, 200 calibration images,
whole val split (1,000 images), with full-range (8-bit) weights on another machine, before the 7-bit
change above (rerun the benchmark for current figures): FP32 -> INT8 top-1 drop in points (top-1 changes)
    efficientnet-lite0 128x128   minmax 1.0 (25)   minmax+correction 0.4 (13)   percentile+correction -0.2 (13)
    efficientnet-lite0 224x224   minmax 0.8 (20)   minmax+correction 0.2 (12)   percentile+correction  0.4 (10)
    FP_classifier 32x32          minmax 0.4 (8)                                 percentile+correction  0.3 (4)
Bias correction is the main gain (it halves the mean KL divergence from FP32 on lite0); percentile
adds little (it lowered the KL divergence on lite0 at both sizes), at about 2x the calibration time.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
DEFAULT_METHOD = "percentile"
DEFAULT_PERCENTILE = 99.999
CHUNK = 16  # calibration images whose activations are held at once


class _ImageReader(CalibrationDataReader):
    """One image per call; `set_range` lets ONNX Runtime calibrate chunk by chunk."""

    def __init__(self, input_name: str, inputs: np.ndarray):
        self._name, self._inputs = input_name, inputs
        self.set_range(0, len(inputs))

    def __len__(self) -> int:
        return len(self._inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._items = iter(range(start_index, min(end_index, len(self._inputs))))

    def get_next(self):
        i = next(self._items, None)
        return None if i is None else {self._name: self._inputs[i : i + 1]}


def _chunk(count: int) -> int:
    """The largest chunk size <= CHUNK that divides `count` (ONNX Runtime's strided calibration needs one)."""
    return max(d for d in range(1, min(CHUNK, count) + 1) if count % d == 0)


def quantize_int8(
    model: onnx.ModelProto,
    calib_inputs: np.ndarray,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    bias_correction: bool = True,
) -> onnx.ModelProto:
    """FP32 model + N preprocessed calibration images (N x 3 x H x W) -> INT8 QDQ model.

    Weights: int8, symmetric, per output channel. Activations: uint8 with the calibrated range.
    Biases: int32, corrected for the mean shift weight rounding causes (`bias_correction`).
    Per-channel weight scales need QuantizeLinear's `axis` (opset 13); at opset 11/12 weights are per-tensor.
    """
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: choose one of {sorted(METHODS)}")
    if len(calib_inputs) == 0:
        raise ValueError("no calibration images")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    props = [(p.key, p.value) for p in model.metadata_props]
    model = _short_names(model)
    extra = {"CalibTensorRangeSymmetric": False, "CalibStridedMinMax": _chunk(len(calib_inputs))}
    if method == "percentile":
        extra["CalibPercentile"] = float(percentile)
    with tempfile.TemporaryDirectory(prefix="edgecls-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, src)
        input_name = model.graph.input[0].name
        with _quiet_onnxruntime():
            quantize_static(
                str(src),
                str(dst),
                _ImageReader(input_name, calib_inputs.astype(np.float32)),
                quant_format=QuantFormat.QDQ,
                per_channel=opset >= 13,
                reduce_range=True,  # 7-bit weights: see the module docstring (int16 saturation without VNNI)
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=METHODS[method],
                extra_options=extra,
            )
        quantized = onnx.load_model(dst)
    if bias_correction:
        correct_biases(model, quantized, calib_inputs.astype(np.float32))
    del quantized.metadata_props[:]
    for key, value in props:
        quantized.metadata_props.add(key=key, value=value)
    return quantized


class _DropPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_onnxruntime():
    """ONNX Runtime's calibrators print progress to stdout and advise 'pre-processing' (our graph passes
    already did it) on the root logger: neither belongs in pytorch2onnx.py's report."""
    root, advice = logging.getLogger(), _DropPreprocessAdvice()
    root.addFilter(advice)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(advice)


def correct_biases(fp32: onnx.ModelProto, quantized: onnx.ModelProto, calib_inputs: np.ndarray) -> int:
    """In place: for every Conv / Gemm of `quantized` (found in `fp32` by node name) whose weights are
    dequantized from an integer initializer, subtract the mean output shift E[x * (W_int8 - W)] over
    the calibration images from its bias. Returns the number of layers corrected."""
    q_init = {t.name: t for t in quantized.graph.initializer}
    layers = _correctable_layers(fp32, quantized, q_init)
    if layers:
        shifts = _mean_shifts(fp32, layers, calib_inputs)
        for (_node, _, bias), shift in zip(layers, shifts):
            _shift_bias(bias, shift, q_init)
    return len(layers)


def _correctable_layers(fp32: onnx.ModelProto, quantized: onnx.ModelProto, q_init: dict) -> list[tuple]:
    """(fp32 node, weight error as a torch tensor, ("int", its bias DequantizeLinear) | ("float", bias tensor))
    for each Conv / Gemm whose weights come dequantized from an integer initializer."""
    import torch

    q_producer = {o: n for n in quantized.graph.node for o in n.output}
    fp_init = {t.name: t for t in fp32.graph.initializer}
    fp_nodes = {n.name: n for n in fp32.graph.node if n.name}
    layers = []
    for node in quantized.graph.node:
        fp_node = fp_nodes.get(node.name)
        if fp_node is None or not _plain_linear(node) or fp_node.input[1] not in fp_init:
            continue
        w_dq, b_dq = q_producer.get(node.input[1]), q_producer.get(node.input[2])
        if w_dq is None or w_dq.op_type != "DequantizeLinear" or w_dq.input[0] not in q_init:
            continue
        w = numpy_helper.to_array(fp_init[fp_node.input[1]]).astype(np.float32)
        error = torch.from_numpy(_dequantize(w_dq, q_init, w.shape) - w)
        if b_dq is not None and b_dq.op_type == "DequantizeLinear" and b_dq.input[0] in q_init:
            layers.append((fp_node, error, ("int", b_dq)))
        elif node.input[2] in q_init:
            layers.append((fp_node, error, ("float", q_init[node.input[2]])))
    return layers


def _plain_linear(node: onnx.NodeProto) -> bool:
    """A Conv with explicit pads (what torch exports) or a Gemm computing x @ W.T, with a bias input."""
    if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
        return False
    if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return False
    gemm_ok = _attr(node, "transB", 0) == 1 and not _attr(node, "transA", 0) and _attr(node, "alpha", 1.0) == 1.0
    return node.op_type == "Conv" or gemm_ok


def _mean_shifts(fp32: onnx.ModelProto, layers: list[tuple], calib_inputs: np.ndarray) -> list[np.ndarray]:
    """Per layer, the output shift its weight error causes, averaged over the images' FP32 activations
    (computed one image at a time, so memory holds one image's activations)."""
    import torch

    probe = onnx.ModelProto.FromString(fp32.SerializeToString())
    input_name = probe.graph.input[0].name
    wanted = list(dict.fromkeys(n.input[0] for n, _, _ in layers if n.input[0] != input_name))
    known = {o.name for o in probe.graph.output}
    for name in wanted:
        if name not in known:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # torch runs between the calls
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    shifts = [torch.zeros(e.shape[0], dtype=torch.float64) for _, e, _ in layers]
    with torch.no_grad():
        for i in range(len(calib_inputs)):
            image = calib_inputs[i : i + 1]
            acts = dict(zip(wanted, session.run(wanted, {input_name: image}))) if wanted else {}
            acts[input_name] = image
            for k, (node, error, _) in enumerate(layers):
                x = torch.from_numpy(np.ascontiguousarray(acts[node.input[0]]))
                shifts[k] += _layer_output(node, x, error).double().reshape(x.shape[0], error.shape[0], -1).mean((0, 2))
    return [(shift / len(calib_inputs)).numpy() for shift in shifts]


def _shift_bias(bias: tuple, shift: np.ndarray, q_init: dict) -> None:
    """Take `shift` off a bias: an int32 one in units of its scale (rounded, clipped), a float one as is."""
    kind, target = bias
    if kind == "int":
        values = numpy_helper.to_array(q_init[target.input[0]])
        scale = numpy_helper.to_array(q_init[target.input[1]]).astype(np.float64)
        info = np.iinfo(values.dtype)
        fixed = np.clip(values - np.round(shift / scale), info.min, info.max).astype(values.dtype)
        q_init[target.input[0]].CopyFrom(numpy_helper.from_array(fixed, target.input[0]))
    else:
        values = numpy_helper.to_array(target)
        target.CopyFrom(numpy_helper.from_array((values - shift).astype(values.dtype), target.name))


def _attr(node: onnx.NodeProto, name: str, default):
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _dequantize(dq: onnx.NodeProto, init: dict, shape: tuple) -> np.ndarray:
    values = numpy_helper.to_array(init[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(init[dq.input[1]]).astype(np.float32)
    zero = numpy_helper.to_array(init[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 and dq.input[2] else 0.0
    if np.ndim(scale) == 1 and len(shape) > 1:
        axis = _attr(dq, "axis", 1)
        view = [1] * len(shape)
        view[axis] = -1
        scale = scale.reshape(view)
        zero = np.reshape(zero, view) if np.ndim(zero) else zero
    return ((values - zero) * scale).reshape(shape)


def _layer_output(node: onnx.NodeProto, x, weight):
    """What the Conv / Gemm computes from input `x` with `weight` and no bias (torch)."""
    import torch.nn.functional as F

    if node.op_type == "Gemm":
        return (x.reshape(x.shape[0], -1) @ weight.T)[:, :, None]
    pads = list(_attr(node, "pads", [0] * (2 * (x.dim() - 2))))
    half = len(pads) // 2
    torch_pads = [p for begin, end in zip(pads[:half][::-1], pads[half:][::-1]) for p in (begin, end)]
    x = F.pad(x, torch_pads)
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.dim()]
    return conv(
        x,
        weight,
        None,
        list(_attr(node, "strides", [1] * half)),
        0,
        list(_attr(node, "dilations", [1] * half)),
        int(_attr(node, "group", 1)),
    )


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
