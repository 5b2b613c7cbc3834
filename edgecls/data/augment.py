"""Extra training augmentation after the crop and flip, from torchvision's transforms (v2).

- policy: none | light (colour jitter) | trivial (TrivialAugmentWide) | randaugment (RandAugment, 2 ops,
  magnitude 9), applied per image to uint8 pixels (a PIL image on the PIL path, a 3 x H x W tensor on the
  batched path: torchvision's v2 transforms take both);
- random erasing: per image, on the normalized tensor (erased pixels become 0, the dataset mean);
- mixup / cutmix: on the whole batch, turning the labels into class probabilities (off by default).

torchvision draws from torch's global RNG, which the engine seeds per epoch: runs stay reproducible.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

LIGHT_JITTER = 0.2  # brightness, contrast and saturation jitter of the "light" policy


def make_policy(name: str | None):
    """The per-image policy for a name; None for "none"."""
    if name in (None, "none"):
        return None
    if name == "light":
        return v2.ColorJitter(brightness=LIGHT_JITTER, contrast=LIGHT_JITTER, saturation=LIGHT_JITTER)
    if name == "trivial":
        return v2.TrivialAugmentWide()
    if name == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=9)
    raise ValueError(f"augment policy {name!r}")


def apply_per_image(policy, batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W -> the policy applied to each image with its own random draw."""
    return torch.stack([policy(img) for img in batch_u8])


def make_eraser(probability: float):
    return v2.RandomErasing(p=probability, value=0) if probability > 0 else None


def erase_per_image(eraser, batch: torch.Tensor) -> torch.Tensor:
    return torch.stack([eraser(img) for img in batch])


def make_mixer(mixup: float, cutmix: float, num_classes: int):
    """The batch transform for mixup and/or cutmix (one of the two per batch when both are on); None: off."""
    mixers = []
    if mixup > 0:
        mixers.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        mixers.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
