"""CachedLoader: the DataLoader of cached rows. It gathers a batch of rows, moves it (pinned,
non-blocking) to the device and augments it there; all randomness comes from its seed, so resume
stays exact. A gpu cache still being filled is waited on for the rows of each batch only."""

from __future__ import annotations

import math

import numpy as np
import torch

from edgecls.data.cache.augment import BatchAugment, normalize_batch
from edgecls.data.cache.decoded import DecodedImages
from edgecls.data.presets import Preprocess


class CachedSet:
    """Cached rows + labels: has __len__ so DistributedSampler can shard it."""

    def __init__(self, images: DecodedImages, labels: list[int]):
        if len(images) != len(labels):
            raise ValueError("CachedSet: one label per cached image")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)


def shuffled_order(n: int, seed: int) -> torch.Tensor:
    """The visiting order of a shuffled CachedLoader with this seed (also the order a streamed fill writes)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


class CachedLoader:
    """Yields (float images on `device`, labels on `device`) batches from a CachedSet.

    Training (augment given): shuffled from `seed` unless a sampler sets the order; crops and
    flips drawn from a generator seeded with `seed`. Evaluation: in order, normalized only.
    """

    def __init__(
        self,
        dataset: CachedSet,
        batch_size: int,
        device: torch.device,
        *,
        preprocess: Preprocess,
        augment: BatchAugment | None = None,
        shuffle: bool = False,
        seed: int = 0,
        sampler=None,
        drop_last: bool = False,
    ):
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self.preprocess = preprocess
        self.augment = augment
        self.shuffle = shuffle
        self.seed = seed
        self.sampler = sampler
        self.drop_last = drop_last

    def _order(self) -> torch.Tensor:
        if self.sampler is not None:
            return torch.as_tensor(list(iter(self.sampler)), dtype=torch.int64)
        n = len(self.dataset)
        return shuffled_order(n, self.seed) if self.shuffle else torch.arange(n)

    def _count(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.dataset)

    def __len__(self) -> int:
        n = self._count()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        order = self._order()
        generator = torch.Generator().manual_seed(self.seed + 7919)
        pixels = self.dataset.images.pixels
        sizes = torch.from_numpy(np.asarray(self.dataset.images.orig_sizes))
        cuda = self.device.type == "cuda"
        resident = isinstance(pixels, torch.Tensor)  # "gpu" cache: the batch is gathered on the device
        fill = self.dataset.images.fill
        if resident:
            order_dev = order.to(pixels.device)
            labels_dev = self.dataset.labels.to(pixels.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if resident:
                if fill is not None:
                    fill.wait(idx)
                idx_dev = order_dev[b * self.batch_size : (b + 1) * self.batch_size]
                batch, labels = pixels.index_select(0, idx_dev), labels_dev.index_select(0, idx_dev)
            else:
                idx_np = idx.numpy()
                # memmap reads are fastest in file order; gather sorted, then restore the batch order
                sort = np.argsort(idx_np, kind="stable")
                rows = np.empty((len(idx_np),) + pixels.shape[1:], np.uint8)
                rows[sort] = pixels[idx_np[sort]]
                batch = torch.from_numpy(rows)
                labels = self.dataset.labels[idx]
                if cuda:
                    batch = batch.pin_memory().to(self.device, non_blocking=True)
                    labels = labels.pin_memory().to(self.device, non_blocking=True)
            if self.augment is not None:
                images = self.augment(batch, sizes[idx], generator)
            else:
                images = normalize_batch(batch, self.preprocess)
            yield images, labels
