"""edgecls catalog build/add/remove/query on real digit images (products = digits) with a small trained checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_digits, run_cmd

from edgecls.cli.catalog import cli
from edgecls.embed.catalog import Catalog
from edgecls.embed.index import (
    PROJECTION_VARIANCE,
    ExactIndex,
    HnswIndex,
    Projection,
    RerankedIndex,
    projection_path,
    recall_at_k,
)
from edgecls.embed.prototypes import compute_prototypes, read_catalog_prototypes
from edgecls.embed.store import Embeddings
from edgecls.errors import UserError
from edgecls.evaluation import read_predictions


@pytest.fixture(scope="module")
def shop(digits_dir, tmp_path_factory) -> Path:
    """train/<digit>/ (8 images a product), val/<digit>/ (4 queries a product), more/0/ (2 more images of 0)."""
    root = copy_digits(digits_dir, tmp_path_factory.mktemp("shop") / "d", digits="0123", n_train=10, n_val=4)
    more = root / "more" / "0"
    more.mkdir(parents=True)
    for f in sorted((root / "train" / "0").iterdir())[8:]:
        shutil.move(f, more / f.name)
    for d in "123":
        for f in sorted((root / "train" / d).iterdir())[8:]:
            f.unlink()
    base = root / "base"  # products 0, 1, 2 only
    for d in "012":
        shutil.copytree(root / "train" / d, base / d)
    full = root / "full"  # what base + add(3, more/0) should equal
    shutil.copytree(root / "train", full)
    for f in more.iterdir():
        shutil.copy(f, full / "0" / f.name)
    return root


def run(argv, capsys) -> tuple[int, str, str]:
    rc = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def full_cat(shop, trained_ckpt, tmp_path_factory) -> Path:
    """A fresh build of all four products (the reference for add)."""
    out = tmp_path_factory.mktemp("full") / "CAT"
    assert cli(["build", str(shop / "full"), "--model", str(trained_ckpt), "--out", str(out), "--index", "hnsw"]) == 0
    return out


def test_build_add_remove_round_trip(shop, trained_ckpt, full_cat, tmp_path, capsys):
    cat_dir = tmp_path / "CAT"
    rc, out, err = run(["build", shop / "base", "--model", trained_ckpt, "--out", cat_dir, "--index", "hnsw"], capsys)
    assert rc == 0, err
    manifest = json.loads((cat_dir / "manifest.json").read_text())
    assert manifest["format"] == "edgecls-catalog/1" and manifest["products"] == ["0", "1", "2"]
    assert manifest["model_ref"] == str(trained_ckpt.resolve()) and manifest["index"] == "hnsw"
    products, protos, _ = read_catalog_prototypes(cat_dir)  # what the prototype ONNX export reads
    emb = Embeddings.load(cat_dir / "embeddings")
    assert products == ["0", "1", "2"] and protos.shape == (3, manifest["dim"]) and len(emb.paths) == 24
    assert all((cat_dir / p).is_file() and p.startswith(f"images/{lab}/") for p, lab in zip(emb.paths, emb.labels))
    np.testing.assert_allclose(protos, compute_prototypes(emb.vectors, emb.labels)[1], atol=1e-6)

    rc, out, err = run(["add", cat_dir, shop / "train" / "3", shop / "more" / "0"], capsys)
    assert rc == 0, err
    assert "3: 8 image(s) new product" in out and "0: 2 image(s) added to" in out
    added, fresh = Catalog.open(cat_dir), Catalog.open(full_cat)
    assert added.products == fresh.products == ["0", "1", "2", "3"]
    np.testing.assert_allclose(added.prototypes, fresh.prototypes, atol=1e-5)
    assert len(added.embeddings.paths) == len(fresh.embeddings.paths) == 34 == len(added.hnsw)
    assert sorted(Path(p).name for p in added.embeddings.paths) == sorted(Path(p).name for p in fresh.embeddings.paths)
    assert len(list((cat_dir / "images" / "0").iterdir())) == 10

    before = dict(zip(added.products, added.prototypes))
    rc, out, err = run(["remove", cat_dir, "3"], capsys)
    assert rc == 0, err
    cat = Catalog.open(cat_dir)
    assert cat.products == ["0", "1", "2"] and "3" not in cat.embeddings.labels and len(cat.hnsw) == 26
    assert not (cat_dir / "images" / "3").exists()
    np.testing.assert_array_equal(cat.prototypes, np.stack([before[p] for p in cat.products]))
    # the HNSW graph no longer returns a removed image: every hit's key is a live row
    _, keys = cat.hnsw.search(cat.embeddings.vectors, 5)
    assert set(keys.ravel().tolist()) <= set(cat.keys.tolist())

    rc, _, err = run(["remove", cat_dir, "9"], capsys)
    assert rc == 2 and err.startswith("error: PRODUCT '9': not in the catalog")
    (cat_dir / "prototypes.npy").write_bytes((cat_dir / "prototypes.npy").read_bytes() + b"x")
    rc, _, err = run(["remove", cat_dir, "1"], capsys)
    assert rc == 2 and "prototypes.npy does not match manifest.json" in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def gts(shop, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gts") / "gts.json"
    path.write_text(json.dumps({str(f): f.parent.name for f in sorted((shop / "val").glob("*/*.png"))}))
    return path


def test_query_records_score_with_eval(full_cat, shop, gts, tmp_path, capsys):
    preds = tmp_path / "preds"
    query = ["query", full_cat, shop / "val", "--save-path", preds]
    rc, out, err = run([*query, "--topk", "3", "--index", "exact"], capsys)
    assert rc == 0, err
    assert "queried 16 of 16 images" in out and "top-1" in out
    records = read_predictions(str(preds))
    assert len(records) == 16
    truth = json.loads(gts.read_text())
    correct = 0
    for img, ranked, file in records.values():
        rec = json.loads(Path(file).read_text())
        assert len(ranked) == 3 and [s for s, _ in ranked] == sorted((s for s, _ in ranked), reverse=True)
        assert len(rec["nearest"]) == 3 and all((full_cat / im).is_file() for _, _, im in rec["nearest"])
        correct += ranked[0][1] == truth[img]
    r = run_cmd(["eval_utils/eval.py", "--preds", str(preds), "--gts", str(gts), "--save-dir", str(tmp_path / "ev")])
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "ev" / "eval_results.json").read_text())
    assert report["num_images"] == 16 and report["accuracy"] == pytest.approx(correct / 16)
    assert report["accuracy"] >= 0.75  # nearest prototype on a ~97% digit model's features

    # a rerun over the same folder needs --force, and then leaves exactly one record per image
    rc, _, err = run(["query", full_cat, shop / "val", "--save-path", preds], capsys)
    assert rc == 2 and "--force" in err
    rc, _, err = run(["query", full_cat, shop / "val", "--save-path", preds, "--force", "--index", "hnsw"], capsys)
    assert rc == 0, err
    assert len(read_predictions(str(preds))) == 16

    one = tmp_path / "one.json"
    img = sorted((shop / "val" / "2").iterdir())[0]
    rc, out, err = run(["query", full_cat, img, "--save-path", one, "--topk", "2"], capsys)
    assert rc == 0, err
    rec = json.loads(one.read_text())
    assert rec["img_path"] == str(img) and len(rec["0_0"]) == 2 and "nearest catalog images" in out


def test_model_mismatch_is_one_line(full_cat, shop, trained_ckpt, tmp_path):
    import torch

    ckpt = torch.load(trained_ckpt, map_location="cpu", weights_only=True)
    name = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][name] = ckpt["state_dict"][name] + 1.0
    other = tmp_path / "other.pth"
    torch.save(ckpt, other)
    img = sorted((shop / "val" / "1").iterdir())[0]
    cmd = ["-m", "edgecls", "catalog", "query", str(full_cat), str(img), "--save-path", str(tmp_path / "q.json")]
    r = run_cmd([*cmd, "--model", str(other)])
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: --model checkpoint")
    assert str(other) in r.stderr and str(trained_ckpt) in r.stderr
    assert not (tmp_path / "q.json").exists()


def test_hnsw_save_load_and_recall(full_cat, tmp_path):
    cat = Catalog.open(full_cat)
    vecs = cat.embeddings.vectors
    queries = vecs + 0.05 * np.random.default_rng(0).standard_normal(vecs.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = HnswIndex.build(vecs, cat.keys, connectivity=8, expansion_add=32, expansion_search=32)
    scores, keys = index.search(queries, 5)
    index.save(tmp_path / "i.usearch")
    loaded = HnswIndex.load(tmp_path / "i.usearch", cat.dim, expansion_search=32)
    scores2, keys2 = loaded.search(queries, 5)
    np.testing.assert_array_equal(keys, keys2)
    np.testing.assert_allclose(scores, scores2, atol=1e-6)
    exact_scores, exact_keys = ExactIndex(vecs, cat.keys).search(queries, 5)
    assert recall_at_k(keys, exact_keys) >= 0.95
    np.testing.assert_allclose(scores[:, 0], exact_scores[:, 0], atol=3e-2)  # int8 storage: ~1e-2 rounding
    # the catalog's own saved graph, its candidates re-scored in float32: exact scores, the exact neighbours
    reranked_scores, reranked_keys = cat.index("hnsw").search(queries, 5)
    assert recall_at_k(reranked_keys, exact_keys) >= 0.95
    found = reranked_keys == exact_keys
    np.testing.assert_allclose(reranked_scores[found], exact_scores[found], atol=1e-5)


def test_hnsw_on_a_pca_projection(shop, full_cat, trained_ckpt, tmp_path):
    """The graph walks the leading PCA directions of real embeddings; re-scored exactly, it finds the exact
    neighbours. The projection is saved beside the graph and hashed in the catalog's manifest."""
    from edgecls.embed.catalog import build_catalog
    from edgecls.embed.features import Embedder

    cat = Catalog.open(full_cat)
    vecs = cat.embeddings.vectors
    index = HnswIndex.build(vecs, cat.keys, project_from=0)
    proj = index.projection
    assert proj is not None and proj.dim < vecs.shape[1] // 2 and index.index.ndim == proj.dim
    centred = vecs - vecs.mean(axis=0)
    kept = np.linalg.norm(centred @ proj.basis) ** 2 / np.linalg.norm(centred) ** 2
    assert kept >= PROJECTION_VARIANCE - 1e-6  # the share of the variance Projection.fit promised
    queries = vecs + 0.05 * np.random.default_rng(1).standard_normal(vecs.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact_scores, exact_keys = ExactIndex(vecs, cat.keys).search(queries, 5)
    scores, keys = RerankedIndex(index, vecs, cat.keys, candidates=15).search(queries, 5)
    assert recall_at_k(keys, exact_keys) >= 0.95
    found = keys == exact_keys
    np.testing.assert_allclose(scores[found], exact_scores[found], atol=1e-5)
    index.save(tmp_path / "g.usearch")
    loaded = HnswIndex.load(tmp_path / "g.usearch", cat.dim)
    np.testing.assert_array_equal(loaded.projection.basis, proj.basis)
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])
    assert HnswIndex.build(vecs, cat.keys).projection is None  # 34 vectors: under PROJECTION_MIN_ROWS
    noise = np.random.default_rng(0).standard_normal((400, 64)).astype(np.float32)
    assert Projection.fit(noise / np.linalg.norm(noise, axis=1, keepdims=True)) is None  # no low dimension

    built = build_catalog(shop / "full", Embedder.load(str(trained_ckpt)), tmp_path / "PCAT", model=str(trained_ckpt),
                          index="hnsw", hnsw_kw={"project_from": 0})  # fmt: skip
    side = projection_path(built.folder / "index.usearch")
    assert side.is_file() and side.name in json.loads((built.folder / "manifest.json").read_text())["files"]
    assert Catalog.open(built.folder).hnsw.projection.dim == built.hnsw.projection.dim
    side.write_bytes(side.read_bytes()[:-8])
    with pytest.raises(UserError, match="does not match"):
        Catalog.open(built.folder)


def test_force_rules(shop, trained_ckpt, tmp_path, capsys):
    cat_dir = tmp_path / "CAT"
    build = ["build", shop / "base", "--model", trained_ckpt, "--out", cat_dir]
    assert run(build, capsys)[0] == 0
    rc, _, err = run(["build", shop / "full", "--model", trained_ckpt, "--out", cat_dir], capsys)
    assert rc == 2 and "--force" in err and Catalog.open(cat_dir).products == ["0", "1", "2"]
    rc, _, err = run(["build", shop / "full", "--model", trained_ckpt, "--out", cat_dir, "--force"], capsys)
    assert rc == 0, err
    assert Catalog.open(cat_dir).products == ["0", "1", "2", "3"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no build or old folder left behind
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    rc, _, err = run([*build[:-1], other, "--force"], capsys)
    assert rc == 2 and "not a catalog" in err and (other / "keep.txt").read_text() == "mine"
    rc, _, err = run(["query", cat_dir, shop / "val", "--save-path", tmp_path / "q", "--index", "hnsw"], capsys)
    assert rc == 2 and "built without one" in err
    rc, _, err = run(["add", other, shop / "train" / "3"], capsys)
    assert rc == 2 and "not an edgecls catalog" in err
