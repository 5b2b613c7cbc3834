"""pytorch2onnx.py --embedding and --prototypes on the digits checkpoint: the feature graph gives the checkpoint's
embeddings; the prototype graph is kl520-legal and, through inference.py, eval.py and serve.py, ranks classes
exactly as nearest-prototype cosine on the checkpoint's features does."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from conftest import copy_digits, run_cmd
from test_serve import post_image, start_server, stop_server

from edgecls.cli.export import cli as export_cli
from edgecls.embed.features import Embedder, file_sha256
from edgecls.embed.prototypes import compute_prototypes, cosine_scores
from edgecls.export.metadata import metadata_of, read_metadata
from edgecls.export.options import ExportOptions
from edgecls.export.pipeline import run_export
from edgecls.export.profiles import check_profile, load_profile

DIGITS = "01234"


@pytest.fixture(scope="module")
def support(digits_dir, tmp_path_factory) -> Path:
    """SUPPORT/train/<digit>/ (12 real images each: the shots) and SUPPORT/val/<digit>/ (8 each: the queries)."""
    return copy_digits(digits_dir, tmp_path_factory.mktemp("support") / "s", digits=DIGITS, n_train=12, n_val=8)


def images_of(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.glob("*/*.png"))]


@pytest.fixture(scope="module")
def embedding_onnx(trained_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emb") / "fp.embedding.onnx"
    r = run_cmd(["pytorch2onnx.py", "--snapshot", str(trained_ckpt), "--embedding", "--save-path", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lowest cosine" in r.stdout and "profile kl520 (Kneron KL520): PASS" in r.stdout
    return out


@pytest.fixture(scope="module")
def prototypes_export(trained_ckpt, support, tmp_path_factory):
    """The prototypes export (FP32 + INT8) from the support folder's train/ shots, run in-process for figures."""
    out = tmp_path_factory.mktemp("proto") / "fp.prototypes.onnx"
    opts = ExportOptions(
        snapshot=str(trained_ckpt),
        prototypes=str(support),
        save_path=str(out),
        quantize="int8",
        calib_dir=str(support / "train"),
        calib_count=30,
        model_def_path=None,
    )
    res = run_export(opts)
    assert res.ok, res.summary()
    return res


@pytest.fixture(scope="module")
def nearest_prototype(trained_ckpt, support) -> tuple[list[str], list[str]]:
    """(query paths, numpy nearest-prototype labels) from the checkpoint's own Embedder."""
    embedder = Embedder.load(str(trained_ckpt))
    shots = images_of(support / "train")
    shot_vecs = np.stack([v for _, v, _ in embedder.embed_paths(shots)])
    classes, protos = compute_prototypes(shot_vecs, [Path(p).parent.name for p in shots])
    queries = images_of(support / "val")
    q_vecs = np.stack([v for _, v, _ in embedder.embed_paths(queries)])
    return queries, [classes[i] for i in cosine_scores(q_vecs, protos).argmax(axis=1)]


# ---------------------------------------------------------------------------------------------- --embedding
def test_embedding_onnx_gives_the_checkpoints_embeddings(trained_ckpt, embedding_onnx, support):
    meta = read_metadata(metadata_of(onnx.load(str(embedding_onnx))))
    assert meta["kind"] == "embedding" and meta["classes"] == []
    assert meta["source_sha256"] == file_sha256(trained_ckpt)
    paths = images_of(support / "val")
    pth, onx = Embedder.load(str(trained_ckpt)), Embedder.load(str(embedding_onnx))
    a = np.stack([v for _, v, _ in pth.embed_paths(paths)])
    b = np.stack([v for _, v, _ in onx.embed_paths(paths)])
    cos = (a * b).sum(axis=1)
    assert len(cos) == len(paths) and cos.min() >= 0.9999, cos.min()
    assert onx.identity["source_sha256"] == pth.identity["sha256"]  # a catalog counts them as one model


def test_embed_command_on_pth_and_onnx_agree(trained_ckpt, embedding_onnx, support, tmp_path):
    outs = []
    for name, model in (("pth", trained_ckpt), ("onnx", embedding_onnx)):
        out = tmp_path / name
        r = run_cmd(["-m", "edgecls", "embed", "--model", str(model), str(support / "val"), "--out", str(out)])
        assert r.returncode == 0, r.stdout + r.stderr
        outs.append((np.load(f"{out}.npy"), json.loads(Path(f"{out}.json").read_text())))
    (a, side_a), (b, side_b) = outs
    assert a.shape == b.shape == (len(DIGITS) * 8, 960)
    assert [it["path"] for it in side_a["items"]] == [it["path"] for it in side_b["items"]]
    assert side_b["model"]["source_sha256"] == side_a["model"]["sha256"]
    assert ((a * b).sum(axis=1)).min() >= 0.9999


def test_predictor_refuses_an_embedding_file(embedding_onnx, support, tmp_path):
    r = run_cmd(["inference.py", "--onnx", str(embedding_onnx), "--img-path", str(support / "val"),
                 "--save-path", str(tmp_path / "p")])  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "embedding export" in r.stderr


# --------------------------------------------------------------------------------------------- --prototypes
def test_prototype_file_is_kl520_legal_and_self_describing(prototypes_export, trained_ckpt):
    res = prototypes_export
    model = onnx.load(str(res.onnx_path))
    assert res.profile.check.passed and check_profile(model, load_profile("kl520")).passed
    assert not {"Div", "Sqrt", "Softmax", "ReduceL2"} & {n.op_type for n in model.graph.node}
    assert [o.name for o in model.graph.output] == ["scores", "sqnorm"]
    meta = read_metadata(metadata_of(model))
    assert meta["kind"] == "prototypes" and meta["classes"] == list(DIGITS)
    assert meta["temperature"] == 10.0 and meta["source_sha256"] == file_sha256(trained_ckpt)
    fp32 = res.figures["fp32"]
    assert fp32["agreement"] == 1.0 and fp32["max_diff"] <= 1e-4 and fp32["images"] == len(DIGITS) * 12


def test_inference_and_eval_use_the_prototype_file(prototypes_export, nearest_prototype, support, tmp_path):
    queries, expected = nearest_prototype
    preds = tmp_path / "preds"
    r = run_cmd(["inference.py", "--onnx", str(prototypes_export.onnx_path), "--img-path", str(support / "val"),
                 "--save-path", str(preds), "--topk", "3", "--no-progress"])  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    records = {}
    for f in preds.glob("*.json"):
        rec = json.loads(f.read_text())
        records[rec["img_path"]] = rec["0_0"]
    assert sorted(records) == sorted(queries)
    got = [records[q][0][1] for q in queries]
    assert got == expected  # 100% of images: the ONNX top-1 is numpy's nearest prototype
    for ranked in records.values():  # softmax of temperature-scaled cosines: in (0, 1], highest first
        scores = [s for s, _ in ranked]
        assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
    truth = [Path(q).parent.name for q in queries]
    gts = tmp_path / "gts.json"
    gts.write_text(json.dumps(dict(zip(queries, truth))))
    r = run_cmd(["eval_utils/eval.py", "--preds", str(preds), "--gts", str(gts), "--save-dir", str(tmp_path / "e")])
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "e" / "eval_results.json").read_text())
    assert report["accuracy"] == pytest.approx(np.mean([g == t for g, t in zip(expected, truth)]))
    assert report["accuracy"] >= 0.8  # 12 shots per digit on the trained features


def test_served_prototype_file_answers_with_prototype_classes(prototypes_export, nearest_prototype):
    queries, expected = nearest_prototype
    proc, url = start_server(prototypes_export.onnx_path)
    try:
        info = httpx.get(f"{url}/model", timeout=30).json()
        assert info["classes"] == list(DIGITS)
        for query, label in list(zip(queries, expected))[::8]:
            reply = post_image(url, Path(query).read_bytes(), name=Path(query).name, params={"topk": 5}).json()
            labels = [p["label"] for p in reply["predictions"]]
            assert sorted(labels) == list(DIGITS) and labels[0] == label
    finally:
        stop_server(proc)


def test_int8_prototypes_agree_with_fp32(prototypes_export, nearest_prototype):
    from edgecls.predict import Predictor

    q = prototypes_export.figures["int8"]
    assert q["calib_images"] == 30 and q["agreement_with_fp32"] >= 0.95, q
    queries, expected = nearest_prototype
    int8 = Predictor.from_path(prototypes_export.int8_path)
    assert int8.precision == "int8" and int8.classes == list(DIGITS)
    top = [int8.topk(p, 1)[0][1] for _, p, _ in int8.predict_paths(queries)]
    assert np.mean([a == b for a, b in zip(top, expected)]) >= 0.9


def test_prototypes_from_a_catalog_folder(trained_ckpt, support, tmp_path):
    embedder = Embedder.load(str(trained_ckpt))
    shots = images_of(support / "train")
    vecs = np.stack([v for _, v, _ in embedder.embed_paths(shots)])
    products, protos = compute_prototypes(vecs, [f"item-{Path(p).parent.name}" for p in shots])
    cat = write_catalog(tmp_path / "cat", embedder.identity, products, protos)
    out = tmp_path / "cat.onnx"
    res = run_export(ExportOptions(snapshot=str(trained_ckpt), prototypes=str(cat), save_path=str(out)))
    assert res.ok, res.summary()
    assert read_metadata(metadata_of(onnx.load(str(out))))["classes"] == products
    np.testing.assert_allclose(
        onnx.numpy_helper.to_array(next(t for t in onnx.load(str(out)).graph.initializer if t.name == "proto_matrix")),
        protos,
        atol=1e-6,
    )


def write_catalog(folder: Path, identity: dict, products: list[str], protos: np.ndarray) -> Path:
    """A catalog folder by hand, in edgecls-catalog/1's layout (manifest.json + prototypes.npy)."""
    folder.mkdir()
    manifest = {"format": "edgecls-catalog/1", "model": identity, "products": products, "dim": protos.shape[1]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    np.save(folder / "prototypes.npy", protos.astype(np.float32))
    return folder


# ---------------------------------------------------------------------------------------------- bad input
def user_error(argv: list[str], capsys, *fragments: str) -> None:
    assert export_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_prototypes_on_a_folder_without_class_folders(trained_ckpt, support, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for src in images_of(support / "val")[:3]:
        (flat / Path(src).name).write_bytes(Path(src).read_bytes())
    user_error(["--snapshot", str(trained_ckpt), "--prototypes", str(flat)], capsys, "--prototypes", "class folders")
    assert not (trained_ckpt.with_suffix(".prototypes.onnx")).exists()


def test_prototypes_need_a_snapshot_or_pretrained(support, capsys):
    user_error(["--prototypes", str(support)], capsys, "--snapshot", "--pretrained")
    user_error(["--prototypes", str(support), "--pretrained"], capsys, "--pretrained", "--backbone")
    user_error(["--snapshot", "x.pth", "--pretrained", "--backbone", "resnet18"], capsys, "--pretrained")


def test_catalog_of_another_model_is_refused(trained_ckpt, tmp_path, capsys):
    other = {"kind": "checkpoint", "backbone": "FP_classifier", "sha256": "0" * 64, "path": "other.pth"}
    cat = write_catalog(tmp_path / "cat", other, ["a", "b"], np.eye(2, 960, dtype=np.float32))
    out = tmp_path / "x.onnx"
    user_error(["--snapshot", str(trained_ckpt), "--prototypes", str(cat), "--save-path", str(out)], capsys,
               "--prototypes", "catalog was built with")  # fmt: skip
    assert not out.exists()


PLUGIN = '''
import torch
import torch.nn as nn

from edgecls.models.registry import register_model


@register_model("seeded_pretrained_net", input_size=(32, 32), preprocess="kneron", has_pretrained=True)
def seeded_pretrained_net(num_classes, pretrained=False):
    """A small net whose 'pretrained' weights are a fixed seed (no download in tests)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
        )
'''


def test_pretrained_backbone_prototypes_need_no_snapshot(support, tmp_path):
    from edgecls.predict import Predictor

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "seeded.py").write_text(PLUGIN)
    out = tmp_path / "shelf.onnx"
    r = run_cmd(["pytorch2onnx.py", "--backbone", "seeded_pretrained_net", "--pretrained", "--prototypes",
                 str(support), "--model-def-path", str(plugins), "--save-path", str(out)])  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    meta = read_metadata(metadata_of(onnx.load(str(out))))
    assert meta["kind"] == "prototypes" and meta["source_sha256"] == "pretrained:seeded_pretrained_net"
    embedder = Embedder.load("seeded_pretrained_net", model_def_path=str(plugins))
    shots = images_of(support / "train")
    classes, protos = compute_prototypes(
        np.stack([v for _, v, _ in embedder.embed_paths(shots)]), [Path(p).parent.name for p in shots]
    )
    queries = images_of(support / "val")
    q = np.stack([v for _, v, _ in embedder.embed_paths(queries)])
    expected = [classes[i] for i in cosine_scores(q, protos).argmax(axis=1)]
    predictor = Predictor.from_path(out)
    assert [predictor.topk(p, 1)[0][1] for _, p, _ in predictor.predict_paths(queries)] == expected
