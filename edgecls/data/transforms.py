"""Training-time augmentation; evaluation uses Preprocess.__call__ (deterministic)."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from edgecls.data.presets import INTERPOLATIONS, Preprocess


class TrainTransform:
    """Random-resized-crop to the input size, optional horizontal flip, then normalize.

    `crop_scale` is the smallest crop area fraction (1.0 = whole image, no crop).
    Uses Python's `random` (seeded per worker by the DataLoader) so runs are reproducible.
    """

    def __init__(self, preprocess: Preprocess, hflip: float = 0.5, crop_scale: float = 0.6):
        self.preprocess = preprocess
        self.hflip = hflip
        self.crop_scale = crop_scale
        self.interp = INTERPOLATIONS[preprocess.interpolation]

    def _crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        h_out, w_out = self.preprocess.input_size
        # Crops keep the aspect that evaluation sees: the image's own for "squash" (the whole
        # image is stretched to HxW at eval), the output's for "center_crop".
        target_ratio = width / height if self.preprocess.resize == "squash" else w_out / h_out
        area = width * height
        for _ in range(10):
            frac = random.uniform(self.crop_scale, 1.0)
            ratio = target_ratio * np.exp(random.uniform(np.log(3 / 4), np.log(4 / 3)))
            w = int(round(np.sqrt(area * frac * ratio)))
            h = int(round(np.sqrt(area * frac / ratio)))
            if 0 < w <= width and 0 < h <= height:
                return random.randint(0, width - w), random.randint(0, height - h), w, h
        return 0, 0, width, height

    def __call__(self, img: Image.Image) -> torch.Tensor:
        h_out, w_out = self.preprocess.input_size
        if self.crop_scale < 1.0:
            x, y, w, h = self._crop_box(img.width, img.height)
            img = img.resize((w_out, h_out), self.interp, box=(x, y, x + w, y + h))
        else:
            img = self.preprocess.resize_image(img)
        if self.hflip > 0 and random.random() < self.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(self.preprocess.normalize_uint8(np.asarray(img, np.uint8)))
