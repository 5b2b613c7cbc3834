"""serve.py: a real server process on 127.0.0.1 (random free port), every endpoint, every bad input, a burst."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import REPO, run_cmd
from PIL import Image

MAX_UPLOAD_MB = 1.0


# ------------------------------------------------------------------ helpers (also used by the browser test)
def start_server(model: Path, *extra: str, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """`serve.py --model MODEL --port 0` in a real process; returns (process, base URL) once /health answers."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "serve.py"), "--model", str(model), "--port", "0", *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    url: list[str] = []

    def read_output():
        for line in proc.stdout:
            lines.append(line)
            if not url and "http://" in line:
                url.append(line.split("http://", 1)[1].split("/", 1)[0])

    threading.Thread(target=read_output, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{''.join(lines)}")
        if url:
            try:
                if httpx.get(f"http://{url[0]}/health", timeout=2).status_code == 200:
                    proc.output_lines = lines  # type: ignore[attr-defined]
                    return proc, f"http://{url[0]}"
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    stop_server(proc)
    raise AssertionError(f"server did not answer /health within {timeout}s:\n{''.join(lines)}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def correctly_classified(
    ckpt: Path, digits_dir: Path, count: int = 1, exclude: str | None = None
) -> list[tuple[Path, str]]:
    """Val images (path, true digit) that the Predictor itself classifies right, one per digit, in digit order."""
    from edgecls.data.images import load_rgb
    from edgecls.predict import Predictor

    predictor = Predictor.from_path(ckpt)
    found: list[tuple[Path, str]] = []
    for digit_dir in sorted((digits_dir / "val").iterdir()):
        if digit_dir.name == exclude:
            continue
        for path in sorted(digit_dir.iterdir()):
            probs = predictor.predict_images([load_rgb(path)])[0]
            if predictor.topk(probs, 1)[0][1] == digit_dir.name and probs.max() > 0.5:
                found.append((path, digit_dir.name))
                break
        if len(found) == count:
            return found
    raise AssertionError("the trained model classifies too few val images correctly")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims WIDTHxHEIGHT pixels but holds almost no data: a pixel bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def noise_png(side: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)))


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def server(trained_ckpt):
    proc, url = start_server(
        trained_ckpt,
        "--max-upload-mb",
        str(MAX_UPLOAD_MB),
        "--max-batch",
        "4",
        "--max-pixels",
        "20000000",
        "--no-access-log",
    )
    yield url
    alive = proc.poll() is None
    stop_server(proc)
    assert alive, "the server died during the tests:\n" + "".join(proc.output_lines)
    assert "Traceback" not in "".join(proc.output_lines), "".join(proc.output_lines)


@pytest.fixture(scope="module")
def samples(trained_ckpt, digits_dir):
    return correctly_classified(trained_ckpt, digits_dir, count=4)


@pytest.fixture(scope="module")
def predictor(trained_ckpt):
    from edgecls.predict import Predictor

    return Predictor.from_path(trained_ckpt)


def post_image(url: str, data: bytes, name: str = "x.png", field: str = "img", params=None, **kw) -> httpx.Response:
    return httpx.post(f"{url}/classify", files={field: (name, data, "image/png")}, params=params, timeout=60, **kw)


# ------------------------------------------------------------------ endpoints
def test_health(server):
    reply = httpx.get(f"{server}/health").json()
    assert reply["success"] is True and reply["status"] == "ok" and reply["backbone"] == "FP_classifier"


def test_model_info(server, predictor):
    reply = httpx.get(f"{server}/model").json()
    assert reply["success"] is True
    assert reply["backbone"] == "FP_classifier"
    assert reply["classes"] == [str(d) for d in range(10)] == predictor.classes
    assert reply["input_size"] == [32, 32]
    assert reply["preprocess"] == predictor.preprocess.to_dict()
    assert reply["path"] == "best.pth", "the server's folders are not the client's business"
    assert reply["precision"] == "fp32"
    assert reply["limits"]["max_upload_bytes"] == int(MAX_UPLOAD_MB * 1024 * 1024)


def test_openapi_describes_the_api(server):
    spec = httpx.get(f"{server}/openapi.json").json()
    assert {"/classify", "/classify/batch", "/health", "/model"} <= set(spec["paths"])
    body = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["img"] and body["properties"]["img"]["format"] == "binary"
    params = {p["name"] for p in spec["paths"]["/classify"]["post"]["parameters"]}
    assert "topk" in params
    assert {"400", "413"} <= set(spec["paths"]["/classify"]["post"]["responses"])


def test_classify_gives_the_true_digit_with_the_predictors_scores(server, samples, predictor):
    from edgecls.data.images import load_rgb

    for path, digit in samples:
        response = post_image(server, path.read_bytes(), name=path.name, params={"topk": 3})
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["success"] is True
        labels = [p["label"] for p in reply["predictions"]]
        probs = [p["probability"] for p in reply["predictions"]]
        assert len(labels) == 3 and labels[0] == digit
        assert probs == sorted(probs, reverse=True)
        expected = predictor.topk(predictor.predict_images([load_rgb(path)])[0], 3)
        assert labels == [name for _, name in expected]
        np.testing.assert_allclose(probs, [score for score, _ in expected], rtol=1e-4, atol=1e-6)


def test_topk_default_and_cap(server, samples):
    path, _ = samples[0]
    default = post_image(server, path.read_bytes()).json()
    assert len(default["predictions"]) == 5
    everything = post_image(server, path.read_bytes(), params={"topk": 50}).json()
    assert len(everything["predictions"]) == 10
    assert abs(sum(p["probability"] for p in everything["predictions"]) - 1.0) < 1e-4


def test_batch_classifies_each_file_and_reports_bad_ones(server, samples):
    files = [("img", (p.name, p.read_bytes(), "image/png")) for p, _ in samples[:3]]
    files.insert(1, ("img", ("notes.txt", b"not an image at all", "text/plain")))
    response = httpx.post(f"{server}/classify/batch", files=files, params={"topk": 2}, timeout=60)
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["success"] is True and reply["failed"] == 1
    results = reply["results"]
    assert [r["filename"] for r in results] == [samples[0][0].name, "notes.txt", samples[1][0].name, samples[2][0].name]
    assert results[1]["success"] is False and results[1]["status"] == 400 and "not an image" in results[1]["error"]
    for result, (_, digit) in zip([results[0], results[2], results[3]], samples[:3]):
        assert result["success"] is True and len(result["predictions"]) == 2
        assert result["predictions"][0]["label"] == digit


def test_web_page_and_assets_are_local(server):
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="/static/app.js"' in page.text and 'href="/static/style.css"' in page.text
    for asset in ("app.js", "style.css"):
        assert httpx.get(f"{server}/static/{asset}").status_code == 200
    static = REPO / "edgecls" / "serve" / "static"
    for file in static.iterdir():
        text = file.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, f"{file.name} reaches out"


# ------------------------------------------------------------------ bad input: 4xx JSON, never a crash
def _truncated_png() -> bytes:
    data = noise_png(64)
    return data[: len(data) // 2]


BAD_UPLOADS = {
    # name: (files, params, status, words in the message)
    "not_an_image": ({"img": ("photo.png", b"%PDF-1.4 this is not an image", "image/png")}, None, 400, "not an image"),
    "truncated": ({"img": ("cut.png", _truncated_png(), "image/png")}, None, 400, "truncated"),
    "zero_bytes": ({"img": ("empty.png", b"", "image/png")}, None, 400, "empty"),
    "wrong_field": ({"image": ("x.png", noise_png(8), "image/png")}, None, 400, "missing multipart file field 'img'"),
    "text_not_file": ({"img": (None, "/etc/passwd")}, None, 400, "must be a file upload"),
    "over_size_limit": ({"img": ("big.png", noise_png(700), "image/png")}, None, 413, "limit"),
    "pixel_bomb_over_limit": ({"img": ("bomb.png", png_header_only(10_000, 10_000), "image/png")}, None, 413, "pixels"),
    "pixel_bomb_huge": ({"img": ("bomb.png", png_header_only(60_000, 60_000), "image/png")}, None, 413, "pixels"),
    "topk_not_int": ({"img": ("x.png", noise_png(8), "image/png")}, {"topk": "abc"}, 400, "topk"),
    "topk_zero": ({"img": ("x.png", noise_png(8), "image/png")}, {"topk": "0"}, 400, "topk"),
    "topk_negative": ({"img": ("x.png", noise_png(8), "image/png")}, {"topk": "-3"}, 400, "topk"),
    "topk_float": ({"img": ("x.png", noise_png(8), "image/png")}, {"topk": "1.5"}, 400, "topk"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_upload_is_a_json_4xx(server, case):
    files, params, status, words = BAD_UPLOADS[case]
    response = httpx.post(f"{server}/classify", files=files, params=params, timeout=60)
    assert response.status_code == status, response.text
    reply = response.json()
    assert reply["success"] is False and words in reply["error"], reply
    assert httpx.get(f"{server}/health").status_code == 200


def test_missing_file_no_fields(server):
    response = httpx.post(f"{server}/classify", files={}, data={"note": "hi"}, timeout=30)
    # httpx sends a urlencoded body when there are no files: the server says to use multipart
    assert response.status_code == 415 and response.json()["success"] is False
    body = b'--xyz\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--xyz--\r\n'
    response = httpx.post(
        f"{server}/classify", content=body, headers={"content-type": "multipart/form-data; boundary=xyz"}, timeout=30
    )
    assert response.status_code == 400 and "missing multipart file field 'img'" in response.json()["error"]
    assert "['note']" in response.json()["error"]


def test_json_body_is_refused(server):
    response = httpx.post(f"{server}/classify", json={"img": "/etc/passwd"}, timeout=30)
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["error"]


def test_malformed_multipart(server):
    response = httpx.post(
        f"{server}/classify",
        content=b"garbage without boundary",
        headers={"content-type": "multipart/form-data"},
        timeout=30,
    )
    assert response.status_code == 400 and response.json()["success"] is False


def test_over_size_chunked_upload_without_content_length(server):
    """No Content-Length: the server counts the bytes as they arrive and stops at the limit."""
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="img"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()

    def body():
        yield head
        for _ in range(40):  # 40 x 64 KiB = 2.5 MiB, over the 1 MiB limit
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        f"{server}/classify",
        content=body(),
        timeout=60,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413, response.text
    assert response.json()["success"] is False and "limit" in response.json()["error"]


def test_huge_declared_body_is_refused_before_reading(server):
    """A Content-Length far over the limit is answered at once (no upload of 200 MB is waited for)."""
    with socket.create_connection(urlsplit_host_port(server), timeout=30) as sock:
        sock.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 200000000\r\n\r\n--b\r\n"
        )
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert b" 413 " in status_line, reply
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["success"] is False


def urlsplit_host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


@pytest.mark.parametrize("count", [2, 5])  # 5: past the multipart parser's own file limit
def test_several_images_on_single_endpoint(server, samples, count):
    path, _ = samples[0]
    files = [("img", (f"{i}.png", path.read_bytes(), "image/png")) for i in range(count)]
    response = httpx.post(f"{server}/classify", files=files, timeout=30)
    assert response.status_code == 400 and "/classify/batch" in response.json()["error"]


@pytest.mark.parametrize("count", [5, 12])  # server --max-batch 4; 12: past the multipart parser's file limit
def test_batch_over_file_count_limit(server, samples, count):
    path, _ = samples[0]
    files = [("img", (f"{i}.png", path.read_bytes(), "image/png")) for i in range(count)]
    response = httpx.post(f"{server}/classify/batch", files=files, timeout=30)
    assert response.status_code == 413 and "limit of 4" in response.json()["error"]


def test_unknown_route_and_method_are_json(server):
    missing = httpx.get(f"{server}/classify/nothing")
    assert missing.status_code == 404 and missing.json()["success"] is False
    wrong = httpx.get(f"{server}/classify")
    assert wrong.status_code == 405 and wrong.json()["success"] is False and "GET" in wrong.json()["error"]


# ------------------------------------------------------------------ concurrency
def test_concurrent_burst_all_succeed(server, samples):
    """32 clients x 4 requests at once: every answer right, and the server still healthy afterwards."""
    payloads = [(p.read_bytes(), digit) for p, digit in samples]

    def client(index: int) -> list[tuple[int, str, str]]:
        out = []
        with httpx.Client(timeout=120) as http:
            for j in range(4):
                data, digit = payloads[(index + j) % len(payloads)]
                r = http.post(f"{server}/classify", files={"img": ("d.png", data, "image/png")}, params={"topk": 1})
                out.append(
                    (r.status_code, r.json()["predictions"][0]["label"] if r.status_code == 200 else r.text, digit)
                )
        return out

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = [item for chunk in pool.map(client, range(32)) for item in chunk]
    assert len(results) == 128
    assert all(status == 200 for status, _, _ in results), [r for r in results if r[0] != 200][:3]
    assert all(label == digit for _, label, digit in results)
    health = httpx.get(f"{server}/health").json()
    assert health["images"] >= 128 and health["queued"] == 0


def test_micro_batcher_merges_requests_that_wait_and_keeps_order():
    """While the model works, new requests queue; the next forward pass takes them all, in order."""
    from edgecls.serve.batcher import MicroBatcher

    calls: list[int] = []

    def slow_model(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        time.sleep(0.2)
        return batch.reshape(len(batch), -1)[:, :2] * 2

    async def scenario():
        batcher = MicroBatcher(slow_model, max_batch=8)
        await batcher.start()
        try:
            first = asyncio.ensure_future(batcher.predict([np.full((3, 2, 2), 0.0, np.float32)]))
            await asyncio.sleep(0.05)  # the first forward pass is now running
            rest = [
                asyncio.ensure_future(batcher.predict([np.full((3, 2, 2), float(i), np.float32)])) for i in range(1, 11)
            ]
            results = await asyncio.gather(first, *rest)
        finally:
            await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert [float(r[0][0]) for r in results] == [2.0 * i for i in range(11)]
    assert calls == [1, 8, 2], calls


def test_micro_batcher_survives_a_failing_forward():
    from edgecls.serve.batcher import MicroBatcher

    def model(batch):
        if (batch < 0).any():
            raise RuntimeError("boom")
        return batch.reshape(len(batch), -1)

    async def scenario():
        batcher = MicroBatcher(model)
        await batcher.start()
        try:
            with pytest.raises(RuntimeError):
                await batcher.predict([np.full((1, 1, 1), -1.0, np.float32)])
            return await batcher.predict([np.ones((1, 1, 1), np.float32)])
        finally:
            await batcher.stop()

    assert float(asyncio.run(scenario())[0][0]) == 1.0


# ------------------------------------------------------------------ ONNX model and the command line
def test_serves_an_onnx_file_with_the_same_answers(trained_ckpt, samples, tmp_path):
    import onnx
    import torch

    from edgecls.data.presets import Preprocess
    from edgecls.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from edgecls.export.metadata import write_metadata

    ckpt = load_checkpoint(trained_ckpt)
    model = model_from_checkpoint(ckpt)
    onnx_path = tmp_path / "model.onnx"
    torch.onnx.export(
        model,
        torch.zeros(1, 3, 32, 32),
        str(onnx_path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        dynamo=False,
    )
    proto = onnx.load(str(onnx_path))
    write_metadata(
        proto, classes=ckpt["classes"], preprocess=Preprocess.from_dict(ckpt["preprocess"]), backbone="FP_classifier"
    )
    onnx.save(proto, str(onnx_path))
    proc, url = start_server(onnx_path, "--no-access-log")
    try:
        info = httpx.get(f"{url}/model").json()
        assert info["kind"] == "onnx" and info["path"] == "model.onnx" and info["precision"] == "fp32"
        for path, digit in samples[:2]:
            reply = post_image(url, path.read_bytes()).json()
            assert reply["success"] is True and reply["predictions"][0]["label"] == digit
    finally:
        stop_server(proc)
    from edgecls.export.quantize import quantize_int8
    from edgecls.predict import Predictor

    fp32 = Predictor.from_path(onnx_path)
    calib = np.stack([fp32.preprocess_image(Image.open(p).convert("RGB")) for p, _ in samples]).astype(np.float32)
    onnx.save(quantize_int8(proto, calib), str(tmp_path / "model.int8.onnx"))  # as --quantize int8
    assert Predictor.from_path(tmp_path / "model.int8.onnx").info()["precision"] == "int8"


def test_cli_missing_model_is_a_one_line_error(tmp_path):
    result = run_cmd(["serve.py", "--model", str(tmp_path / "missing.pth"), "--port", "0"], timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_busy_port_is_a_one_line_error(trained_ckpt):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_cmd(["serve.py", "--model", str(trained_ckpt), "--port", str(port)], timeout=120)
    assert result.returncode == 2 and "--port" in result.stderr and "Traceback" not in result.stderr


def test_edgecls_serve_command_help():
    result = run_cmd(["-m", "edgecls.cli.main", "serve", "--help"], timeout=120)
    assert result.returncode == 0
    for flag in ("--model", "--host", "--port", "--max-upload-mb", "--max-pixels", "(default: 127.0.0.1)"):
        assert flag in result.stdout
