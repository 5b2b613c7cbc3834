"""Export pipeline: NPU surgery, ONNX export + graph passes, verification, profile check, INT8, metadata."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torchvision
from conftest import run_cmd

from edgecls.data.presets import Preprocess
from edgecls.engine.checkpoint import make_checkpoint, save_checkpoint
from edgecls.export import passes, profiles, surgery, verify
from edgecls.export.metadata import metadata_of, read_metadata
from edgecls.export.onnx_export import export_onnx, op_counts
from edgecls.export.pipeline import ExportOptions, run_export
from edgecls.models import create_model, get_spec


def write_ckpt(path, backbone, size, num_classes=10, **kwargs):
    torch.manual_seed(0)
    model = create_model(backbone, num_classes, **kwargs)
    spec = get_spec(backbone)
    ckpt = make_checkpoint(
        model,
        backbone=backbone,
        model_kwargs=kwargs,
        classes=[str(i) for i in range(num_classes)],
        preprocess=Preprocess(input_size=size, preset=spec.preprocess),
    )
    save_checkpoint(ckpt, path)
    return path


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = verify.session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


# --- trained FP_classifier on real digits: the full CLI, INT8 and metadata round trip ---


def test_trained_checkpoint_exports_verifies_and_quantizes(trained_ckpt, digits_dir, tmp_path):
    out = tmp_path / "fp.onnx"
    proc = run_cmd(
        [
            "pytorch2onnx.py",
            "--snapshot",
            str(trained_ckpt),
            "--save-path",
            str(out),
            "--verify-dir",
            str(digits_dir / "val"),
            "--verify-count",
            "150",
            "--quantize",
            "int8",
            "--calib-dir",
            str(digits_dir / "train"),
            "--calib-count",
            "100",
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    for step in (
        "1. NPU surgery",
        "2. exported fixed 1x3x32x32",
        "3. simplify: onnxsim",
        "4. metadata",
        "5. verify",
        "6. profile kl520",
        "7. INT8",
    ):
        assert step in text
    assert "-> PASS" in text and "result: OK" in text

    model = onnx.load(str(out))
    meta = read_metadata(metadata_of(model), str(out))
    assert meta["classes"] == [str(d) for d in range(10)] and meta["backbone"] == "FP_classifier"
    assert meta["preprocess"].input_size == (32, 32) and meta["preprocess"].preset == "kneron"
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    assert all(node.name for node in model.graph.node)
    assert not {"BatchNormalization", "Identity", "Dropout", "Constant"} & set(op_counts(model))

    # The file alone classifies real images: its metadata's preprocessing + ORT, against the labels.
    samples, _ = verify.load_samples(digits_dir / "val", meta["classes"], 100)
    probs = verify.onnx_probs(
        verify.session(out), verify.batch_tensor(samples, meta["preprocess"]), graph_softmax=False
    )
    assert verify.accuracy(probs, samples) > 0.85

    int8_path = tmp_path / "fp.int8.onnx"
    int8 = onnx.load(str(int8_path))
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(op_counts(int8))
    assert read_metadata(metadata_of(int8))["classes"] == meta["classes"]
    assert int8_path.stat().st_size <= 0.30 * out.stat().st_size  # the target
    int32 = {t.name for t in int8.graph.initializer if t.data_type == onnx.TensorProto.INT32}
    bias_dq = [n for n in int8.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int32]
    assert bias_dq and all(len(n.input) == 2 for n in bias_dq)  # int32 has no zero point (ONNX spec)
    int8_probs = verify.onnx_probs(verify.session(int8_path), verify.batch_tensor(samples, meta["preprocess"]), False)
    assert verify.accuracy(int8_probs, samples) >= verify.accuracy(probs, samples) - 0.03


# --- every fast-suite backbone: export + verify on real images + kl520 profile ---


@pytest.mark.parametrize(
    "backbone", ["FP_classifier", "mobilenetv2", "resnet18", "efficientnet-b0", "efficientnet-lite0"]
)
def test_backbone_exports_and_verifies(backbone, digits_dir, tmp_path):
    size = (56, 32) if backbone == "FP_classifier" else (64, 64)  # small input keeps the suite fast
    ckpt = write_ckpt(tmp_path / f"{backbone}.pth", backbone, size)
    result = run_export(
        ExportOptions(
            snapshot=str(ckpt), save_path=str(tmp_path / "m.onnx"), verify_dir=str(digits_dir / "val"), verify_count=24
        )
    )
    assert result.verified and result.profile_passed, result.summary()
    assert result.figures["fp32"]["max_diff"] <= verify.FP32_MAX_DIFF
    assert result.figures["fp32"]["agreement"] == 1.0
    exported, final = result.figures["nodes"]
    assert final < exported
    assert set(op_counts(onnx.load(str(result.onnx_path)))) <= profiles.load_profile("kl520").ops


# --- the large backbones (slow): export + verify at a small input; KL520's size limit where it applies ---

OVER_KL520_LIMIT = {"efficientnet-b6", "efficientnet-b7"}  # > 29,360,128 bytes at 8-bit weights


@pytest.mark.slow
@pytest.mark.parametrize("backbone", [f"efficientnet-b{i}" for i in range(1, 8)] + ["resnet50"])
def test_large_backbone_exports_and_verifies(backbone, digits_dir, tmp_path):
    ckpt = write_ckpt(tmp_path / f"{backbone}.pth", backbone, (64, 64))  # 64x64 keeps it affordable
    result = run_export(
        ExportOptions(
            snapshot=str(ckpt), save_path=str(tmp_path / "m.onnx"), verify_dir=str(digits_dir / "val"), verify_count=24
        )
    )
    text = result.summary()
    assert result.verified, text
    assert result.figures["fp32"]["max_diff"] <= verify.FP32_MAX_DIFF
    assert result.figures["fp32"]["agreement"] == 1.0
    exported, final = result.figures["nodes"]
    assert final < exported
    model = onnx.load(str(result.onnx_path))  # written even when the profile fails
    kl520 = profiles.load_profile("kl520")
    assert set(op_counts(model)) <= kl520.ops
    rows = {r.check: r for r in profiles.check_profile(model, kl520).rows}
    assert rows["operators"].ok and rows["opset"].ok and rows["input"].ok
    over = profiles.npu_model_bytes(model) > kl520.max_model_bytes
    assert over == (backbone in OVER_KL520_LIMIT)
    if over:  # a legitimate FAIL: the model does not fit KL520, and the report names the fix
        assert not result.profile_passed and not rows["model size"].ok
        assert "[FAIL] model size" in text and "fix: use a smaller backbone" in text
        assert "result: FAILED" in text
    else:
        assert result.ok and "result: OK" in text
    assert profiles.check_profile(model, profiles.load_profile("kl720")).passed  # KL720 takes every one


# --- NPU surgery ---


def _graph_ops(model: nn.Module, size=(64, 64)) -> set[str]:
    proto, _ = passes.optimize(export_onnx(model, size))
    return set(op_counts(proto))


def test_surgery_removes_efficientnet_se_and_swish():
    model = create_model("efficientnet-b0", 4, npu_form=False)
    model.set_swish(memory_efficient=False)
    assert {"Sigmoid", "Mul"} <= _graph_ops(model)  # the original really has SE + Swish
    report = surgery.npu_surgery(model)
    assert len(report.se_removed) == 16 and report.changes_function
    assert {old for _, old in report.activations_replaced} <= {"Swish", "SiLU"}
    ops = _graph_ops(model)
    assert not {"Sigmoid", "Mul", "HardSigmoid", "HardSwish"} & ops
    assert "Relu" in ops


def test_surgery_replaces_memory_efficient_swish_that_cannot_export():
    model = create_model("efficientnet-b0", 4, npu_form=False)
    model.set_swish(memory_efficient=True)  # a custom autograd Function: torch.onnx cannot trace it
    report = surgery.npu_surgery(model)
    assert {old for _, old in report.activations_replaced} == {"MemoryEfficientSwish"}
    assert "Relu" in _graph_ops(model, (32, 32))


def test_surgery_handles_torchvision_squeeze_excitation_and_hardswish():
    model = torchvision.models.mobilenet_v3_small(weights=None, num_classes=3)
    report = surgery.npu_surgery(model)
    assert report.se_removed and any(old == "Hardswish" for _, old in report.activations_replaced)
    assert not any(isinstance(m, (nn.Hardswish, nn.Hardsigmoid, nn.Dropout)) for m in model.modules())
    assert not {"Sigmoid", "Mul", "HardSigmoid", "HardSwish"} & _graph_ops(model)


def test_surgery_reports_accuracy_before_and_after(tmp_path, digits_dir):
    ckpt = write_ckpt(tmp_path / "b0se.pth", "efficientnet-b0", (32, 32), npu_form=False)
    result = run_export(
        ExportOptions(
            snapshot=str(ckpt), save_path=str(tmp_path / "b0.onnx"), verify_dir=str(digits_dir / "val"), verify_count=16
        )
    )
    text = result.summary()
    assert "Squeeze-and-Excitation block(s) removed" in text and "changes the function" in text
    assert "top-1 before surgery" in text and len(result.figures["surgery_top1"]) == 2
    assert result.verified  # the ONNX matches the NPU-form PyTorch module


# --- graph passes on real exported graphs ---


class _PoolReshape(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 2)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)).reshape(1, -1))


def test_graph_passes_fold_bn_pool_and_flatten_without_changing_outputs():
    model = _PoolReshape().eval()
    raw = export_onnx(model, (16, 16), fuse_bn=False)
    before = op_counts(raw)
    assert before["BatchNormalization"] == 1 and before["ReduceMean"] == 1 and before["Reshape"] == 1
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    expected = model(torch.from_numpy(x)).detach().numpy()
    optimized, report = passes.optimize(raw, simplify_graph=False)
    after = op_counts(optimized)
    assert report.changes["BatchNorm folded"] == 1 and report.changes["global pool->GlobalAveragePool"] == 1
    assert report.changes["Reshape->Flatten"] == 1
    assert not {"BatchNormalization", "ReduceMean", "Reshape"} & set(after)
    assert {"GlobalAveragePool", "Flatten", "Gemm"} <= set(after)
    onnx.checker.check_model(optimized, full_check=True)
    np.testing.assert_allclose(ort_run(optimized, x), expected, atol=1e-5)


def test_int8_bias_zero_points_dropped_without_changing_outputs():
    from edgecls.export.quantize import quantize_int8

    model = _PoolReshape().eval()
    proto, _ = passes.optimize(export_onnx(model, (16, 16)))
    x = np.random.default_rng(0).normal(size=(8, 3, 16, 16)).astype(np.float32)
    int8 = quantize_int8(proto, x)
    before = onnx.ModelProto.FromString(int8.SerializeToString())
    assert passes.drop_int32_zero_points(int8) == 2  # the Conv and the Gemm bias
    assert len(int8.SerializeToString()) < len(before.SerializeToString())
    onnx.checker.check_model(int8, full_check=True)
    for i in range(len(x)):
        np.testing.assert_array_equal(ort_run(int8, x[i : i + 1]), ort_run(before, x[i : i + 1]))


def test_no_bn_fusion_keeps_batchnorm(tmp_path):
    ckpt = write_ckpt(tmp_path / "mb.pth", "mobilenetv2", (32, 32))
    result = run_export(
        ExportOptions(snapshot=str(ckpt), save_path=str(tmp_path / "mb.onnx"), bn_fusion=False, verify_count=4)
    )
    assert result.verified
    assert op_counts(onnx.load(str(tmp_path / "mb.onnx")))["BatchNormalization"] > 0


def test_dynamic_batch_fails_npu_profile_but_passes_generic(tmp_path):
    ckpt = write_ckpt(tmp_path / "fp.pth", "FP_classifier", (56, 32))
    npu = run_export(
        ExportOptions(snapshot=str(ckpt), save_path=str(tmp_path / "a.onnx"), dynamic_batch=True, verify_count=4)
    )
    assert npu.verified and not npu.profile_passed
    assert "needs fixed batch 1" in npu.summary() and "export without --dynamic-batch" in npu.summary()
    generic = run_export(
        ExportOptions(
            snapshot=str(ckpt),
            save_path=str(tmp_path / "b.onnx"),
            dynamic_batch=True,
            profile="generic",
            verify_count=4,
        )
    )
    assert generic.ok
    sess = verify.session(tmp_path / "b.onnx")
    assert sess.run(None, {"input": np.zeros((3, 3, 56, 32), np.float32)})[0].shape == (3, 10)


def test_softmax_flag_puts_probabilities_in_graph(tmp_path):
    ckpt = write_ckpt(tmp_path / "fp.pth", "FP_classifier", (56, 32))
    result = run_export(
        ExportOptions(
            snapshot=str(ckpt), save_path=str(tmp_path / "s.onnx"), softmax=True, profile="kl720", verify_count=4
        )
    )
    assert result.ok
    model = onnx.load(str(tmp_path / "s.onnx"))
    assert "Softmax" in op_counts(model) and read_metadata(metadata_of(model))["softmax"] is True
    out = ort_run(model, np.zeros((1, 3, 56, 32), np.float32))
    assert abs(out.sum() - 1) < 1e-5


# --- profile check ---


class _Gelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(nn.functional.gelu(self.conv(x)), 1), 1)


def test_profile_check_names_disallowed_op_and_fix():
    proto, _ = passes.optimize(export_onnx(_Gelu().eval(), (16, 16)))
    result = profiles.check_profile(proto, profiles.load_profile("kl520"))
    assert not result.passed
    table = result.table()
    erf_nodes = [n.name for n in proto.graph.node if n.op_type == "Erf"]
    assert erf_nodes and erf_nodes[0] in table
    assert "Erf not supported" in table and "GELU" in table  # names the fix
    assert profiles.check_profile(proto, profiles.load_profile("kl520")).rows[0].ok is False


def test_profile_size_limit_and_custom_profile_file(tmp_path):
    proto, _ = passes.optimize(export_onnx(_Gelu().eval(), (16, 16)))
    custom = tmp_path / "tiny.yaml"
    custom.write_text(
        "name: tiny\nops: [Conv, Erf, Mul, Div, Add, GlobalAveragePool, Flatten]\nopsets: [13]\nfixed_batch: true\n"
        "max_model_bytes: 10\n"
    )
    result = profiles.check_profile(proto, profiles.load_profile(str(custom)))
    rows = {r.check: r for r in result.rows}
    assert rows["operators"].ok and not rows["model size"].ok and "smaller backbone" in rows["model size"].fix


def test_builtin_profiles_document_their_source():
    assert profiles.list_profiles() == ["generic", "kl520", "kl720"]
    for name in profiles.list_profiles():
        profile = profiles.load_profile(name)
        assert profile.source and "Conv" in profile.ops
    assert profiles.load_profile("kl520").max_model_bytes == 29_360_128


# --- metadata round trip and JSON ---


def test_metadata_round_trip_through_onnxruntime(tmp_path):
    ckpt = write_ckpt(tmp_path / "r.pth", "resnet18", (32, 32), num_classes=3)
    run_export(ExportOptions(snapshot=str(ckpt), save_path=str(tmp_path / "r.onnx"), verify_count=4))
    props = verify.session(tmp_path / "r.onnx").get_modelmeta().custom_metadata_map
    meta = read_metadata(props)
    assert (
        meta["classes"] == ["0", "1", "2"]
        and meta["preprocess"].to_dict() == Preprocess(input_size=(32, 32), preset="imagenet").to_dict()
    )
    assert json.loads(props["edgecls.preprocess"])["input_size"] == [32, 32]
