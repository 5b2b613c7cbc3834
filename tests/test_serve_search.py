"""serve.py --catalog CAT: POST /search and catalog thumbnails on a real server on 127.0.0.1, real digit images."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import copy_digits
from test_serve import start_server, stop_server

from edgecls.cli.catalog import cli
from edgecls.embed.store import Embeddings


@pytest.fixture(scope="module")
def cat(digits_dir, trained_ckpt, tmp_path_factory) -> Path:
    root = copy_digits(digits_dir, tmp_path_factory.mktemp("serve_cat") / "d", digits="0123", n_train=6, n_val=2)
    out = root / "CAT"
    assert cli(["build", str(root / "train"), "--model", str(trained_ckpt), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def server(cat, trained_ckpt):
    proc, url = start_server(trained_ckpt, "--catalog", str(cat), "--no-access-log")
    yield url
    stop_server(proc)


def post(url: str, files=None, **kw) -> httpx.Response:
    return httpx.post(f"{url}/search", files=files, timeout=30, **kw)


def test_search_returns_products_and_thumbnails(server, cat):
    emb = Embeddings.load(cat / "embeddings")
    row = emb.labels.index("2")
    image = (cat / emb.paths[row]).read_bytes()  # a catalog image itself: its own copy is the nearest
    r = post(server, files={"img": ("q.png", image, "image/png")}, params={"topk": 3})
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["success"] is True and len(reply["products"]) == 3 and len(reply["nearest"]) == 3
    scores = [p["score"] for p in reply["products"]]
    assert scores == sorted(scores, reverse=True) and reply["products"][0]["product"] == "2"
    best = reply["nearest"][0]
    assert best["product"] == "2" and best["score"] == pytest.approx(1.0, abs=1e-4) and best["image"] == row
    thumb = httpx.get(server + best["url"], timeout=30)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png" and thumb.content == image
    info = httpx.get(f"{server}/catalog", timeout=30).json()
    assert info["products"] == ["0", "1", "2", "3"] and info["images"] == 24


@pytest.mark.parametrize(
    "files, params, status, words",
    [
        ({"other": ("q.png", b"x", "image/png")}, {}, 400, "missing multipart file field 'img'"),
        ({"img": ("q.png", b"hello, not an image", "image/png")}, {}, 400, "not an image"),
        ({"img": ("q.png", b"", "image/png")}, {}, 400, "empty"),
        (None, {"topk": "abc"}, 400, "topk='abc' is not an integer"),
        (None, {"topk": "0"}, 400, "topk=0 must be at least 1"),
    ],
)
def test_search_bad_inputs(server, cat, files, params, status, words):
    if files is None:
        files = {"img": ("q.png", next((cat / "images" / "1").iterdir()).read_bytes(), "image/png")}
    r = post(server, files=files, params=params)
    assert r.status_code == status and r.json()["success"] is False
    assert words in r.json()["error"]


def test_search_needs_multipart(server):
    r = httpx.post(f"{server}/search", content=b"raw bytes", headers={"content-type": "image/png"}, timeout=30)
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]


@pytest.mark.parametrize("ref", ["24", "999999", "-1", "..%2Fmanifest.json", "..%2F..%2Fetc%2Fpasswd", "1.png"])
def test_thumbnail_ids_out_of_range_or_paths(server, ref):
    r = httpx.get(f"{server}/catalog/image/{ref}", timeout=30)
    assert r.status_code == 404 and r.json()["success"] is False
    assert "edgecls-catalog/1" not in r.text and "root:" not in r.text  # no file's content came back
