"""Training-time augmentation on PIL images; evaluation uses Preprocess.__call__ (deterministic)."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from edgecls.data.crop import sample_boxes, target_ratios
from edgecls.data.presets import INTERPOLATIONS, Preprocess


class TrainTransform:
    """Random-resized-crop to the input size, optional horizontal flip, then normalize.

    `crop_scale` is the smallest crop area fraction (1.0 = whole image, no crop). The crop box comes
    from the sampler the batched (cached) path uses (`edgecls.data.crop`). Randomness comes from
    Python's `random` (seeded per worker by the DataLoader), so runs are reproducible.
    """

    def __init__(self, preprocess: Preprocess, hflip: float = 0.5, crop_scale: float = 0.6, policy=None, eraser=None):
        self.policy = policy  # extra augmentation on the cropped PIL image (edgecls.data.augment)
        self.eraser = eraser  # random erasing on the normalized tensor
        self.preprocess = preprocess
        self.hflip = hflip
        self.crop_scale = crop_scale
        self.interp = INTERPOLATIONS[preprocess.interpolation]

    def _crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        generator = torch.Generator().manual_seed(random.getrandbits(63))
        widths, heights = torch.tensor([width]), torch.tensor([height])
        ratios = target_ratios(widths, heights, self.preprocess.resize, self.preprocess.input_size)
        x, y, w, h = (int(v) for v in sample_boxes(widths, heights, self.crop_scale, ratios, generator)[0])
        return x, y, w, h

    def __call__(self, img: Image.Image) -> torch.Tensor:
        h_out, w_out = self.preprocess.input_size
        if self.crop_scale < 1.0:
            x, y, w, h = self._crop_box(img.width, img.height)
            img = img.resize((w_out, h_out), self.interp, box=(x, y, x + w, y + h))
        else:
            img = self.preprocess.resize_image(img)
        if self.hflip > 0 and random.random() < self.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.policy is not None:
            img = self.policy(img)
        x = torch.from_numpy(self.preprocess.normalize_uint8(np.asarray(img, np.uint8)))
        return self.eraser(x) if self.eraser is not None else x
