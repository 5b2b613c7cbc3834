"""INT8 quantization (edgecls.export.quantize): QDQ with per-channel weights, percentile calibration in
chunks, and bias correction, on real digit images through a small depthwise-separable network."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from edgecls.export import passes
from edgecls.export.onnx_export import export_onnx, op_counts
from edgecls.export.quantize import METHODS, _chunk, correct_biases, quantize_int8


class _DepthwiseNet(nn.Module):
    """MobileNet-style: conv, depthwise 3x3 (9 weights per channel: where weight rounding biases outputs), 1x1, head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.clamp(self.stem(x), 0, 6)
        x = torch.clamp(self.dw(x), 0, 6)
        x = torch.clamp(self.pw(x), 0, 6)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _digits(n: int, offset: int = 0) -> np.ndarray:
    """Real handwritten digits (scikit-learn), 32x32 RGB, normalized like the `lite` preset."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = (load_digits().images[offset : offset + n] / 16 * 255).astype(np.uint8)
    rgb = [np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR).convert("RGB"), np.float32) for im in images]
    return ((np.stack(rgb) - 127.0) / 128.0).transpose(0, 3, 1, 2).copy()


@pytest.fixture(scope="module")
def net_and_proto():
    torch.manual_seed(0)
    model = _DepthwiseNet().eval()
    with torch.no_grad():  # BN-folded-like spread of per-channel scales, as real networks have
        model.dw.weight.mul_(torch.logspace(-1, 1, 16).reshape(16, 1, 1, 1))
    proto, _ = passes.optimize(export_onnx(model, (32, 32)))
    proto.metadata_props.add(key="edgecls.classes", value='["0"]')
    return model, proto


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def test_int8_is_qdq_per_channel_keeps_metadata_and_tracks_fp32(net_and_proto):
    _, proto = net_and_proto
    calib, test = _digits(64), _digits(100, offset=500)
    int8 = quantize_int8(proto, calib)
    ops = op_counts(int8)
    assert ops["QuantizeLinear"] >= 1 and ops["DequantizeLinear"] >= 4 and ops["Conv"] == 3 and ops["Gemm"] == 1
    onnx.checker.check_model(int8, full_check=True)
    assert {p.key: p.value for p in int8.metadata_props}["edgecls.classes"] == '["0"]'
    init = {t.name: t for t in int8.graph.initializer}
    weight_dq = [
        n
        for n in int8.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in init
        and init[n.input[0]].data_type == onnx.TensorProto.INT8
    ]
    assert len(weight_dq) == 4
    assert all(len(init[n.input[1]].dims) == 1 and init[n.input[1]].dims[0] > 1 for n in weight_dq)  # per channel
    fp32, q = _run(proto, test), _run(int8, test)
    assert (fp32.argmax(1) == q.argmax(1)).mean() >= 0.95
    assert np.abs(fp32 - q).max() < 0.1 * np.abs(fp32).max()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_calibration_method_works_in_chunks(net_and_proto, method):
    _, proto = net_and_proto
    calib = _digits(37)  # prime: ONNX Runtime's strided calibration then goes one image at a time
    assert _chunk(37) == 1 and _chunk(200) == 10 and _chunk(100) == 10 and _chunk(64) == 16 and _chunk(3) == 3
    int8 = quantize_int8(proto, calib, method=method)
    assert op_counts(int8)["QuantizeLinear"] >= 1


def test_unknown_method_and_empty_calibration_are_refused(net_and_proto):
    _, proto = net_and_proto
    with pytest.raises(ValueError, match="calibration method"):
        quantize_int8(proto, _digits(4), method="kl")
    with pytest.raises(ValueError, match="no calibration images"):
        quantize_int8(proto, _digits(4)[:0])


def test_bias_correction_removes_the_mean_shift_weight_rounding_causes(net_and_proto):
    """The depthwise conv's output means, FP32 vs INT8 weights: correction takes the shift off the bias."""
    model, proto = net_and_proto
    calib, test = _digits(100), _digits(200, offset=300)
    plain = quantize_int8(proto, calib, bias_correction=False)
    corrected = quantize_int8(proto, calib, bias_correction=True)

    def changed_biases(a, b):
        ia = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
        return [
            n
            for n, t in ((t.name, numpy_helper.to_array(t)) for t in b.graph.initializer)
            if t.dtype == np.int32 and not np.array_equal(t, ia[n])
        ]

    assert len(changed_biases(plain, corrected)) >= 3  # the corrected layers' int32 biases moved
    assert correct_biases(passes.optimize(export_onnx(model, (32, 32)))[0], onnx.ModelProto(), calib) == 0

    fp32 = _run(proto, test)
    err_plain = np.abs((_run(plain, test) - fp32).mean(0)).mean()
    err_fixed = np.abs((_run(corrected, test) - fp32).mean(0)).mean()
    assert err_fixed < 0.7 * err_plain, (err_plain, err_fixed)
