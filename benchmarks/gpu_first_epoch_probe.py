#!/usr/bin/env python3
"""Where a GPU run's first epoch goes: file reading, JPEG decode and cudnn autotuning, measured apart.

  python benchmarks/gpu_first_epoch_probe.py --data /tmp/edgecls-photos-30000-2000/train [--images 8000] [--json F]
  python benchmarks/gpu_first_epoch_probe.py --data DIR --images 256 --batch 2 --backbones resnet18   # CPU dry run

read             fill_workers.read_chunks (child processes read the files, parse their headers, PIL-decode the rest)
nvjpeg raw       torchvision.io.decode_jpeg on the device, 128 files a call, bytes already in RAM
DeviceFill       edgecls' whole "gpu" cache fill (read, parse, decode, resize, store), alone
autotune         for each --backbones: bf16 channels_last batch 256 at 224, the first 10 steps and
                 10 later steps, with cudnn.benchmark on (PyTorch's default limit of 10 algorithms),
                 on with benchmark_limit 1, and off; a fresh process each (the baseline for each is off)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS_SCRIPT = r"""
import sys, time, torch
sys.path.insert(0, sys.argv[3])
from edgecls.models.registry import create_model
mode, name, batch, dev = sys.argv[1], sys.argv[2], int(sys.argv[4]), sys.argv[5]
torch.backends.cudnn.benchmark = mode != "off"
if mode == "limit1":
    torch.backends.cudnn.benchmark_limit = 1
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
m = create_model(name, num_classes=8).to(dev).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(batch, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 8, (batch,), device=dev)
def step():
    with torch.autocast(dev, dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(m(x).float(), y)
    opt.zero_grad(); loss.backward(); opt.step()
sync()
t = time.perf_counter()
for _ in range(10): step()
sync(); first = time.perf_counter() - t
later = []
for _ in range(3):
    t = time.perf_counter()
    for _ in range(10): step()
    sync(); later.append(time.perf_counter() - t)
print(f"{first:.3f} {min(later):.4f}")
"""

MODES = ("on", "limit1", "off")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder of JPEGs (e.g. benchmarks/photos.py output)")
    ap.add_argument("--images", type=int, default=8000)
    ap.add_argument("--backbones", nargs="*", default=["resnet18", "mobilenetv2", "efficientnet-b0", "resnet50"])
    ap.add_argument("--batch", type=int, default=256, help="batch of the autotune steps")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from edgecls.data.cache.fill_workers import JPEG, read_chunks
    from edgecls.data.cache.gpu import READ_CHUNK, DeviceFill
    from edgecls.data.cache.train_decoder import TrainDecoder

    paths = sorted(str(p) for p in Path(args.data).rglob("*.jpg"))[: args.images]
    if not paths:
        print(f"error: {args.data}: no .jpg files; make some with benchmarks/photos.py", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()  # without CUDA: a dry run of the script on the CPU
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    out = {"images": len(paths), "gpu": torch.cuda.get_device_name(0) if cuda else "none (CPU dry run)"}
    chunks = [paths[i : i + READ_CHUNK] for i in range(0, len(paths), READ_CHUNK)]

    start = time.perf_counter()
    datas = [
        torch.frombuffer(r.data, dtype=torch.uint8)
        for chunk in read_chunks(chunks, (280, 280))
        for r in chunk
        if r.kind == JPEG
    ]
    out["read_img_s"] = round(len(paths) / (time.perf_counter() - start))

    decode_jpeg(datas[:128], mode=ImageReadMode.RGB, device=device)  # warm nvjpeg
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(0, len(datas), 128):
        decode_jpeg(datas[i : i + 128], mode=ImageReadMode.RGB, device=device)
    sync()
    out["nvjpeg_raw_img_s"] = round(len(datas) / (time.perf_counter() - start))

    start = time.perf_counter()
    DeviceFill(paths, TrainDecoder((280, 280)), device, log=lambda m: None).run()
    out["device_fill_img_s"] = round(len(paths) / (time.perf_counter() - start))
    print(json.dumps(out), flush=True)

    out["autotune"] = {}
    for name in args.backbones:
        row = {}
        for mode in MODES:
            res = subprocess.run(
                [sys.executable, "-c", STEPS_SCRIPT, mode, name, str(REPO), str(args.batch), device.type],
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                row[mode] = {
                    "error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"
                }
                continue
            first, later = (float(v) for v in res.stdout.split())
            row[mode] = {"first_10_steps_s": first, "10_steps_later_s": later}
        out["autotune"][name] = row
        print(name, json.dumps(row), flush=True)

    print(
        f"\n{out['gpu']}, {len(paths)} JPEGs: read {out['read_img_s']:,} img/s, nvjpeg alone "
        f"{out['nvjpeg_raw_img_s']:,}, "
        f"whole fill alone {out['device_fill_img_s']:,}"
    )
    if out["autotune"]:
        print(f"{'backbone':<16} " + "  ".join(f"{m + ' first10/later10 s':>26}" for m in MODES))
    for name, row in out["autotune"].items():
        cells = [
            f"{r['first_10_steps_s']:>12.2f} / {r['10_steps_later_s']:<11.4f}" if "error" not in r else f"{'error':>26}"
            for r in (row[m] for m in MODES)
        ]
        print(f"{name:<16} " + "  ".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
