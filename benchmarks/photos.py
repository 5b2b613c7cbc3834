#!/usr/bin/env python3
"""Real photographs as a JPEG folder dataset, for benchmarks that need camera-like files.

Sources are photos shipped inside installed packages (no download): scikit-learn's two sample
photos, plus scikit-image's bundled ones when it is installed. Each source photo is one class;
each file is a random crop (30-100% of the area, aspect 3:4..4:3) of it, randomly mirrored and
resized to --size (default 500x375, a typical camera thumbnail), saved as JPEG quality 90.

    python benchmarks/photos.py --out /tmp/photos --train 40000 --val 2000
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def source_photos() -> dict[str, np.ndarray]:
    """name -> HxWx3 uint8 photo, from the packages that are installed."""
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    photos = {"china": china, "flower": flower}
    try:
        from skimage import data
    except ImportError:
        return photos
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry"):
        try:
            img = np.asarray(getattr(data, name)())
        except Exception:  # noqa: BLE001 - a photo this skimage version would have to download
            continue
        photos[name] = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    return photos


def random_view(photo: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A random crop of `photo` resized to size = (W, H), mirrored half the time."""
    height, width = photo.shape[:2]
    for _ in range(10):
        area = rng.uniform(0.3, 1.0) * width * height
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))) * size[0] / size[1]
        w, h = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < w <= width and 0 < h <= height:
            break
    else:
        w, h = width, height
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    img = Image.fromarray(photo[top : top + h, left : left + w]).resize(size, Image.BILINEAR)
    return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def _write_chunk(job) -> int:
    out, split, start, count, size, seed = job
    photos = source_photos()
    names = sorted(photos)
    rng = np.random.default_rng([seed, start, 0 if split == "train" else 1])
    for i in range(start, start + count):
        name = names[i % len(names)]
        folder = Path(out) / split / name
        folder.mkdir(parents=True, exist_ok=True)
        random_view(photos[name], size, rng).save(folder / f"{name}_{i:06d}.jpg", quality=90)
    return count


def write_photo_dataset(
    out: str | os.PathLike,
    train: int,
    val: int,
    size: tuple[int, int] = (500, 375),
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """OUT/train/<photo>/*.jpg and OUT/val/<photo>/*.jpg; reused as-is when it already holds the files."""
    out = Path(out)
    have = {s: sum(1 for _ in (out / s).rglob("*.jpg")) if (out / s).is_dir() else 0 for s in ("train", "val")}
    if have == {"train": train, "val": val}:
        return out
    if any(have.values()):
        sys.exit(f"error: {out} holds another photo dataset ({have}); remove it or choose another --out")
    workers = workers or os.cpu_count() or 1
    jobs = []
    for split, count in (("train", train), ("val", val)):
        step = max(64, count // (workers * 4) or 1)
        jobs += [(str(out), split, s, min(step, count - s), size, seed) for s in range(0, count, step)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        written = sum(pool.map(_write_chunk, jobs))
    assert written == train + val
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train", type=int, default=10000, help="training images (spread over the classes)")
    ap.add_argument("--val", type=int, default=1000, help="validation images")
    ap.add_argument("--size", default="500x375", help="WxH of every file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    out = write_photo_dataset(args.out, args.train, args.val, (w, h), args.seed)
    print(f"photo dataset: {out} ({args.train} train + {args.val} val JPEGs, {w}x{h}, {len(source_photos())} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
