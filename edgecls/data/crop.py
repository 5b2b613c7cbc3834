"""The random-resized-crop sampler, shared by the PIL training path and the batched (cached) one.

A crop covers an area fraction U(crop_scale, 1) of the ORIGINAL image and has an aspect ratio of
target x exp(U(log 3/4, log 4/3)); ten tries, then the whole image. The target aspect is the one
evaluation shows the model: the image's own under "squash" (eval stretches the whole image to H x W,
so a crop of the image's aspect is stretched the same way), the output's under "center_crop".
"""

from __future__ import annotations

import math

import torch

TRIES = 10
LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


def target_ratios(widths: torch.Tensor, heights: torch.Tensor, resize: str, out_hw: tuple[int, int]) -> torch.Tensor:
    """Width / height each crop aims for, before the random aspect jitter."""
    if resize == "squash":
        return widths.double() / heights.double()
    return torch.full((len(widths),), out_hw[1] / out_hw[0], dtype=torch.float64)


def sample_boxes(
    widths: torch.Tensor,
    heights: torch.Tensor,
    crop_scale: float,
    ratios: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """N x 4 float64 boxes (x0, y0, w, h) in pixels of each original image."""
    n = widths.shape[0]
    width, height = widths.double(), heights.double()
    out = torch.stack([torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64), width, height], 1)
    if crop_scale >= 1.0 or n == 0:
        return out
    area = (width * height)[:, None]
    frac = crop_scale + (1 - crop_scale) * torch.rand(n, TRIES, generator=generator, dtype=torch.float64)
    log_r = LOG_RATIO[0] + (LOG_RATIO[1] - LOG_RATIO[0]) * torch.rand(
        n, TRIES, generator=generator, dtype=torch.float64
    )
    ratio = ratios[:, None] * torch.exp(log_r)
    w = torch.round(torch.sqrt(area * frac * ratio))
    h = torch.round(torch.sqrt(area * frac / ratio))
    ok = (w > 0) & (h > 0) & (w <= width[:, None]) & (h <= height[:, None])
    pos = torch.rand(n, TRIES, 2, generator=generator, dtype=torch.float64)
    first = torch.where(ok.any(1), ok.double().argmax(1), torch.full((n,), -1))
    rows, pick = torch.arange(n), first.clamp(min=0)
    bw, bh = w[rows, pick], h[rows, pick]
    x0 = torch.floor(pos[rows, pick, 0] * (width - bw + 1))
    y0 = torch.floor(pos[rows, pick, 1] * (height - bh + 1))
    found = first >= 0
    out[found] = torch.stack([x0, y0, bw, bh], 1)[found]
    return out
