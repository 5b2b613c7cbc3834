"""edgecls embed as a real process: unit rows, labels from class folders, unreadable images skipped, outputs
kept without --force, one-line errors for bad models, a pretrained backbone, and a .pth agreeing with its ONNX."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import copy_digits, run_cmd

from edgecls.embed.features import same_model
from edgecls.embed.store import Embeddings


def embed(*args):
    return run_cmd(["-m", "edgecls", "embed", *map(str, args)])


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def small(digits_dir, tmp_path_factory):
    """DIR/{train,val}/<digit>/ with 3 + 2 real digits of 0, 1, 2."""
    return copy_digits(digits_dir, tmp_path_factory.mktemp("small") / "data", digits="012", n_train=3, n_val=2)


def test_split_layout_labels_unit_rows_unreadable_skipped_and_force(small, trained_ckpt, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small, data)
    shutil.copy(next((data / "val" / "1").iterdir()), data / "loose.png")  # outside class folders: no label
    (data / "val" / "2" / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "E"
    r = embed("--model", trained_ckpt, data, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "broken.png" in r.stderr and "warning:" in r.stderr and "skipped" in r.stderr
    emb = Embeddings.load(out)
    good = sorted(str(p) for p in data.rglob("*.png") if p.name != "broken.png")
    assert sorted(emb.paths) == good and len(good) == 16
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    assert emb.vectors.dtype == np.float32 and emb.vectors.shape[1] == emb.dim > 1
    for path, label in zip(emb.paths, emb.labels):
        assert label == (None if path.endswith("loose.png") else path.split("/")[-2])
    assert emb.classes == ["0", "1", "2"]
    side = json.loads(out.with_name("E.json").read_text())
    assert side["model"]["kind"] == "checkpoint" and side["count"] == 16

    before = out.with_name("E.npy").read_bytes()
    r = embed("--model", trained_ckpt, data / "train", "--out", str(out) + ".npy")
    assert r.returncode == 2 and "--force" in one_error_line(r.stderr)
    assert out.with_name("E.npy").read_bytes() == before
    r = embed("--model", trained_ckpt, data / "train", "--out", out, "--force")
    assert r.returncode == 0, r.stderr
    assert len(Embeddings.load(out).paths) == 9


def test_class_folder_layout(small, trained_ckpt, tmp_path):
    r = embed("--model", trained_ckpt, small / "val", "--out", tmp_path / "E")
    assert r.returncode == 0, r.stderr
    emb = Embeddings.load(tmp_path / "E")
    assert emb.labelled and sorted(emb.labels) == ["0", "0", "1", "1", "2", "2"]
    assert all(p.split("/")[-2] == lab for p, lab in zip(emb.paths, emb.labels))


@pytest.mark.parametrize(
    "model, fragment",
    [("no-such-model", "no such file, and not a registered backbone"), ("FP_classifier", "no pretrained weights")],
)
def test_bad_model_is_one_line_error(model, fragment, small, tmp_path):
    r = embed("--model", model, small / "val", "--out", tmp_path / "E")
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert fragment in line and "--model" in line
    assert not (tmp_path / "E.npy").exists()


def test_pretrained_backbone_offline(small, tmp_path):
    imgs = tmp_path / "imgs"
    for digit in "01":
        shutil.copytree(small / "train" / digit, imgs / digit)
    (imgs / "2").mkdir()
    for p in sorted((small / "val" / "2").iterdir()):
        shutil.copy(p, imgs / "2" / p.name)  # 3 + 3 + 2 = 8 images at 224 x 224
    r = embed("--model", "efficientnet-lite0", imgs, "--out", tmp_path / "E")
    assert r.returncode == 0, r.stderr
    emb = Embeddings.load(tmp_path / "E")
    assert len(emb.paths) == 8 and emb.model["kind"] == "pretrained" and emb.model["backbone"] == "efficientnet-lite0"
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    assert np.ptp(emb.vectors, axis=0).max() > 0  # different images, different vectors


def test_checkpoint_and_its_onnx_export_agree(small, trained_ckpt, tmp_path):
    onnx_path = tmp_path / "fp.onnx"
    r = run_cmd(["pytorch2onnx.py", "--snapshot", str(trained_ckpt), "--save-path", str(onnx_path)])
    assert r.returncode == 0, r.stderr
    for model, out in ((trained_ckpt, "P"), (onnx_path, "O")):
        r = embed("--model", model, small, "--out", tmp_path / out)
        assert r.returncode == 0, r.stderr
    pth, onx = Embeddings.load(tmp_path / "P"), Embeddings.load(tmp_path / "O")
    assert pth.paths == onx.paths and pth.labels == onx.labels and len(pth.paths) == 15
    assert onx.model["kind"] == "onnx" and same_model(pth.model, onx.model)
    cosine = (pth.vectors * onx.vectors).sum(axis=1)
    assert cosine.min() >= 0.9999, cosine
