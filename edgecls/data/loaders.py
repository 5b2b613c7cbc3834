"""The one door to training data: `build_loaders` returns each epoch's training loader, the validation
loader and what building them cost.

Behind it live the decoded-image caches (none | ram | disk | gpu, `edgecls.data.cache`) and their DDP
protocol (one decode for all ranks: rank 0 writes the memory-mapped file, every rank maps it, and in gpu
mode copies it into its own GPU). It alone decides the order in which an epoch visits the training
samples, so a gpu cache filled while the first epoch trains is filled in exactly that order.
"""

from __future__ import annotations

import math
import random
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from edgecls.data.augment import make_eraser, make_policy
from edgecls.data.cache import decoded, gpu, policy
from edgecls.data.cache.augment import BatchAugment
from edgecls.data.cache.loader import CachedLoader, CachedSet, shuffled_order
from edgecls.data.cache.policy import DEFAULT_LIMIT
from edgecls.data.cache.store import CacheStore
from edgecls.data.cache.train_decoder import TrainDecoder
from edgecls.data.folder import FolderDataset
from edgecls.data.presets import Preprocess
from edgecls.data.transforms import TrainTransform
from edgecls.errors import UserError
from edgecls.settings import format_bytes

if TYPE_CHECKING:
    from edgecls.data.shards.stream import ShardStreams


def epoch_seed(seed: int, epoch: int) -> int:
    """Everything random in an epoch (order, augmentation, dropout) derives from (seed, epoch): resume is exact."""
    return seed * 100_003 + epoch


@dataclass(frozen=True)
class Ranks:
    """This process's place in a distributed run (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass
class LoaderSettings:
    batch_size: int
    workers: int = 2
    cache: str = "auto"  # auto | none | ram | disk | gpu
    hflip: float = 0.5
    crop_scale: float = 0.6
    seed: int = 0
    augment: str | None = None  # none | light | trivial | randaugment (edgecls.data.augment)
    random_erasing: float = 0.0
    cache_dir: str | None = None  # the persistent cache folder (None: $EDGECLS_CACHE_DIR/images)
    cache_limit: int = DEFAULT_LIMIT  # bytes the persistent cache folder may hold

    def store(self, log=print) -> CacheStore:
        return CacheStore(self.cache_dir, self.cache_limit, log=log)


class ShardSampler(torch.utils.data.Sampler):
    """Every world_size-th index from rank, unpadded: each evaluation sample counted exactly once."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Loaders:
    """Each epoch's training loader and the validation loader, over the cache mode chosen once."""

    train_set: FolderDataset | CachedSet | list  # a streamed shard set: its samples (for their count)
    val_set: FolderDataset | CachedSet | list
    preprocess: Preprocess
    settings: LoaderSettings
    device: torch.device
    ranks: Ranks
    mode: str  # none | ram | disk | gpu
    timings: dict = field(default_factory=dict)
    stream: ShardStreams | None = None  # mode none over a shard set: whole shards streamed each epoch

    def __post_init__(self):
        if self.stream is not None:
            self.drop_last, self.augment = False, None
            self.steps_per_epoch = self.stream.steps_per_epoch
            return
        # On a GPU every training batch has one shape (cudnn autotunes once); on the CPU no image is left
        # out, except a last batch of one image, which BatchNorm cannot train on (a different one each epoch).
        per_rank = math.ceil(len(self.train_set) / self.ranks.world_size)
        bs = self.settings.batch_size
        self.drop_last = (self.device.type == "cuda" or per_rank % bs == 1) and per_rank > bs
        self.steps_per_epoch = per_rank // bs if self.drop_last else math.ceil(per_rank / bs)
        s = self.settings
        self.augment = None
        if self.cached:
            self.augment = BatchAugment(
                self.preprocess, s.hflip, s.crop_scale, make_policy(s.augment), make_eraser(s.random_erasing)
            )

    @property
    def cached(self) -> bool:
        return self.mode != "none"

    def epoch_seed(self, epoch: int) -> int:
        return epoch_seed(self.settings.seed, epoch)

    def _cached_train_seed(self, epoch: int) -> int:
        """The seed of a cached epoch's order and crops; a streamed gpu fill writes rows in this order."""
        return self.epoch_seed(epoch) * 2 + self.ranks.rank

    def train(self, epoch: int):
        """The training batches of `epoch`: (float images, labels), shuffled and augmented from its seed."""
        seed = self.epoch_seed(epoch)
        if self.stream is not None:
            return self.stream.train(seed)
        sampler = None
        if self.ranks.distributed:
            sampler = DistributedSampler(
                self.train_set, self.ranks.world_size, self.ranks.rank, shuffle=True, seed=seed, drop_last=False
            )
        s = self.settings
        if self.cached:
            return CachedLoader(
                self.train_set,
                s.batch_size,
                self.device,
                preprocess=self.preprocess,
                augment=self.augment,
                shuffle=True,
                seed=self._cached_train_seed(epoch),
                sampler=sampler,
                drop_last=self.drop_last,
            )
        return self._data_loader(self.train_set, shuffle=True, seed=seed, sampler=sampler, drop_last=self.drop_last)

    def val(self):
        """The validation batches, in order; under DDP each rank gets every world_size-th image."""
        if self.stream is not None:
            return self.stream.val()
        ranks = self.ranks
        sampler = ShardSampler(len(self.val_set), ranks.rank, ranks.world_size) if ranks.distributed else None
        if self.cached:
            return CachedLoader(
                self.val_set, self.settings.batch_size, self.device, preprocess=self.preprocess, sampler=sampler
            )
        return self._data_loader(self.val_set, shuffle=False, seed=self.settings.seed, sampler=sampler)

    def batches_in_order(self, epoch: int, order: list[int], size: int):
        """Training batches of `size` consecutive samples of `order` (an episode sampler's indices), augmented
        from the epoch's seed, from the image cache or the folder dataset (episodic training)."""
        if self.cached:
            return CachedLoader(
                self.train_set, size, self.device, preprocess=self.preprocess, augment=self.augment,
                seed=self._cached_train_seed(epoch), sampler=order,
            )  # fmt: skip
        generator = torch.Generator().manual_seed(self.epoch_seed(epoch))
        return DataLoader(
            self.train_set, batch_sampler=[order[i : i + size] for i in range(0, len(order), size)],
            num_workers=self.settings.workers, pin_memory=self.device.type == "cuda",
            worker_init_fn=worker_init, generator=generator,
        )  # fmt: skip

    def _data_loader(self, dataset, *, shuffle: bool, seed: int, sampler=None, drop_last: bool = False):
        generator = torch.Generator()
        generator.manual_seed(seed)
        return DataLoader(
            dataset,
            batch_size=self.settings.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.settings.workers,
            pin_memory=self.device.type == "cuda",
            drop_last=drop_last,
            worker_init_fn=worker_init,
            generator=generator,
            persistent_workers=False,
        )

    def calibration(self, images: int):
        """Batches of up to `images` training images, a seeded random subset (the same every epoch), with
        evaluation's preprocessing and no augmentation: what BatchNorm statistics are recomputed from."""
        n = len(self.train_set)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.settings.seed))[: min(images, n)]
        subset = order.tolist()  # in random order: batches of mixed classes, as training's
        if self.cached:
            plain = BatchAugment(self.preprocess, hflip=0.0, crop_scale=1.0)
            return CachedLoader(
                self.train_set, self.settings.batch_size, self.device, preprocess=self.preprocess, augment=plain,
                sampler=subset,
            )  # fmt: skip
        samples = self.train_set if isinstance(self.train_set, list) else self.train_set.samples  # streamed: Members
        dataset = torch.utils.data.Subset(FolderDataset(samples, self.preprocess), subset)
        return self._data_loader(dataset, shuffle=False, seed=self.settings.seed)

    def fill_timings(self) -> dict:
        """When the gpu cache was filled during the first epoch: the fill's duration and how long training
        waited for rows (in all, and for the first batch); {} otherwise."""
        return fill_timings(self.train_set)


def worker_init(worker_id: int) -> None:
    """DataLoader workers: Python's and numpy's RNGs follow the worker's torch seed (TrainTransform uses them).
    Ctrl-C reaches the whole process group: it is the main process's to handle (it stops the workers), so a
    worker ignores it rather than printing a KeyboardInterrupt traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def fill_timings(train_set) -> dict:
    fill = getattr(getattr(train_set, "images", None), "fill", None)
    if fill is None:
        return {}
    waited, first_wait = fill.wait_seconds, fill.first_wait_seconds
    fill.join()  # rows dropped from the epoch (drop_last) may still be in flight
    return {
        "fill_s": round(fill.seconds, 3),
        "fill_wait_s": round(waited, 3),
        "fill_first_wait_s": round(first_wait, 3),
        "fill_nvjpeg_images": fill.nvjpeg_count,
    }


def plan_mode(
    train_samples: list,
    val_samples: list,
    preprocess: Preprocess,
    settings: LoaderSettings,
    *,
    device: torch.device,
    ranks: Ranks = Ranks(),
    train_shards: list | None = None,
    where: str = "the shard set",
) -> str:
    """The cache mode a run gets (auto resolved by the budgets and `cache_limit`). Refuses, with a UserError,
    what would fail later: a streamed shard set that cannot feed every rank's every worker, a disk cache over
    `cache_limit`. Cheap: call it before a run writes anything."""
    train_size = policy.train_cache_size(preprocess, settings.crop_scale)
    total = policy.cache_bytes(len(train_samples), train_size) + policy.cache_bytes(
        len(val_samples), preprocess.input_size
    )
    store = settings.store()
    mode = policy.resolve_mode(
        settings.cache, total, distributed=ranks.distributed, device=device, limit=store.limit, cache_dir=store.root
    )
    if mode == "none" and train_shards is not None:
        from edgecls.data.shards.stream import check_stream

        check_stream(train_shards, ranks.world_size, settings.workers, settings.batch_size, where)
    if (mode == "disk" or (mode == "gpu" and ranks.distributed)) and not store.fits(total):  # both on disk
        raise UserError(
            f"`cache_images` {mode}: the decoded images need {format_bytes(total)}, over `cache_limit` "
            f"{format_bytes(store.limit)}; raise `cache_limit` or use `cache_images` ram|none"
        )
    return mode


def build_loaders(
    train_samples: list,
    val_samples: list,
    preprocess: Preprocess,
    settings: LoaderSettings,
    *,
    device: torch.device,
    ranks: Ranks = Ranks(),
    first_epoch: int = 0,
    log=print,
    train_shards: list | None = None,
    val_shards: list | None = None,
    where: str = "the shard set",
) -> Loaders:
    """Choose the cache mode, build the caches (the DDP protocol included) and return the Loaders. A shard
    set's `train_shards` / `val_shards` (edgecls.data.shards.index.ShardFile lists) are streamed when no cache
    holds the images."""
    started = time.perf_counter()
    mode = plan_mode(
        train_samples, val_samples, preprocess, settings, device=device, ranks=ranks, train_shards=train_shards,
        where=where,
    )  # fmt: skip
    stream = None
    store = settings.store(log)
    if mode == "none":
        if settings.cache == "auto":
            log("image cache off: the decoded images fit neither the RAM nor the disk budget; decoding every epoch")
        transform = TrainTransform(
            preprocess, settings.hflip, settings.crop_scale, make_policy(settings.augment),
            make_eraser(settings.random_erasing),
        )  # fmt: skip
        if train_shards is not None:
            from edgecls.data.shards.stream import ShardStreams

            stream = ShardStreams(train_shards, val_shards, transform, preprocess, settings, ranks, where)
            train_set, val_set = train_samples, val_samples
        else:
            train_set, val_set = FolderDataset(train_samples, transform), FolderDataset(val_samples, preprocess)
        streamed = False
    else:
        loaders_seed = epoch_seed(settings.seed, first_epoch) * 2 + ranks.rank
        train_set, val_set, streamed = _cached_sets(
            train_samples, val_samples, preprocess, settings, mode, device, ranks, loaders_seed, log, store
        )
        if store.entries():
            log(store.describe())
    loaders = Loaders(train_set, val_set, preprocess, settings, device, ranks, mode, stream=stream)
    loaders.timings = {
        "cache_s": round(time.perf_counter() - started, 3),
        "cache": mode,
        "train_cache_streamed": streamed,
        "train_images": len(train_set),
        "val_images": len(val_set),
        "shards_streamed": stream is not None,
    }
    return loaders


def _cached_sets(train_samples, val_samples, preprocess, settings, mode, device, ranks, first_seed, log, store):
    """(train CachedSet, val CachedSet, whether the train rows stream in during the first epoch)."""
    if settings.crop_scale >= 1.0:
        train_decoder = decoded.EvalDecoder(preprocess)  # no crop: training sees the eval resize, flipped
    else:
        train_decoder = TrainDecoder(policy.train_cache_size(preprocess, settings.crop_scale), preprocess.interpolation)
    val_decoder = decoded.EvalDecoder(preprocess)
    workers = max(1, settings.workers)
    sets, streamed = [], False
    for samples, decoder in ((train_samples, train_decoder), (val_samples, val_decoder)):
        paths, labels = [p for p, _ in samples], [lbl for _, lbl in samples]
        if mode in ("disk", "gpu") and ranks.distributed:
            if ranks.rank == 0:
                images = decoded.load_or_build(paths, decoder, "disk", workers=workers, log=log, store=store)
            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            if ranks.rank != 0:
                images = decoded.load_or_build(paths, decoder, "disk", build=False, log=log, store=store)
            if mode == "gpu":
                images = decoded.upload(images, device)
        elif mode == "gpu":
            stream = decoder is train_decoder and isinstance(decoder, TrainDecoder)
            order = shuffled_order(len(paths), first_seed) if stream else None
            images = gpu.build_on_device(
                paths, decoder, device, workers=workers, order=order, stream=stream, log=log, store=store
            )
            streamed = streamed or stream
        else:
            images = decoded.load_or_build(paths, decoder, mode, workers=workers, log=log, store=store)
        sets.append(CachedSet(images, labels))
    return sets[0], sets[1], streamed
