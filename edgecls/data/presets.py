"""Preprocessing contract (stored in checkpoints and ONNX metadata) and the transforms it makes.

Normalization is written in 0..255 pixel units: out = (pixel - mean) / std.
- kneron:   RGB/256 - 0.5   -> mean 128, std 256 (Kneron's on-chip preprocessing)
- imagenet: torchvision mean/std
- unit:     [0, 1]
- lite:     (RGB - 127) / 128, about [-1, 1] -> mean 127, std 128 (TF's EfficientNet-Lite builder;
            what the pretrained efficientnet-lite0 weights expect)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

from edgecls.data.images import INTERPOLATIONS
from edgecls.errors import UserError

PRESETS: dict[str, tuple[list[float], list[float]]] = {
    "kneron": ([128.0] * 3, [256.0] * 3),
    "imagenet": ([0.485 * 255, 0.456 * 255, 0.406 * 255], [0.229 * 255, 0.224 * 255, 0.225 * 255]),
    "unit": ([0.0] * 3, [255.0] * 3),
    "lite": ([127.0] * 3, [128.0] * 3),
}
RESIZE_POLICIES = ("squash", "center_crop")


@dataclass
class Preprocess:
    """How an RGB image becomes the model's input tensor (1 x 3 x H x W, float32)."""

    input_size: tuple[int, int] = (224, 224)  # H, W
    preset: str = "imagenet"
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    resize: str = "squash"  # squash: resize to HxW; center_crop: shorter side to size/0.875, crop
    interpolation: str = "bilinear"
    channel_order: str = "RGB"

    def __post_init__(self):
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        if self.preset not in PRESETS and not (self.mean and self.std):
            raise UserError(f"`preprocess` {self.preset!r}: choose one of {sorted(PRESETS)}")
        if not self.mean:
            self.mean, self.std = (list(v) for v in PRESETS[self.preset])
        if self.resize not in RESIZE_POLICIES:
            raise UserError(f"resize policy {self.resize!r}: choose one of {RESIZE_POLICIES}")
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(f"interpolation {self.interpolation!r}: choose one of {sorted(INTERPOLATIONS)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    # --- deterministic eval path (shared by training's validation, Predictor, ONNX) ---

    def resize_image(self, img: Image.Image) -> Image.Image:
        h, w = self.input_size
        interp = INTERPOLATIONS[self.interpolation]
        if self.resize == "squash":
            return img.resize((w, h), interp)
        scale = 1 / 0.875
        rh, rw = round(h * scale), round(w * scale)
        ratio = max(rh / img.height, rw / img.width)
        img = img.resize((max(rw, round(img.width * ratio)), max(rh, round(img.height * ratio))), interp)
        left, top = (img.width - w) // 2, (img.height - h) // 2
        return img.crop((left, top, left + w, top + h))

    def normalize_uint8(self, arr: np.ndarray) -> np.ndarray:
        """HxWx3 (or NxHxWx3) uint8 -> (N)x3xHxW float32 normalized."""
        x = arr.astype(np.float32)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Eval transform: RGB PIL image -> 3xHxW float tensor."""
        return torch.from_numpy(self.normalize_uint8(np.asarray(self.resize_image(img), np.uint8)))


def make_preprocess(input_size, preset: str, **kw) -> Preprocess:
    return Preprocess(input_size=tuple(input_size), preset=preset, **kw)
