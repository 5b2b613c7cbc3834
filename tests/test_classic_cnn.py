"""classic-cnn: width and depth from --model-args, the input size of the run recorded in the checkpoint,
a short training run on real digits, and a verified ONNX made only of kl520 operators."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from conftest import copy_digits, run_cmd

from edgecls.engine.checkpoint import load_model, load_raw
from edgecls.errors import UserError
from edgecls.export.options import ExportOptions
from edgecls.export.pipeline import run_export
from edgecls.models import create_model

NPU_OPS = {"Conv", "Relu", "MaxPool", "Flatten", "Gemm", "BatchNormalization"}


@pytest.fixture(scope="module")
def cnn_run(digits_dir, tmp_path_factory) -> Path:
    data = copy_digits(digits_dir, tmp_path_factory.mktemp("d") / "data", digits="0123", n_train=40, n_val=10)
    run = tmp_path_factory.mktemp("cnn") / "run"
    r = run_cmd(["train.py", str(data), "--backbone", "classic-cnn", "--input-size", "48x40",
                 "--model-args", "width=8,depth=2,hidden=64", "--epochs", "4", "--batch-size", "16", "--workers", "0",
                 "--snapshot-path", str(run), "--model-def-path", ""])  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return run


def test_width_depth_and_three_fully_connected_layers():
    model = create_model("classic-cnn", 5, width=8, depth=4, hidden=32, input_size=(64, 64))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(64 * 4 * 4, 32), (32, 16), (16, 5)]
    assert any(isinstance(m, torch.nn.Dropout) for m in model.features.modules())
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 5)
    with pytest.raises(UserError, match="too small for depth 4"):
        create_model("classic-cnn", 5, depth=4, input_size=(12, 12))


def test_trains_and_records_its_input_size(cnn_run):
    ckpt = load_raw(cnn_run / "best.pth")
    assert ckpt["model"]["kwargs"] == {"width": 8, "depth": 2, "hidden": 64, "input_size": [48, 40]}
    assert ckpt["metrics"]["val_top1"] > 0.6  # 4 digits, 4 short epochs: well above chance (0.25)
    loaded = load_model(str(cnn_run / "best.pth"))  # rebuilt from the recorded kwargs
    assert loaded.model(torch.zeros(1, 3, 48, 40)).shape == (1, 4)


def test_exports_verified_with_npu_operators_only(cnn_run, tmp_path):
    out = tmp_path / "cnn.onnx"
    res = run_export(ExportOptions(snapshot=str(cnn_run / "best.pth"), save_path=str(out), model_def_path=None))
    assert res.verify.passed and res.profile.check.passed
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ops <= NPU_OPS, ops - NPU_OPS
