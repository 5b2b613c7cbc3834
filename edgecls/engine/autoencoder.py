"""`train.py --task autoencoder`: train a backbone with a decoder (conv-autoencoder) on reconstruction.

No labels are needed (edgecls.data.unlabelled reads a flat folder, train/ + val/, or shards). The loop
is the engine's own (loops.train_one_epoch): ReconstructionModel turns images into decoder logits and
ReconstructionLoss compares them with the input's pixels in [0, 1] (the preprocessing undone), by MSE
on the sigmoid or by binary cross-entropy on the logits. Validation is that loss on val/ (val_loss;
early stopping and best.pth follow it, lower is better), and each epoch rewrites reconstructions.png: a
fixed set of val images above their reconstructions. The classifier head stays untrained; the pooled
bottleneck is the model's embedding (edgecls embed, cluster, catalog).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecls.errors import UserError

GRID_IMAGES = 8


def prepare(cfg, sources: dict):
    """Refuse what has no meaning without a classifier (engine.recipes.CLASSIFIER_ONLY, label smoothing,
    episodes); the recipe's classifier steps are turned off, and so are BatchNorm recalibration (its pass runs
    the classifier path, not the decoder) and the end-of-training classifier evaluation."""
    from edgecls.engine.recipes import CLASSIFIER_ONLY, refuse_given

    rules = {**CLASSIFIER_ONLY, "label_smoothing": lambda v: bool(v), "episodic": lambda v: bool(v)}
    cfg = refuse_given(cfg, sources, rules, "`task` autoencoder")
    return replace(cfg, final_eval=False, bn_recalibrate=0, label_smoothing=0.0)


def check_run(run) -> None:
    """Before any file is written: the backbone has a decoder; one process."""
    if not callable(getattr(run.model, "reconstruction_logits", None)):
        raise UserError(
            f"`task` autoencoder: {run.cfg.backbone} has no decoder; use `backbone` conv-autoencoder (or a plugin "
            "whose model has reconstruction_logits)"
        )
    if run.ctx.enabled:
        raise UserError("`task` autoencoder: training runs in one process; start it without torchrun")
    if hasattr(run.model, "check_input"):
        run.model.check_input(torch.zeros(1, 3, *run.preprocess.input_size))


class ReconstructionModel(nn.Module):
    """What the engine's loop trains: images -> decoder logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.reconstruction_logits(images)


class ReconstructionLoss(nn.Module):
    """Per-pixel loss between the decoder's logits and the input image's pixels in [0, 1]."""

    def __init__(self, preprocess, kind: str = "mse"):
        super().__init__()
        mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1) / 255.0
        std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1) / 255.0
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.kind = kind

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() * self.std + self.mean).clamp(0.0, 1.0)

    def forward(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        target = self.pixels(images)
        if self.kind == "bce":
            return F.binary_cross_entropy_with_logits(logits.float(), target)
        return F.mse_loss(torch.sigmoid(logits.float()), target)


class SelfTargets:
    """A train loader whose targets are its own images (labels are not used)."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, _ in self.loader:
            yield images, images


@torch.no_grad()
def validate(run, model: nn.Module) -> dict:
    """The reconstruction loss over every val image (image-weighted mean)."""
    from edgecls.engine.loops import autocast_dtype

    model.eval()
    total, count = 0.0, 0
    for images, _ in run.loaders.val():
        images = images.to(run.device, non_blocking=True)
        with torch.autocast(run.device.type, dtype=autocast_dtype(run.device), enabled=run.cfg.amp):
            logits = model.reconstruction_logits(images)
        total += run.criterion(logits, images).item() * len(images)
        count += len(images)
        if run.interrupted:
            break
    return {"loss": round(total / max(count, 1), 6), "top1": "", "topk": ""}


@torch.no_grad()
def save_reconstructions(run, model: nn.Module, path) -> None:
    """reconstructions.png: the first GRID_IMAGES val images (top row) above their reconstructions."""
    from PIL import Image

    from edgecls.atomic import atomic_path

    model.eval()
    shown = []
    for images, _ in run.loaders.val():
        shown.append(images[: GRID_IMAGES - sum(len(s) for s in shown)])
        if sum(len(s) for s in shown) >= GRID_IMAGES:
            break
    images = torch.cat(shown).to(run.device)
    rows = [run.criterion.pixels(images), model.reconstruct(images).float()]
    grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)  # 3 x 2H x nW
    pixels = (grid.permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    scale = max(1, 96 // run.preprocess.input_size[0])  # small inputs drawn larger, pixelated
    picture = Image.fromarray(pixels)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
