#!/usr/bin/env python3
"""Where a GPU run's first epoch goes: JPEG decode rates and cudnn autotuning, measured apart.

    python benchmarks/gpu_first_epoch_probe.py --data /tmp/edgecls-photos [--images 8000]

  nvjpeg raw       torchvision.io.decode_jpeg on the device, 128 files a call, bytes already in RAM
  read + parse     reading the files and parsing their JPEG headers (threads), no decode
  DeviceFill       edgecls' whole "gpu" cache fill (read, parse, decode, resize, store), alone
  cudnn autotune   resnet18 bf16 channels_last batch 256: the first 10 steps vs later ones, with
                   torch.backends.cudnn.benchmark on and off (a fresh process each)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS_SCRIPT = r"""
import sys, time, torch, torchvision
torch.backends.cudnn.benchmark = sys.argv[1] == "1"
m = torchvision.models.resnet18(num_classes=8).cuda().to(memory_format=torch.channels_last)
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
x = torch.randn(256, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 8, (256,), device="cuda")
def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(m(x).float(), y)
    opt.zero_grad(); loss.backward(); opt.step()
t = time.perf_counter()
for _ in range(10): step()
torch.cuda.synchronize(); first = time.perf_counter() - t
t = time.perf_counter()
for _ in range(30): step()
torch.cuda.synchronize(); later = (time.perf_counter() - t) / 3
print(f"{first:.3f} {later:.3f}")
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder of JPEGs (e.g. benchmarks/photos.py output)")
    ap.add_argument("--images", type=int, default=8000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from edgecls.data.cache import TrainDecoder
    from edgecls.data.gpu_cache import DeviceFill, nvjpeg_probe

    paths = sorted(str(p) for p in Path(args.data).rglob("*.jpg"))[: args.images]
    device = torch.device("cuda", 0)
    out = {"images": len(paths), "gpu": torch.cuda.get_device_name(0)}

    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        probes = list(pool.map(nvjpeg_probe, paths))
    out["read_parse_img_s"] = round(len(paths) / (time.perf_counter() - start))

    datas = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d, _ in probes]
    decode_jpeg(datas[:128], mode=ImageReadMode.RGB, device=device)  # warm nvjpeg
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(datas), 128):
        decode_jpeg(datas[i:i + 128], mode=ImageReadMode.RGB, device=device)
    torch.cuda.synchronize()
    out["nvjpeg_raw_img_s"] = round(len(paths) / (time.perf_counter() - start))

    start = time.perf_counter()
    DeviceFill(paths, TrainDecoder((280, 280)), device, workers=16, log=lambda m: None).run()
    out["device_fill_img_s"] = round(len(paths) / (time.perf_counter() - start))

    for flag in ("1", "0"):
        res = subprocess.run([sys.executable, "-c", STEPS_SCRIPT, flag], capture_output=True, text=True)
        first, later = (float(v) for v in res.stdout.split())
        out[f"cudnn_benchmark_{flag}"] = {"first_10_steps_s": first, "10_steps_later_s": later}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
