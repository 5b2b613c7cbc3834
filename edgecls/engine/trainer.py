"""Training loop: train_one_epoch(), evaluate(), fit() with early stopping, checkpoints, resume.

fit() takes a TrainConfig (what train.py's flags fill) and writes the run folder:
best.pth, last.pth (atomic), class_id.json, summary.csv, args.yaml, curves.png, bad_files.txt.
Every epoch's randomness (shuffle order, augmentation, dropout) is seeded from (seed, epoch),
and the RNG states are also saved, so a run killed and resumed ends exactly like one never
interrupted (seeded, CPU).
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from edgecls.data import cache as image_cache
from edgecls.data import gpu_cache
from edgecls.data.classmap import write_class_map
from edgecls.data.folder import FolderDataset, bad_file_report, scan_dataset
from edgecls.data.presets import Preprocess
from edgecls.data.transforms import TrainTransform
from edgecls.engine import distributed as dist_utils
from edgecls.engine.checkpoint import (
    load_checkpoint,
    load_initial_weights,
    make_checkpoint,
    save_checkpoint,
)
from edgecls.engine.early_stopping import EarlyStopping
from edgecls.engine.rundir import (
    plot_curves,
    read_summary,
    write_args_yaml,
    write_bad_files,
    write_summary,
    write_timings,
)
from edgecls.errors import UserError
from edgecls.models import create_model, get_spec, load_plugins

OPTIMIZERS = ("SGD", "ASGD", "ADAM", "ADAMW")
SCHEDULERS = ("cosine", "step", "none")


@dataclass
class TrainConfig:
    data: str
    backbone: str = "resnet18"
    gpu: int = -1
    workers: int = 2
    freeze_backbone: int = 0
    early_stop: int = 1
    patience: int = 7
    model_name: str | None = None
    lr: float = 1e-3
    model_def_path: str | None = "./models/"
    snapshot: str | None = None
    epochs: int = 100
    batch_size: int = 64
    snapshot_path: str | None = None
    optimizer: str = "SGD"
    loss: str = "cross_entropy"
    resume: str | None = None
    seed: int = 0
    input_size: tuple[int, int] | None = None
    pretrained: bool = False
    preprocess: str | None = None
    resize: str = "squash"
    label_smoothing: float = 0.0
    class_weights: str = "none"
    amp: bool = False
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    hflip: float = 0.5
    crop_scale: float = 0.6
    topk: int = 5
    channels_last: bool = True
    cudnn_benchmark: bool = (
        False  # H100: epoch 1 3 s (resnet18) to 19 s (mobilenetv2) longer with it, later ones within 1.3%
    )
    compile: bool = False
    exist_ok: bool = False
    override_epochs: int | None = None  # with --resume: a new epoch budget
    resume_flags: dict = field(default_factory=dict)  # with --resume: the settings given (checked against the run's)
    cache_images: str = "auto"  # auto | none | ram | disk | gpu (edgecls.data.cache, edgecls.data.gpu_cache)
    model_kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["input_size"] is not None:
            d["input_size"] = list(d["input_size"])
        return d


@dataclass
class EpochStats:
    loss: float
    acc: float
    images: int
    seconds: float
    first_step_seconds: float = 0.0  # from the epoch's start to its first step done (when timed: see train_one_epoch)


# ----------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].copy()),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(gpu: int) -> torch.device:
    if gpu is None or gpu < 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--gpu {gpu}: CUDA is not available on this machine; use --gpu -1 for the CPU")
    if gpu >= torch.cuda.device_count():
        raise UserError(
            f"--gpu {gpu}: only {torch.cuda.device_count()} CUDA device(s); use 0..{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", gpu)


def autocast_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def head_module(model: nn.Module) -> nn.Module:
    """The classifier head: the last nn.Linear in module order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("--freeze-backbone: this backbone has no Linear head to keep trainable")
    return linears[-1]


def freeze_backbone(model: nn.Module) -> None:
    head = head_module(model)
    head_params = {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad = id(p) in head_params


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    name = cfg.optimizer.upper()
    if name == "SGD":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
        )
    if name == "ASGD":
        return torch.optim.ASGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "ADAM":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "ADAMW":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise UserError(f"--optimizer {cfg.optimizer}: choose one of {', '.join(OPTIMIZERS)}")


def make_scheduler(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    """Per-step schedule: linear warmup, then cosine to 1% or step decay (x0.1 every 30 epochs)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.scheduler == "cosine":
            t = (step - warm) / max(1, total - warm)
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if cfg.scheduler == "step":
            return 0.1 ** ((step // steps_per_epoch) // 30)
        return 1.0

    if cfg.scheduler not in SCHEDULERS:
        raise UserError(f"--scheduler {cfg.scheduler}: choose one of {', '.join(SCHEDULERS)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def class_weight_tensor(spec: str, counts: list[int]) -> torch.Tensor | None:
    """none | balanced (inverse frequency) | comma list, one weight per class."""
    if spec in (None, "", "none"):
        return None
    if spec == "balanced":
        total, n = sum(counts), len(counts)
        return torch.tensor([total / (n * c) if c else 0.0 for c in counts], dtype=torch.float32)
    try:
        weights = [float(v) for v in spec.split(",")]
    except ValueError:
        raise UserError(f"--class-weights {spec!r}: use none, balanced, or one number per class like 1,2.5,1") from None
    if len(weights) != len(counts):
        raise UserError(f"--class-weights has {len(weights)} values but the dataset has {len(counts)} classes")
    return torch.tensor(weights, dtype=torch.float32)


def make_loss(cfg: TrainConfig, counts: list[int]) -> nn.Module:
    if cfg.loss != "cross_entropy":
        raise UserError(f"--loss {cfg.loss}: only cross_entropy is supported")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise UserError(f"--label-smoothing {cfg.label_smoothing}: must be in [0, 1)")
    return nn.CrossEntropyLoss(
        weight=class_weight_tensor(cfg.class_weights, counts), label_smoothing=cfg.label_smoothing
    )


def progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=True, dynamic_ncols=True, file=sys.stderr)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except (ImportError, OSError):
        return float("nan")


# ----------------------------------------------------------------------------- loops


def first_epoch_timings(stats: EpochStats, cached) -> dict:
    """Where this invocation's first epoch went: its first step (cudnn autotuning, and the wait for the
    first batch's rows) and, when the gpu cache was filled during the epoch, the fill's duration and how
    long training waited for rows (in all, and for the first batch)."""
    out = {"first_epoch_s": round(stats.seconds, 3), "first_step_s": round(stats.first_step_seconds, 3)}
    fill = cached[0].images.fill if cached is not None else None
    if fill is not None:
        waited, first_wait = fill.wait_seconds, fill.first_wait_seconds
        fill.join()  # rows dropped from the epoch (drop_last) may still be in flight
        out.update(
            {
                "fill_s": round(fill.seconds, 3),
                "fill_wait_s": round(waited, 3),
                "fill_first_wait_s": round(first_wait, 3),
                "fill_nvjpeg_images": fill.nvjpeg_count,
            }
        )
    return out


def train_one_epoch(
    model,
    loader,
    criterion,
    optimizer,
    scheduler,
    device,
    *,
    amp=False,
    scaler=None,
    channels_last=False,
    desc="train",
    show_progress=False,
    time_first_step=False,
) -> EpochStats:
    """One pass over `loader`. time_first_step: wait for the first step's GPU work (one host sync) to record
    how long it took; asked for in the first epoch a run trains, which timings.json reports."""
    model.train()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    start = time.perf_counter()
    first_step = 0.0
    bar = progress(loader, len(loader), desc, show_progress)
    for step, (images, labels) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype(device), enabled=amp):
            logits = model(images)
            loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        n = labels.shape[0]
        seen += n
        total_loss += loss.detach().double() * n
        correct += (logits.argmax(1) == labels).sum()
        if step == 0 and time_first_step:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first_step = time.perf_counter() - start
        if show_progress and step % 10 == 0:
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{total_loss.item() / seen:.4f}",
                acc=f"{correct.item() / seen:.3f}",
                img_s=f"{seen / max(elapsed, 1e-9):.0f}",
            )
    return EpochStats(total_loss.item(), float(correct.item()), seen, time.perf_counter() - start, first_step)


@torch.no_grad()
def evaluate(model, loader, criterion, device, *, topk=5, amp=False, channels_last=False):
    """Sums over the loader: (loss_sum, top1_correct, topk_correct, count)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top1 = torch.zeros((), dtype=torch.int64, device=device)
    topk_hits = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype(device), enabled=amp):
            logits = model(images).float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").double()
        k = min(topk, logits.shape[1])
        pred = logits.topk(k, dim=1).indices
        top1 += (pred[:, 0] == labels).sum()
        topk_hits += (pred == labels[:, None]).any(1).sum()
        count += labels.shape[0]
    return loss_sum, top1, topk_hits, count


# ----------------------------------------------------------------------------- fit


def resolve_run_dir(cfg: TrainConfig) -> tuple[Path, dict | None]:
    """Run folder and, with --resume, the checkpoint to resume from."""
    if cfg.resume:
        target = Path(cfg.resume)
        ckpt_path = target / "last.pth" if target.is_dir() else target
        if not ckpt_path.is_file():
            raise UserError(
                f"--resume {cfg.resume}: no checkpoint found (expected a run folder with last.pth, or a .pth file)"
            )
        ckpt = load_checkpoint(ckpt_path)
        if "train" not in ckpt:
            raise UserError(
                f"--resume {ckpt_path}: holds no training state (a best-only or exported checkpoint); resume "
                f"from last.pth"
            )
        return ckpt_path.parent, ckpt
    if cfg.snapshot_path:
        run_dir = Path(cfg.snapshot_path)
    else:
        run_dir = Path("snapshots") / time.strftime("%Y%m%d-%H%M%S")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--snapshot-path {run_dir}: is a file; give a folder for the run")
    if run_dir.exists() and any(run_dir.glob("*.pth")) and not cfg.exist_ok:
        raise UserError(
            f"--snapshot-path {run_dir}: already holds checkpoints; use --resume {run_dir} to continue it, "
            "another --snapshot-path, or --exist-ok to overwrite"
        )
    return run_dir, None


RESUME_MAY_CHANGE = ("data", "resume", "epochs", "workers", "gpu", "cudnn_benchmark", "model_def_path", "exist_ok")


def check_resume_flags(cfg: TrainConfig, saved: dict, run_dir: Path) -> None:
    """A resumed run keeps its recorded settings: a flag given with another value is an error, not ignored."""
    for dest, value in cfg.resume_flags.items():
        recorded = saved.get(dest)
        if isinstance(value, tuple):
            value = list(value)
        if dest in RESUME_MAY_CHANGE or recorded == value:
            continue
        if dest == "snapshot_path" and Path(value).resolve() == run_dir.resolve():
            continue  # the run's own folder, named
        flag = "--" + dest.replace("_", "-")
        raise UserError(
            f"--resume: {flag} {value} differs from the run's {recorded} (command line or --config); a "
            f"resumed run keeps its settings, only --epochs, --workers, --gpu and --cudnn-benchmark may "
            f"change; to train with new settings, start a new run with --snapshot {run_dir / 'best.pth'}"
        )


def check_resume_is_unfinished(cfg: TrainConfig, saved: dict, state: dict, run_dir: Path) -> None:
    """Resuming a run that has nothing left to do is an error, not a run that trains nothing."""
    done = state["epoch"] + 1
    if done >= saved["epochs"]:
        told = f"--epochs {cfg.override_epochs}: " if cfg.override_epochs else ""
        raise UserError(
            f"--resume {cfg.resume}: {told}the run has already trained {done} epoch{'s' if done != 1 else ''} (of "
            f"{saved['epochs']}); pass --epochs N with N > {done} to train it further"
        )
    stopper = EarlyStopping()
    stopper.load_state_dict(state["early_stopping"])
    if saved.get("early_stop") and stopper.should_stop:
        raise UserError(
            f"--resume {cfg.resume}: the run stopped early at epoch {done} (no val improvement for "
            f"{stopper.patience} epochs; best epoch {stopper.best_epoch}), so it is finished; to "
            f"train on, start a new run with --snapshot {run_dir / 'best.pth'}"
        )


def build_preprocess(cfg: TrainConfig) -> Preprocess:
    spec = get_spec(cfg.backbone)
    size = tuple(cfg.input_size) if cfg.input_size else spec.input_size
    return Preprocess(input_size=size, preset=cfg.preprocess or spec.preprocess, resize=cfg.resize)


def make_loader(dataset, batch_size, shuffle, cfg: TrainConfig, device, seed=None, drop_last=False, sampler=None):
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else cfg.seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        worker_init_fn=_worker_init,
        generator=generator,
        persistent_workers=False,
    )


def log(msg: str) -> None:
    if dist_utils.is_main():
        print(msg, flush=True)


def epoch_seed(cfg: TrainConfig, epoch: int) -> int:
    """Everything random in an epoch derives from (seed, epoch): resume is exact."""
    return cfg.seed * 100_003 + epoch


def build_image_caches(
    cfg: TrainConfig,
    preprocess: Preprocess,
    train_samples,
    val_samples,
    ctx,
    device: torch.device,
    first_epoch: int = 0,
):
    """(train, val) CachedSets of decoded uint8 images, or None for the PIL-per-epoch path.

    Under DDP a disk cache is built by rank 0 and memory-mapped by every rank. In gpu mode on one
    process the training rows are decoded while the first epoch trains, in the order it visits them.
    """
    train_size = image_cache.train_cache_size(preprocess, cfg.crop_scale)
    total = image_cache.cache_bytes(len(train_samples), train_size) + image_cache.cache_bytes(
        len(val_samples), preprocess.input_size
    )
    mode = image_cache.resolve_mode(cfg.cache_images, total, distributed=ctx.enabled, device=device)
    if mode == "none":
        if cfg.cache_images == "auto":
            log(
                f"--cache-images auto: {total / 2**30:.1f} GiB of decoded images fit neither RAM nor disk "
                f"budgets; decoding every epoch"
            )
        return None
    if cfg.crop_scale >= 1.0:
        train_decoder = image_cache.EvalDecoder(preprocess)  # no crop: training sees the eval resize, flipped
    else:
        train_decoder = image_cache.TrainDecoder(train_size, preprocess.interpolation)
    val_decoder = image_cache.EvalDecoder(preprocess)
    workers = max(1, cfg.workers)
    sets = []
    for samples, decoder in ((train_samples, train_decoder), (val_samples, val_decoder)):
        paths, labels = [p for p, _ in samples], [lbl for _, lbl in samples]
        if mode in ("disk", "gpu") and ctx.enabled:
            # one decode for all ranks: rank 0 writes the memory-mapped file, every rank maps it
            # (and, in gpu mode, copies it into its own GPU)
            if ctx.rank == 0:
                images = image_cache.load_or_build(paths, decoder, "disk", workers=workers, log=log)
            dist_utils.barrier(ctx)
            if ctx.rank != 0:
                images = image_cache.load_or_build(paths, decoder, "disk", build=False, log=log)
            if mode == "gpu":
                images = image_cache.upload(images, device)
        elif mode == "gpu":
            streamed = decoder is train_decoder and isinstance(decoder, image_cache.TrainDecoder)
            order = image_cache.shuffled_order(len(paths), epoch_seed(cfg, first_epoch) * 2) if streamed else None
            images = gpu_cache.build_on_device(
                paths, decoder, device, workers=workers, order=order, stream=streamed, log=log
            )
        else:
            images = image_cache.load_or_build(paths, decoder, mode, workers=workers, log=log)
        sets.append(image_cache.CachedSet(images, labels))
    return sets[0], sets[1]


def fit(cfg: TrainConfig) -> dict:
    """Train; return {'run_dir', 'best_top1', 'best_epoch', 'epochs_run', 'stopped_early'}."""
    ctx = dist_utils.setup(cfg.gpu)
    device = ctx.device if ctx.enabled else resolve_device(cfg.gpu)
    load_plugins(cfg.model_def_path)
    run_dir, resume_ckpt = resolve_run_dir(cfg)
    if resume_ckpt is not None:
        # The resumed run keeps its own recorded settings; only the epoch budget may grow.
        saved = dict(resume_ckpt["train"]["config"])
        check_resume_flags(cfg, saved, run_dir)
        saved.update(
            {
                "data": cfg.data,
                "resume": cfg.resume,
                "workers": cfg.workers,
                "gpu": cfg.gpu,
                "cudnn_benchmark": cfg.cudnn_benchmark,  # speed only: the resuming command's
                "model_def_path": cfg.model_def_path,  # where the plugins are now
                "override_epochs": None,
                "resume_flags": {},
                "epochs": cfg.override_epochs or saved["epochs"],
            }
        )
        check_resume_is_unfinished(cfg, saved, resume_ckpt["train"], run_dir)
        if saved.get("input_size") is not None:
            saved["input_size"] = tuple(saved["input_size"])
        cfg = TrainConfig(**saved)
    cfg.model_name = cfg.model_name or cfg.backbone
    seed_everything(cfg.seed)
    get_spec(cfg.backbone)  # a mistyped --backbone fails before the (long) dataset scan

    started = time.perf_counter()
    if ctx.enabled and ctx.rank != 0:
        dist_utils.barrier(ctx)  # rank 0 scans first; the others then read its verify cache
    classes, splits = scan_dataset(cfg.data, splits=("train", "val"), workers=None)
    if ctx.enabled and ctx.rank == 0:
        dist_utils.barrier(ctx)
    scan_seconds = time.perf_counter() - started
    train_split, val_split = splits["train"], splits.get("val")
    if val_split is None or not val_split.samples:
        raise UserError(
            f"{cfg.data}: no val/ images; create DATASET/val/<class>/ (e.g. `edgecls data split {cfg.data}`)"
        )
    if resume_ckpt is not None and resume_ckpt["classes"] != classes:
        raise UserError(
            f"--resume: the dataset's classes {classes} differ from the checkpoint's {resume_ckpt['classes']}"
        )
    if len(classes) < 2:
        raise UserError(
            f"{cfg.data}: only one class ({classes[0]!r}); a classifier needs at least 2 class folders under train/"
        )
    counts = train_split.counts(len(classes))
    empty = [name for name, n in zip(classes, counts) if n == 0]
    if empty and dist_utils.is_main():
        log(f"warning: train/ has no readable images for class(es) {', '.join(empty)}; the model cannot learn them")
    report = bad_file_report(splits)

    preprocess = build_preprocess(cfg)
    spec = get_spec(cfg.backbone)
    model_kwargs = dict(cfg.model_kwargs)
    model = create_model(cfg.backbone, num_classes=len(classes), pretrained=cfg.pretrained, **model_kwargs)
    if cfg.snapshot and resume_ckpt is None:
        skipped = load_initial_weights(model, cfg.snapshot)
        if skipped:
            log(f"--snapshot: {len(skipped)} tensor(s) not loaded (shape or name differs): {', '.join(skipped[:6])}")
    if cfg.freeze_backbone:
        freeze_backbone(model)
    if cfg.batch_size == 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise UserError(
            f"--batch-size 1: {cfg.backbone} has BatchNorm layers, which need at least 2 images per "
            "training batch; use --batch-size 2 or more"
        )
    make_loss(cfg, counts)  # bad --class-weights / --label-smoothing fail here
    image_cache.check_mode(cfg.cache_images, device)
    # The run folder is written only once every flag has been checked: a failed start leaves nothing.
    if dist_utils.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_bad_files(report, run_dir / "bad_files.txt")
        if report:
            n_bad = len(report.splitlines())
            log(f"warning: skipped {n_bad} unreadable file(s) (listed in {run_dir / 'bad_files.txt'}):\n{report}")
        write_class_map(classes, run_dir / "class_id.json")
        write_args_yaml(cfg.to_dict(), run_dir / "args.yaml")
    model.to(device)
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark

    train_ds = FolderDataset(
        train_split.samples, TrainTransform(preprocess, hflip=cfg.hflip, crop_scale=cfg.crop_scale)
    )
    val_ds = FolderDataset(val_split.samples, preprocess)
    cache_started = time.perf_counter()
    first_epoch = resume_ckpt["train"]["epoch"] + 1 if resume_ckpt is not None else 0
    cached = build_image_caches(cfg, preprocess, train_split.samples, val_split.samples, ctx, device, first_epoch)
    if cached is not None:
        train_ds, val_ds = cached
    timings = {
        "scan_s": round(scan_seconds, 3),
        "cache_s": round(time.perf_counter() - cache_started, 3),
        "cache": cached[0].images.mode if cached is not None else "none",
        "train_cache_streamed": bool(cached is not None and cached[0].images.fill is not None),
        "train_images": len(train_ds),
        "val_images": len(val_ds),
        "world_size": ctx.world_size,
    }
    if dist_utils.is_main():
        write_timings(timings, run_dir / "timings.json")
    augment = image_cache.BatchAugment(preprocess, hflip=cfg.hflip, crop_scale=cfg.crop_scale)
    criterion = make_loss(cfg, counts).to(device)
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    # On a GPU every training batch has one shape (cudnn autotunes once); on the CPU no image is left out,
    # except a last batch of one image, which BatchNorm cannot train on (a different one each epoch).
    per_rank = math.ceil(len(train_ds) / ctx.world_size)
    drop_last = (device.type == "cuda" or per_rank % cfg.batch_size == 1) and per_rank > cfg.batch_size
    steps_per_epoch = per_rank // cfg.batch_size if drop_last else math.ceil(per_rank / cfg.batch_size)
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch)
    use_scaler = cfg.amp and device.type == "cuda" and autocast_dtype(device) == torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    stopper = EarlyStopping(patience=cfg.patience)
    start_epoch = 0
    rows = read_summary(run_dir / "summary.csv") if resume_ckpt is not None else []

    if resume_ckpt is not None:
        state = resume_ckpt["train"]
        model_to_load = model
        model_to_load.load_state_dict(resume_ckpt["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        stopper.load_state_dict(state["early_stopping"])
        set_rng_state(state["rng"])
        start_epoch = state["epoch"] + 1
        rows = [r for r in rows if int(r["epoch"]) <= state["epoch"] + 1]  # row epochs are 1-based
        log(f"resuming {run_dir} at epoch {start_epoch + 1}/{cfg.epochs}")

    train_model = dist_utils.wrap_model(model, ctx)
    if cfg.compile:
        train_model = torch.compile(train_model)

    show_progress = sys.stderr.isatty() and dist_utils.is_main()
    topk = min(cfg.topk, len(classes))
    log(
        f"training {cfg.backbone} on {len(train_ds)} images ({len(classes)} classes), validating on {len(val_ds)}; "
        f"input {preprocess.input_size[0]}x{preprocess.input_size[1]}, device {device}, run folder {run_dir}"
    )
    epochs_run = 0
    for epoch in range(start_epoch, cfg.epochs):
        seed = epoch_seed(cfg, epoch)
        seed_everything(seed)
        train_sampler = dist_utils.make_sampler(train_ds, ctx, shuffle=True, seed=seed)
        val_sampler = dist_utils.make_sampler(val_ds, ctx, shuffle=False, seed=0)
        if cached is not None:
            train_loader = image_cache.CachedLoader(
                train_ds,
                cfg.batch_size,
                device,
                preprocess=preprocess,
                augment=augment,
                shuffle=True,
                seed=seed * 2 + ctx.rank,
                sampler=train_sampler,
                drop_last=drop_last,
            )
            val_loader = image_cache.CachedLoader(
                val_ds, cfg.batch_size, device, preprocess=preprocess, sampler=val_sampler
            )
        else:
            train_loader = make_loader(
                train_ds, cfg.batch_size, True, cfg, device, seed=seed, sampler=train_sampler, drop_last=drop_last
            )
            val_loader = make_loader(val_ds, cfg.batch_size, False, cfg, device, sampler=val_sampler)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        lr = optimizer.param_groups[0]["lr"]
        stats = train_one_epoch(
            train_model,
            train_loader,
            criterion,
            optimizer,
            scheduler,
            device,
            amp=cfg.amp,
            scaler=scaler,
            channels_last=channels_last,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            show_progress=show_progress,
            time_first_step=epoch == start_epoch,
        )
        if epoch == start_epoch and dist_utils.is_main():
            timings.update(first_epoch_timings(stats, cached))
            write_timings(timings, run_dir / "timings.json")
        # The bare module under DDP: no collective ops, so ranks may hold different val batch counts.
        eval_model = model if ctx.enabled else train_model
        loss_sum, top1_c, topk_c, count = evaluate(
            eval_model, val_loader, criterion, device, topk=topk, amp=cfg.amp, channels_last=channels_last
        )
        totals = dist_utils.all_reduce_sum(
            [
                stats.loss,
                stats.acc,
                float(stats.images),
                loss_sum.item(),
                float(top1_c.item()),
                float(topk_c.item()),
                float(count),
            ],
            ctx,
        )
        tr_loss, tr_correct, tr_seen, v_loss, v_top1, v_topk, v_count = totals
        row = {
            "epoch": epoch + 1,
            "train_loss": round(tr_loss / tr_seen, 6),
            "train_acc": round(tr_correct / tr_seen, 6),
            "val_loss": round(v_loss / v_count, 6),
            "val_top1": round(v_top1 / v_count, 6),
            "val_topk": round(v_topk / v_count, 6),
            "lr": f"{lr:.6g}",
            "images_per_s": round(tr_seen / max(stats.seconds, 1e-9), 1),
            "seconds": round(stats.seconds, 2),
            "peak_mem_mb": round(peak_memory_mb(device), 1),
        }
        rows.append(row)
        is_best = stopper.step(row["val_top1"], epoch + 1)
        epochs_run += 1
        log(
            f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
            f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.4f} top-{topk} {row['val_topk']:.4f}  "
            f"{row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s" + ("  *best*" if is_best else "")
        )
        if dist_utils.is_main():
            metrics = {
                "val_top1": row["val_top1"],
                f"val_top{topk}": row["val_topk"],
                "val_loss": row["val_loss"],
                "epoch": epoch + 1,
            }
            ckpt = make_checkpoint(
                model,
                backbone=cfg.backbone,
                model_kwargs=model_kwargs,
                classes=classes,
                preprocess=preprocess,
                metrics=metrics,
                model_name=cfg.model_name,
            )
            if is_best:
                save_checkpoint(ckpt, run_dir / "best.pth")
            ckpt["train"] = {
                "epoch": epoch,
                "config": cfg.to_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "early_stopping": stopper.state_dict(),
                "rng": rng_state(),
            }
            save_checkpoint(ckpt, run_dir / "last.pth")
            write_summary(rows, run_dir / "summary.csv")
            plot_curves(rows, run_dir / "curves.png")
        if cfg.early_stop and stopper.should_stop:
            log(
                f"early stopping: val top-1 has not improved for {cfg.patience} epochs (best {stopper.best:.4f} "
                f"at epoch {stopper.best_epoch})"
            )
            break
    stopped_early = bool(cfg.early_stop and stopper.should_stop)
    if dist_utils.is_main():
        print_final_table(rows, stopper, topk, run_dir)
    dist_utils.cleanup(ctx)
    return {
        "run_dir": str(run_dir),
        "best_top1": stopper.best,
        "best_epoch": stopper.best_epoch,
        "epochs_run": epochs_run,
        "stopped_early": stopped_early,
        "classes": classes,
        "spec": spec.name,
    }


def print_final_table(rows: list[dict], stopper: EarlyStopping, topk: int, run_dir: Path) -> None:
    if not rows:
        return
    best = next((r for r in rows if int(r["epoch"]) == stopper.best_epoch), rows[-1])
    print("\n  metric          value")
    print("  --------------  ----------")
    print(f"  best epoch      {best['epoch']}")
    print(f"  val top-1       {float(best['val_top1']):.4f}")
    print(f"  val top-{topk:<7} {float(best['val_topk']):.4f}")
    print(f"  val loss        {float(best['val_loss']):.4f}")
    print(f"  epochs run      {len(rows)}")
    print(f"  best model      {run_dir / 'best.pth'}")
    print(f"  run folder      {run_dir}  (summary.csv, curves.png, args.yaml, class_id.json)\n", flush=True)
