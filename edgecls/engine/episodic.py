"""Episodic training (`train.py --episodic`): the backbone learns as a prototypical network (Snell et al. 2017).

Each optimizer step is one episode from train/: n_way classes, k_shot support + query images each. The
backbone minus its head (what reaches the last nn.Linear, the rule of edgecls.embed.features.strip_head)
embeds them; a class prototype is the normalised mean of its unit support embeddings, and a query's
logits are SCALE x its cosine to each prototype, under cross-entropy. Cosine rather than Snell's squared
euclidean distance: it is the rule every consumer of the features applies (Embedder unit vectors,
compute_prototypes, the prototype ONNX head), so training optimises what is deployed; the fixed scale
keeps the softmax from being too flat (cosine lies in [-1, 1]; Chen et al. 2019, Baseline++).

The step reuses the engine's loop (loops.train_one_epoch): a loader yields (episode images, query targets)
and EpisodeModel turns the images into query x n_way logits. Validation is few-shot accuracy on seeded
val/ episodes (the same ones every epoch), reported as val_top1, so early stopping, best.pth, summary.csv
and resume work unchanged. The head stays in the checkpoint (task "episodic"), untrained.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecls.embed.few_shot import check_episodes, rows_by_class, sample_episodes
from edgecls.errors import UserError

SCALE = 10.0
VAL_EPISODES = 300


def prepare(cfg, sources: dict):
    """The settings of an episodic run: refuse what cannot work with it (engine.recipes.CLASSIFIER_ONLY); the
    recipe's head-only steps are turned off, and so is the end-of-training classifier evaluation (the head is
    not trained)."""
    from edgecls.engine.recipes import CLASSIFIER_ONLY, refuse_given

    return replace(refuse_given(cfg, sources, CLASSIFIER_ONLY, "`episodic`"), final_eval=False)


def check_data(run) -> None:
    """Before any file is written: the train/ classes can give the episodes asked for; one process only."""
    cfg = run.cfg
    if run.ctx.enabled:
        raise UserError("`episodic`: training runs in one process; start it without torchrun")
    counts = {c: int(n) for c, n in zip(run.classes, run.counts)}
    check_episodes(counts, cfg.n_way, cfg.k_shot, cfg.query, "train/")
    if run.splits["train"].shards is not None and run.cache_mode == "none":
        raise UserError("`episodic`: a shard set must be cached to draw episodes; use `cache_images` ram or disk")


def head_of(model: nn.Module) -> nn.Linear:
    """The last nn.Linear: the head whose input is the pooled feature vector (strip_head's rule)."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise UserError(f"`episodic`: {type(model).__name__} has no Linear head, so no features to train on")
    return last


class HeadInput:
    """Keeps the input of the model's head at each forward (the features, with their gradient)."""

    def __init__(self, model: nn.Module):
        self.value = None
        self.handle = head_of(model).register_forward_pre_hook(self._keep)

    def _keep(self, module, args):
        self.value = args[0]

    def __call__(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        model(images)
        return self.value.flatten(1)


def prototype_logits(features: torch.Tensor, n_way: int, k_shot: int, scale: float = SCALE) -> torch.Tensor:
    """Episode features (support class-major, then queries) -> queries x n_way logits: scale x cosine to
    the normalised mean of each class's unit support features."""
    unit = F.normalize(features.float(), dim=1)
    support, queries = unit[: n_way * k_shot], unit[n_way * k_shot :]
    protos = F.normalize(support.reshape(n_way, k_shot, -1).mean(1), dim=1)
    return scale * queries @ protos.T


class EpisodeModel(nn.Module):
    """The training model seen by loops.train_one_epoch: episode images -> query logits."""

    def __init__(self, model: nn.Module, features_of: nn.Module, n_way: int, k_shot: int):
        super().__init__()
        self.model = model
        self.features = HeadInput(features_of)
        self.n_way, self.k_shot = n_way, k_shot

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return prototype_logits(self.features(self.model, images), self.n_way, self.k_shot)


def episode_order(run, epoch: int) -> list[int]:
    """The epoch's episodes as one list of train indices, episode after episode (seeded by the epoch)."""
    cfg = run.cfg
    labels = [label for _, label in run.splits["train"].samples]
    by_class = rows_by_class(labels, len(run.classes))
    episodes = sample_episodes(
        by_class, cfg.n_way, cfg.k_shot, cfg.query, cfg.episodes_per_epoch, run.loaders.epoch_seed(epoch)
    )
    return [int(i) for ep in episodes for i in (*ep.support, *ep.query)]


class EpisodeLoader:
    """(episode images, query targets 0..n_way-1) per step, from the run's image cache or its folder dataset
    (with training augmentation)."""

    def __init__(self, run, epoch: int):
        cfg = run.cfg
        size = cfg.n_way * (cfg.k_shot + cfg.query)
        self.targets = torch.arange(cfg.n_way).repeat_interleave(cfg.query)
        self.batches = run.loaders.batches_in_order(epoch, episode_order(run, epoch), size)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for images, _ in self.batches:
            yield images, self.targets


@torch.no_grad()
def val_features(run, model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """(unit features, labels) of every val image: each embedded once, evaluation's preprocessing."""
    from edgecls.engine.loops import autocast_dtype

    model.eval()
    grab = HeadInput(model)
    feats, labels = [], []
    try:
        for images, y in run.loaders.val():
            images = images.to(run.device, non_blocking=True)
            if run.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(run.device.type, dtype=autocast_dtype(run.device), enabled=run.cfg.amp):
                f = grab(model, images)
            feats.append(F.normalize(f.float(), dim=1).cpu())
            labels.append(y.cpu())
            if run.interrupted:
                break
    finally:
        grab.handle.remove()
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def validate(run, model: nn.Module) -> dict:
    """Few-shot figures on VAL_EPISODES seeded val/ episodes (the same each epoch): query top-1, top-K
    (K below n_way) and the cross-entropy of the scaled cosine logits."""
    cfg = run.cfg
    vectors, labels = val_features(run, model)
    by_class = rows_by_class(labels, len(run.classes))
    sizes = sorted(len(r) for r in by_class if len(r) > cfg.k_shot)
    n_way = min(cfg.n_way, len(sizes))
    if n_way < 2:
        raise UserError(f"`episodic`: val/ needs 2 classes with more than `k_shot` {cfg.k_shot} images each")
    query = min(cfg.query, sizes[-n_way] - cfg.k_shot)  # the n_way-th largest class still gives a full episode
    k = max(1, min(run.topk, n_way - 1))
    loss = top1 = topk = 0.0
    for ep in sample_episodes(by_class, n_way, cfg.k_shot, query, VAL_EPISODES, cfg.seed):
        feats = torch.from_numpy(np.concatenate([vectors[ep.support], vectors[ep.query]]))
        logits = prototype_logits(feats, n_way, cfg.k_shot)
        target = torch.from_numpy(ep.query_labels)
        loss += F.cross_entropy(logits, target).item()
        top1 += (logits.argmax(1) == target).float().mean().item()
        topk += (logits.topk(k, 1).indices == target[:, None]).any(1).float().mean().item()
    n = VAL_EPISODES
    return {"loss": round(loss / n, 6), "top1": round(top1 / n, 6), "topk": round(topk / n, 6)}
