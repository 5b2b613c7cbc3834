#!/usr/bin/env python3
"""One table from several train_speed.py --json results (the GPU scripts print it at the end).

python benchmarks/train_speed_table.py OUT/train_speed_*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(result: dict) -> str:
    t = result["train"]["timings"]
    fill = f"{t['fill_s']:.1f} / {t['fill_wait_s']:.1f}" if "fill_s" in t else "-"
    first_step = f"{t['first_step_s']:.1f}" if "first_step_s" in t else "-"
    data = Path(result.get("train_data", "-")).name
    reused = ("reused" if "fill_s" not in t else "filled") if t.get("cache") == "gpu" else t.get("cache", "-")
    return (
        f"| {result['backbone']} | {data} ({reused}) | {'on' if result.get('cudnn_benchmark', True) else 'off'} "
        f"| {result['ceiling']['images_per_s']:,.0f} | {result['first_epoch_images_per_s']:,.0f} "
        f"| {result['first_epoch_ratio']:.2f} | {result['steady_images_per_s']:,.0f} | {result['steady_ratio']:.2f} "
        f"| {t['cache_s']:.1f} | {first_step} | {fill} |"
    )


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    print(
        "| backbone | data (gpu cache) | cudnn autotune | ceiling img/s | first epoch img/s | x ceiling | steady img/s "
        "| x ceiling | cache set-up s | first step s | fill s / waited s |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in argv:
        try:
            print(row(json.loads(Path(name).read_text())))
        except (OSError, ValueError, KeyError) as exc:
            print(f"| {name}: no result ({type(exc).__name__}: {exc}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
