"""Each epoch's images streamed from whole tar shards with WebDataset: seeded, DDP-aware, exact on resume.

Used when no decoded-image cache holds the images (`cache_images` none, or more images than any
cache's budget). For epoch e, with s = `edgecls.data.loaders.epoch_seed(seed, e)`:

- the training shards are shuffled by s; rank r of R takes every R-th of them (whole shards), and its
  DataLoader worker w of W every W-th of those. Each worker needs a shard, so a run needs at least
  R x W shards: fewer is refused before the run starts (with fewer, WebDataset users' DDP runs hang);
- a worker reads its shards in that order through a shuffle buffer seeded by (s, r, w), then decodes
  and augments each image (the folder path's TrainTransform);
- every rank runs the same number of steps, fixed for the run from the index's counts (enough for the
  rank with the most images in the worst epoch); a rank's images of the epoch are split into that many
  batches of near-equal size, at most `batch_size`. So each image is seen once per epoch, no rank waits
  for another's extra step, and the learning-rate schedule keeps its length.

Validation streams each rank's every R-th val shard in order (each image counted once over the ranks).
"""

from __future__ import annotations

import io
import math
import random

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from edgecls.data.images import load_rgb
from edgecls.data.shards.index import ShardFile
from edgecls.errors import UserError

SHUFFLE_BUFFER = 1000  # images per worker held to shuffle within and across its shards (raw bytes, not pixels)
SHUFFLE_INITIAL = 100  # ... filled this far before the first one leaves


def worker_count(workers: int) -> int:
    """DataLoader workers streaming in one process; 0 (read in the training process) counts as one."""
    return max(1, workers)


def fixed_steps(shards: list[ShardFile], world: int, batch_size: int) -> int:
    """Steps per epoch for every rank: the batches of the most images any rank can get in an epoch."""
    per_rank = math.ceil(len(shards) / world)
    most = sum(sorted((s.count for s in shards), reverse=True)[:per_rank])
    return max(1, math.ceil(most / batch_size))


def check_stream(shards: list[ShardFile], world: int, workers: int, batch_size: int, where) -> None:
    """Refuse a shard set that cannot feed every worker of every rank, or whose shards are too uneven for
    equal steps (a rank left with fewer images than steps)."""
    need = world * worker_count(workers)
    if len(shards) < need:
        who = f"{world} processes x {worker_count(workers)}" if world > 1 else f"{worker_count(workers)}"
        raise UserError(
            f"{where}: {len(shards)} training shard(s) for {who} DataLoader worker(s); streamed, each "
            f"worker reads whole shards, so it needs at least {need} (fewer hang a distributed run); lower "
            f"`workers`, or pack again with a smaller --shard-size, or cache the images (`cache_images` ram|disk)"
        )
    steps = fixed_steps(shards, world, batch_size)
    fewest = sum(sorted(s.count for s in shards)[: len(shards) // world])
    if fewest < min(2, batch_size) * steps:
        raise UserError(
            f"{where}: the shards' sizes are too uneven to give each of {world} processes {steps} batches "
            f"(one may get only {fewest} images); pack again with more, equal shards (--shard-size)"
        )


def even_sizes(n: int, steps: int) -> list[int]:
    """n images in `steps` batches whose sizes differ by at most one."""
    return [n // steps + (1 if i < n % steps else 0) for i in range(steps)]


class ShardStream(IterableDataset):
    """One process's images of an epoch: DataLoader worker w streams the shards in `per_worker[w]`."""

    def __init__(self, per_worker: list[list[str]], transform, seed: int | None):
        self.per_worker = per_worker
        self.transform = transform
        self.seed = seed  # None: no shuffle (validation)

    def __iter__(self):
        import webdataset as wds

        info = get_worker_info()
        w = info.id if info is not None else 0
        stages = [wds.SimpleShardList(self.per_worker[w]), wds.tarfile_to_samples()]
        if self.seed is not None:
            rng = random.Random(f"{self.seed}:{w}")
            stages.append(wds.shuffle(SHUFFLE_BUFFER, SHUFFLE_INITIAL, rng=rng))
        stages.append(wds.map(self.decode))
        return iter(wds.DataPipeline(*stages))

    def decode(self, sample: dict) -> tuple[torch.Tensor, int]:
        label = int(sample["cls"])
        name, data = next((k, v) for k, v in sample.items() if not k.startswith("__") and k != "cls")
        try:
            image = load_rgb(io.BytesIO(data))
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise UserError(
                f"{sample.get('__url__')}/{sample['__key__']}.{name}: could not be decoded ({exc}); the shard "
                f"is damaged: pack the dataset again"
            ) from None
        return self.transform(image), label


class Rebatch:
    """A process's stream cut into exactly len(sizes) batches of those sizes; too few or too many images for
    the index is a UserError (a shard changed after it was packed)."""

    def __init__(self, loader, sizes: list[int], where: str):
        self.loader = loader
        self.sizes = sizes
        self.where = where

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self):
        source = iter(self.loader)
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        have = 0
        for size in self.sizes:
            while have < size:
                try:
                    x, y = next(source)
                except StopIteration:
                    short = f"{self.where}: the shards hold fewer images than index.json says; pack again"
                    raise UserError(short) from None
                xs.append(x)
                ys.append(y)
                have += len(y)
            x, y = (xs[0], ys[0]) if len(xs) == 1 else (torch.cat(xs), torch.cat(ys))
            yield x[:size], y[:size]
            xs, ys, have = [x[size:]], [y[size:]], have - size
        if have or next(source, None) is not None:
            raise UserError(f"{self.where}: the shards hold more images than index.json says; pack again")


class ShardStreams:
    """The streamed training and validation loaders of one process over a shard set."""

    def __init__(self, train_shards, val_shards, train_transform, val_transform, settings, ranks, where):
        self.train_shards = list(train_shards)
        self.val_shards = list(val_shards)
        self.train_transform = train_transform
        self.val_transform = val_transform
        self.settings = settings
        self.ranks = ranks
        self.where = where
        check_stream(self.train_shards, ranks.world_size, settings.workers, settings.batch_size, where)
        self.steps_per_epoch = fixed_steps(self.train_shards, ranks.world_size, settings.batch_size)

    def epoch_shards(self, seed: int) -> list[ShardFile]:
        """This rank's training shards of the epoch seeded by `seed`."""
        order = list(self.train_shards)
        random.Random(seed).shuffle(order)
        return order[self.ranks.rank :: self.ranks.world_size]

    def train(self, seed: int) -> Rebatch:
        mine = self.epoch_shards(seed)
        workers = worker_count(self.settings.workers)
        per_worker = [[s.path for s in mine[w::workers]] for w in range(workers)]
        stream = ShardStream(per_worker, self.train_transform, seed * 1009 + self.ranks.rank)
        loader = self._loader(stream, self.settings.workers, seed)
        return Rebatch(loader, even_sizes(sum(s.count for s in mine), self.steps_per_epoch), self.where)

    def val(self):
        mine = self.val_shards[self.ranks.rank :: self.ranks.world_size]
        if not mine:
            return []
        workers = min(self.settings.workers, len(mine))
        per_worker = [[s.path for s in mine[w :: max(1, workers)]] for w in range(max(1, workers))]
        return self._loader(ShardStream(per_worker, self.val_transform, None), workers, self.settings.seed)

    def _loader(self, stream: ShardStream, workers: int, seed: int) -> DataLoader:
        from edgecls.data.loaders import worker_init

        generator = torch.Generator()
        generator.manual_seed(seed)
        return DataLoader(
            stream,
            batch_size=self.settings.batch_size,
            num_workers=workers,
            worker_init_fn=worker_init,
            generator=generator,
            persistent_workers=False,
        )
