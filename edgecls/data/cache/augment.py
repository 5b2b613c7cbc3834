"""The training crop, flip and normalization of cached rows, batched on the training device.

One `grid_sample` per batch turns uint8 N x H x W x 3 rows into normalized float N x 3 x outH x outW.
Crop boxes come from the same sampler as the PIL path (`edgecls.data.crop`), in the ORIGINAL image's
coordinates; the cache is a squash of the original, so a box in normalized coordinates is the same box.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgecls.data.augment import apply_per_image, erase_per_image
from edgecls.data.crop import sample_boxes, target_ratios
from edgecls.data.presets import Preprocess


class BatchAugment:
    """Random-resized crop + horizontal flip + normalize on a uint8 NxHxWx3 batch, in one grid_sample."""

    def __init__(self, preprocess: Preprocess, hflip: float = 0.5, crop_scale: float = 0.6, policy=None, eraser=None):
        self.policy = policy  # per-image extra augmentation on uint8 pixels (edgecls.data.augment)
        self.eraser = eraser  # per-image random erasing on the normalized tensor
        self.out_h, self.out_w = preprocess.input_size
        self.resize = preprocess.resize
        self.hflip = hflip
        self.crop_scale = crop_scale
        self.mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.mode = preprocess.interpolation if preprocess.interpolation in ("bicubic", "nearest") else "bilinear"

    def boxes(self, orig_sizes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """N x 4 boxes (x0, y0, w, h) as fractions of the image; a negative width means mirrored."""
        widths, heights = orig_sizes[:, 0], orig_sizes[:, 1]
        ratios = target_ratios(widths, heights, self.resize, (self.out_h, self.out_w))
        px = sample_boxes(widths, heights, self.crop_scale, ratios, generator)
        scale = torch.stack([widths, heights, widths, heights], 1).double()
        out = px / scale
        n = orig_sizes.shape[0]
        flip = torch.rand(n, generator=generator) < self.hflip if self.hflip > 0 else torch.zeros(n, dtype=torch.bool)
        out[flip, 2] *= -1
        return out

    def __call__(self, batch_u8: torch.Tensor, orig_sizes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 NxHxWx3 on any device -> float32 Nx3xoutHxoutW normalized on the same device."""
        device = batch_u8.device
        boxes = self.boxes(orig_sizes, generator)
        x = batch_u8.permute(0, 3, 1, 2).float()
        n = x.shape[0]
        x0, y0, bw, bh = boxes.unbind(1)
        sx, sy = bw.abs(), bh
        cx = (x0 + sx / 2) * 2 - 1
        cy = (y0 + sy / 2) * 2 - 1
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = torch.where(bw < 0, -sx, sx)
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = sy
        theta[:, 1, 2] = cy
        theta = _to_device(theta.float(), device)
        grid = F.affine_grid(theta, [n, 3, self.out_h, self.out_w], align_corners=False)
        x = F.grid_sample(x, grid, mode=self.mode, padding_mode="border", align_corners=False)
        if self.mode == "bicubic":
            x = x.clamp(0, 255)
        if self.policy is not None:
            x = apply_per_image(self.policy, x.round().clamp(0, 255).to(torch.uint8)).float()
        x = (x - _to_device(self.mean, device)) / _to_device(self.std, device)
        return erase_per_image(self.eraser, x) if self.eraser is not None else x


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Small host tensor -> device without a stream sync (a pageable copy would wait for queued GPU work)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def normalize_batch(batch_u8: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """uint8 NxHxWx3 -> float32 Nx3xHxW, the same arithmetic as Preprocess.normalize_uint8."""
    x = batch_u8.to(torch.float32)
    mean = _to_device(torch.tensor(preprocess.mean, dtype=torch.float32), x.device)
    std = _to_device(torch.tensor(preprocess.std, dtype=torch.float32), x.device)
    return ((x - mean) / std).permute(0, 3, 1, 2).contiguous()
