#!/usr/bin/env python3
"""Load test of `serve.py`: N concurrent clients over loopback for a fixed time, against the bare Predictor.

    python benchmarks/serve_load.py                      # mobilenetv2 ONNX (random weights), 64 clients, 60 s
    python benchmarks/serve_load.py --clients 8 --duration 10 --model model.onnx --image photo.jpg

Measured in one run:
  baseline  the bare Predictor at batch 1 (`predict_arrays` on one preprocessed image in a loop),
            and batch 1 including the JPEG decode and preprocessing (`load_rgb_bytes` + `predict_images`)
  served    POST /classify with the same JPEG from N keep-alive clients: requests/s, p50/p99 latency,
            failed requests, mean micro-batch size
Targets (issue 6): zero failed requests with 64 clients for 60 s; served rate >= 0.8 x bare batch-1 rate.
Prints a table and writes JSON (--out). The clients are a minimal asyncio HTTP/1.1 client in this process
so that measuring costs the machine as little as possible; the server is a separate `serve.py` process.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_mobilenetv2_onnx(out: Path) -> Path:
    """mobilenetv2 (random weights are fine for a load test) exported with edgecls metadata, dynamic batch."""
    import onnx
    import torch

    from edgecls.data.presets import Preprocess
    from edgecls.export.metadata import write_metadata
    from edgecls.models import create_model, get_spec

    spec = get_spec("mobilenetv2")
    model = create_model("mobilenetv2", num_classes=10).eval()
    h, w = spec.input_size
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice is noise here
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            torch.zeros(1, 3, h, w),
            str(out),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load(str(out))
    write_metadata(
        proto,
        classes=[f"class{i}" for i in range(10)],
        preprocess=Preprocess(input_size=spec.input_size, preset=spec.preprocess),
        backbone="mobilenetv2",
    )
    onnx.save(proto, str(out))
    return out


def sample_jpeg() -> bytes:
    """scikit-learn's bundled photo (china.jpg, 427x640): a real JPEG with no download."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    buf = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def rate_for(seconds: float, step) -> tuple[float, int]:
    step()  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    return count / (time.perf_counter() - start), count


def bare_rates(model: Path, jpeg: bytes, seconds: float, threads: int | None) -> dict:
    from edgecls.data.images import load_rgb_bytes
    from edgecls.predict import Predictor

    predictor = Predictor.from_path(model, num_threads=threads)
    one = predictor.preprocess_image(load_rgb_bytes(jpeg))[None]
    model_rate, model_n = rate_for(seconds, lambda: predictor.predict_arrays(one))
    full_rate, full_n = rate_for(seconds, lambda: predictor.predict_images([load_rgb_bytes(jpeg)]))
    return {
        "predict_arrays_batch1_per_s": model_rate,
        "predict_arrays_calls": model_n,
        "decode_and_predict_batch1_per_s": full_rate,
        "decode_and_predict_calls": full_n,
    }


def start_server(model: Path, threads: int | None, extra: list[str]) -> tuple[subprocess.Popen, str, int]:
    cmd = [sys.executable, str(REPO / "serve.py"), "--model", str(model), "--port", "0", "--no-access-log", *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "http://" in line:
            host, port = line.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep the pipe drained
            return proc, host, int(port)
    raise SystemExit(f"serve.py exited with {proc.wait()} before it printed its address")


def multipart_request(host: str, port: int, path: str, jpeg: bytes) -> bytes:
    boundary = "edgeclsbenchboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="img"; filename="photo.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + jpeg
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def one_client(host: str, port: int, request: bytes, stop_at: float, latencies: list, errors: list) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            start = time.perf_counter()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if status != 200 or b'"success":true' not in body:
                errors.append(f"HTTP {status}: {body[:200]!r}")
            if b"connection: close" in head.lower():
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def load(host: str, port: int, jpeg: bytes, clients: int, seconds: float) -> dict:
    request = multipart_request(host, port, "/classify?topk=5", jpeg)
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    await asyncio.gather(*(one_client(host, port, request, start + seconds, latencies, errors) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    ok = len(latencies) - len(errors)
    lat = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": len(latencies),
        "ok": ok,
        "failed": len(errors),
        "requests_per_s": ok / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "first_errors": errors[:5],
    }


def health(host: str, port: int) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=10) as response:
        return json.loads(response.read())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default=None, help="a .onnx or .pth to serve (default: build mobilenetv2 ONNX)")
    parser.add_argument("--image", default=None, help="image file each request uploads (default: sklearn china.jpg)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent keep-alive clients")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--baseline-seconds", type=float, default=10.0, help="seconds for each bare Predictor rate")
    parser.add_argument("--threads", type=int, default=None, help="model intra-op threads (server and baseline)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra serve.py flag (repeatable)")
    parser.add_argument("--out", default=str(REPO / "bench_out" / "serve_load.json"), help="JSON output")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else build_mobilenetv2_onnx(Path(tmp) / "mobilenetv2.onnx")
        jpeg = Path(args.image).read_bytes() if args.image else sample_jpeg()
        print(
            f"model {model.name}, image {len(jpeg) / 1024:.0f} KiB, {args.clients} clients x {args.duration:g} s, "
            f"{os.cpu_count()} CPUs",
            flush=True,
        )
        bare = bare_rates(model, jpeg, args.baseline_seconds, args.threads)
        proc, host, port = start_server(model, args.threads, args.server_arg)
        try:
            for _ in range(200):
                try:
                    health(host, port)
                    break
                except OSError:
                    time.sleep(0.1)
            asyncio.run(load(host, port, jpeg, min(args.clients, 8), 2.0))  # warm-up
            before = health(host, port)
            served = asyncio.run(load(host, port, jpeg, args.clients, args.duration))
            after = health(host, port)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    batches = after["batches"] - before["batches"]
    served["mean_micro_batch"] = (after["images"] - before["images"]) / batches if batches else 0.0
    served["server_alive_after"] = alive
    ratio = served["requests_per_s"] / bare["predict_arrays_batch1_per_s"]
    ratio_full = served["requests_per_s"] / bare["decode_and_predict_batch1_per_s"]
    result = {
        "benchmark": "serve_load",
        "model": model.name,
        "image_bytes": len(jpeg),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "baseline": bare,
        "served": served,
        "served_over_bare_batch1": ratio,
        "served_over_decode_and_predict_batch1": ratio_full,
        "targets": {"zero_failed": served["failed"] == 0, "ratio_ge_0.8": ratio >= 0.8},
    }

    print(f"{'measure':<44} {'value':>12}")
    print(f"{'bare Predictor batch-1 (predict_arrays) /s':<44} {bare['predict_arrays_batch1_per_s']:>12.1f}")
    print(f"{'bare batch-1 incl. JPEG decode+preprocess /s':<44} {bare['decode_and_predict_batch1_per_s']:>12.1f}")
    print(f"{'served requests/s':<44} {served['requests_per_s']:>12.1f}")
    print(f"{'served latency p50 / p99 ms':<44} {served['p50_ms']:>5.1f} / {served['p99_ms']:<5.1f}")
    print(f"{'failed requests':<44} {served['failed']:>12d}  (of {served['requests']})")
    print(f"{'mean micro-batch':<44} {served['mean_micro_batch']:>12.2f}")
    print(f"{'served / bare batch-1 (target >= 0.8)':<44} {ratio:>12.2f}")
    print(f"{'served / bare batch-1 with decode':<44} {ratio_full:>12.2f}")
    if served["first_errors"]:
        print("first errors:", *served["first_errors"], sep="\n  ")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(result, indent=2))
    os.replace(tmp_out, out)
    print(f"wrote {out}")
    return 0 if served["failed"] == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
