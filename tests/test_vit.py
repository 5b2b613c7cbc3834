"""vit-tiny / vit-small (timm): the builders at a small input and patch size, per-block layer decay, a short
training run on real digits whose checkpoint rebuilds the same network, a verified ONNX at opset 13 that
passes the generic profile, and a kl520 report that names what a transformer needs and the chip lacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import copy_digits, run_cmd

from edgecls.engine.checkpoint import load_model, load_raw
from edgecls.errors import UserError
from edgecls.export.options import ExportOptions
from edgecls.export.pipeline import run_export
from edgecls.models import create_model, get_spec

pytest.importorskip("timm")

SMALL = {"input_size": (32, 32), "patch_size": 8}


@pytest.fixture(scope="module")
def vit_run(digits_dir, tmp_path_factory) -> Path:
    data = copy_digits(digits_dir, tmp_path_factory.mktemp("d") / "data", digits="0123", n_train=40, n_val=10)
    run = tmp_path_factory.mktemp("vit") / "run"
    r = run_cmd(["train.py", str(data), "--backbone", "vit-tiny", "--input-size", "32", "--model-args",
                 "patch_size=8", "--epochs", "3", "--batch-size", "16", "--lr", "1e-3", "--workers", "0",
                 "--snapshot-path", str(run), "--model-def-path", ""])  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return run


@pytest.mark.parametrize("name, width", [("vit-tiny", 192), ("vit-small", 384)])
def test_builds_at_a_small_input_with_its_head_last(name, width):
    model = create_model(name, 5, **SMALL)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears[-1] is model.head and model.head.in_features == width
    assert model.pos_embed.shape[1] == 1 + (32 // 8) ** 2  # class token + 4x4 patches
    assert all(getattr(m, "fused_attn", False) is False for m in model.modules() if hasattr(m, "fused_attn"))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_input_not_a_whole_number_of_patches_is_refused():
    with pytest.raises(UserError, match="not a whole number of 8x8 patches"):
        create_model("vit-tiny", 5, input_size=(36, 32), patch_size=8)


def test_stages_give_each_block_its_own_decayed_learning_rate():
    from edgecls.engine.optim import param_groups

    model = create_model("vit-tiny", 5, **SMALL)
    stages = get_spec("vit-tiny").stages(model)
    assert len(stages) == 1 + len(model.blocks) + 1
    assert "cls_token" in stages[0] and "head.weight" in stages[-1]
    assert all(name.startswith("blocks.3.") for name in stages[4])
    groups = param_groups(model, stages, lr=1e-3, layer_decay=0.8)
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs) and len(set(lrs)) == len(stages)  # stem lowest, each block above, head at lr
    assert lrs[-1] == pytest.approx(1e-3) and lrs[1] == pytest.approx(1e-3 * 0.8**12)


def test_pretrained_without_local_weights_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError, match="not in the Hugging Face cache") as err:
        create_model("vit-tiny", 5, pretrained=True, **SMALL)
    assert "\n" not in str(err.value) and "snapshot" in str(err.value)


def test_trains_and_its_checkpoint_rebuilds_the_network(vit_run):
    ckpt = load_raw(vit_run / "best.pth")
    assert ckpt["model"]["kwargs"] == {"patch_size": 8, "input_size": [32, 32]}
    assert ckpt["metrics"]["val_top1"] > 0.25  # 4 classes: above chance after 3 short epochs
    loaded = load_model(str(vit_run / "best.pth"))
    assert loaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


def test_exports_verified_at_opset_13_and_passes_generic(vit_run, tmp_path):
    out = tmp_path / "vit.onnx"
    res = run_export(
        ExportOptions(snapshot=str(vit_run / "best.pth"), save_path=str(out), model_def_path=None, profile="generic")
    )
    assert res.opset == 13 and res.verify.passed and res.profile.check.passed and res.ok
    assert not res.surgery.surgery.activations_replaced  # a transformer keeps its GELUs
    assert res.surgery.surgery.activations_kept


def test_kl520_report_names_the_transformer_nodes_it_cannot_run(vit_run, tmp_path):
    from edgecls.export.report import render

    res = run_export(
        ExportOptions(snapshot=str(vit_run / "best.pth"), save_path=str(tmp_path / "v.onnx"), model_def_path=None)
    )
    assert res.verify.passed and not res.profile.check.passed and not res.ok
    unsupported = res.profile.check.unsupported
    assert {"Softmax", "Erf"} <= set(unsupported), unsupported
    table = res.profile.check.table()
    for layer in ("(attention)", "(GELU)", "(LayerNorm)"):
        assert layer in table, table
    assert "Softmax not supported (attention): 12 node(s)" in table  # one per block, named
    last = render(res).splitlines()[-1]
    assert last.startswith("result: FAILED (profile kl520: FAILED:") and "Softmax" in last
