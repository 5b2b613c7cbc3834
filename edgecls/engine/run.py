"""Run: one training run, one method per step.

    run = Run.setup(cfg)            # recipe, device, DDP, dataset scan, model, loaders, optimizer, run folder
    run.restore(checkpoint)         # (resume) weights, optimizer, schedule, EMA, monitor and RNG states
    stats = run.train_epoch(e)      # one epoch; metrics summed over ranks
    val = run.validate()            # raw weights, and the EMA's when there is one
    run.end_epoch(e, metrics)       # best/last checkpoints, summary.csv, curves (RunRecorder)
    run.stop(reason)                # asked by a callback: end after this epoch

`edgecls.engine.trainer.fit` is the loop over these steps.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from edgecls.data.augment import make_mixer
from edgecls.data.cache.policy import check_mode
from edgecls.data.folder import bad_file_report, scan_dataset
from edgecls.data.loaders import LoaderSettings, Ranks, build_loaders, plan_mode
from edgecls.data.presets import Preprocess
from edgecls.device import resolve_device
from edgecls.engine import distributed as dist_utils
from edgecls.engine.checkpoint import load_initial_weights, make_checkpoint
from edgecls.engine.config import TrainConfig
from edgecls.engine.early_stopping import EarlyStopping
from edgecls.engine.ema import ModelEma
from edgecls.engine.loops import autocast_dtype, evaluate, train_one_epoch
from edgecls.engine.optim import (
    apply_freezing,
    make_loss,
    make_optimizer,
    make_scheduler,
    param_groups,
    trainable_stages,
)
from edgecls.engine.precise_bn import is_batchnorm, recompute_bn_stats
from edgecls.engine.recipes import describe, recipe_record, resolve_recipe
from edgecls.engine.recorder import RunRecorder
from edgecls.engine.seeding import rng_state, seed_everything, set_rng_state
from edgecls.errors import UserError
from edgecls.evaluation import capped_topk
from edgecls.models import create_model, get_spec, load_plugins
from edgecls.models.registry import takes_kwarg
from edgecls.models.stages import parameter_stages


@dataclass
class RunResult:
    run_dir: str
    best_top1: float | None
    best_epoch: int
    epochs_run: int  # by this invocation
    stopped_early: bool
    stop_reason: str | None
    classes: list[str]
    spec: str
    best_val_loss: float | None = None  # the monitored figure of an autoencoder run (lower is better)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except (ImportError, OSError):
        return float("nan")


def builder_kwargs(cfg: TrainConfig, spec, size: tuple[int, int]) -> dict:
    """The builder's keyword arguments (recorded in every checkpoint): the settings', plus the input size
    for builders whose layers depend on it (a named `input_size` parameter: classic-cnn, vit)."""
    import inspect

    kwargs = cfg.builder_kwargs()
    if "input_size" in inspect.signature(spec.builder).parameters:
        kwargs["input_size"] = [int(size[0]), int(size[1])]
    unknown = [k for k in kwargs if not takes_kwarg(cfg.backbone, k)]
    if unknown:
        params = [p for p in inspect.signature(spec.builder).parameters if p not in ("num_classes", "pretrained")]
        raise UserError(
            f"`model_kwargs` {', '.join(unknown)}: {cfg.backbone} takes none of these; its arguments: "
            f"{', '.join(params) or 'none'}"
        )
    return kwargs


def new_run_dir(cfg: TrainConfig) -> Path:
    """The folder a new run writes: --snapshot-path, or snapshots/<date-time>; never one holding checkpoints."""
    run_dir = Path(cfg.snapshot_path) if cfg.snapshot_path else Path("snapshots") / time.strftime("%Y%m%d-%H%M%S")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"`snapshot_path` {run_dir}: is a file; give a folder for the run")
    if run_dir.exists() and any(run_dir.glob("*.pth")) and not cfg.exist_ok:
        raise UserError(
            f"`snapshot_path` {run_dir}: already holds checkpoints; use `resume` {run_dir} to continue it, "
            "another `snapshot_path`, or `exist_ok` to overwrite"
        )
    return run_dir


def prepared_config(cfg: TrainConfig, resume_from: dict | None) -> tuple[TrainConfig, dict]:
    """The settings checked and completed by their recipe (a resumed run's are complete already)."""
    cfg.check()
    if not cfg.data:
        raise UserError("`data`: give the dataset folder (DATASET/train/<class>/, DATASET/val/<class>/)")
    load_plugins(cfg.model_def_path)
    get_spec(cfg.backbone)  # a mistyped backbone fails before the (long) dataset scan
    if cfg.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UserError("`tensorboard` needs the tensorboard package: pip install tensorboard") from None
    cfg, sources = resolve_recipe(cfg)
    if resume_from is not None:
        sources = dict(resume_from.get("recipe", {}).get("sources", sources))
    if cfg.episodic:
        from edgecls.engine.episodic import prepare

        cfg = prepare(cfg, sources)
    if cfg.task == "autoencoder":
        from edgecls.engine.autoencoder import prepare

        cfg = prepare(cfg, sources)
    return replace(cfg, model_name=cfg.model_name or cfg.backbone), sources


class Run:
    """One training: device, distributed context, data, model, optimizer, schedule and run folder."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, log=None):
        self.cfg = cfg
        self.ctx = dist_utils.setup(cfg.gpu)
        self.device = self.ctx.device if self.ctx.enabled else resolve_device(cfg.gpu)
        self.is_main = dist_utils.is_main()
        self.recorder = RunRecorder(run_dir, enabled=self.is_main)
        self._log = log or (lambda message: print(message, flush=True))
        self.start_epoch = 0
        self.epochs_run = 0
        self.saved_epochs = 0  # epochs the run folder's last.pth holds
        self.stop_reason: str | None = None
        self.interrupted = False  # Ctrl-C (edgecls.engine.interrupt): the epoch in progress ends after its step
        # What best.pth and early stopping follow: val top-1, or the reconstruction loss of an autoencoder.
        self.monitored = "val_loss" if cfg.task == "autoencoder" else "val_top1"
        self.monitor = EarlyStopping(patience=cfg.patience, mode="min" if self.monitored == "val_loss" else "max")
        self.ema: ModelEma | None = None
        self.sources: dict = {}
        self._trainable = -1

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup(
        cls, cfg: TrainConfig, run_dir: Path | None = None, resume_from: dict | None = None, log=None, record=True
    ) -> Run:
        """Check the settings, scan the data, build model, loaders and optimizer; write the run folder's
        first files only once everything has been checked (a failed start leaves nothing). record=False
        (the LR range test): write nothing at all."""
        cfg, sources = prepared_config(cfg, resume_from)
        run = cls(cfg, run_dir if run_dir is not None else new_run_dir(cfg), log=log)
        run.sources = sources
        run.recorder.enabled = run.recorder.enabled and record
        seed_everything(cfg.seed)
        started = time.perf_counter()
        run._scan()
        scan_seconds = time.perf_counter() - started
        run._build_model(load_snapshot=resume_from is None)
        check_mode(cfg.cache_images, run.device)
        run._plan_loaders()  # a shard set too small to stream, a cache over its limit: refused before any file
        if cfg.episodic:
            from edgecls.engine.episodic import check_data

            check_data(run)
        if cfg.task == "autoencoder":
            from edgecls.engine.autoencoder import check_run

            check_run(run)
        if resume_from is not None and resume_from["classes"] != run.classes:
            raise UserError(
                f"`resume`: the dataset's classes {run.classes} differ from the checkpoint's {resume_from['classes']}"
            )
        if resume_from is None:
            run.log(describe(cfg, sources))
        run._place_model()
        run._build_loaders(resume_from["train"]["epoch"] + 1 if resume_from is not None else 0)
        if run.cfg.probe_init and resume_from is None:
            run._probe_head()
        if cfg.lr == "auto":
            run._find_lr()
        run._start_record(scan_seconds)
        run._build_optimization()
        return run

    def _scan(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        if ctx.enabled and ctx.rank != 0:
            dist_utils.barrier(ctx)  # rank 0 scans first; the others then read its verify cache
        if cfg.task == "autoencoder":
            from edgecls.data.unlabelled import scan_unlabelled

            classes, splits = scan_unlabelled(cfg.data)
        else:
            classes, splits = scan_dataset(cfg.data, splits=("train", "val"), workers=None)
        if ctx.enabled and ctx.rank == 0:
            dist_utils.barrier(ctx)
        self.classes, self.splits = classes, splits  # scan_dataset refused what training cannot use (data.checks)
        self.counts = splits["train"].counts(len(classes))
        self.bad_report = bad_file_report(splits)

    def _build_model(self, load_snapshot: bool) -> None:
        cfg = self.cfg
        spec = get_spec(cfg.backbone)
        size = tuple(cfg.input_size) if cfg.input_size else spec.input_size
        self.preprocess = Preprocess(input_size=size, preset=cfg.preprocess or spec.preprocess, resize=cfg.resize)
        self.spec = spec
        if cfg.dropout is not None and not takes_kwarg(cfg.backbone, "dropout"):
            raise UserError(f"`dropout` {cfg.dropout}: {cfg.backbone} has no dropout layer; leave `dropout` out")
        self.model_kwargs = builder_kwargs(cfg, spec, size)
        self.model = create_model(
            cfg.backbone, num_classes=len(self.classes), pretrained=cfg.pretrained, **self.model_kwargs
        )
        if cfg.snapshot and load_snapshot:
            skipped = load_initial_weights(self.model, cfg.snapshot)
            if skipped:
                self.log(
                    f"snapshot: {len(skipped)} tensor(s) not loaded (shape or name differs): {', '.join(skipped[:6])}"
                )
        if cfg.batch_size == 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            raise UserError(
                f"`batch_size` 1: {cfg.backbone} has BatchNorm layers, which need at least 2 images per "
                "training batch; use `batch_size` 2 or more"
            )
        self.stages = parameter_stages(self.model, spec, size)
        if cfg.freeze_backbone and len(self.stages) < 2:
            raise UserError("`freeze_backbone`: this backbone has no separate head to keep trainable")
        self.criterion = make_loss(cfg, self.counts)  # a bad class_weights fails here, before any file is written
        if cfg.task == "autoencoder":
            from edgecls.engine.autoencoder import ReconstructionLoss

            self.criterion = ReconstructionLoss(self.preprocess, cfg.recon_loss)

    def _place_model(self) -> None:
        self.model.to(self.device)
        self.channels_last = self.cfg.channels_last and self.device.type == "cuda"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cfg.cudnn_benchmark
        self.criterion = self.criterion.to(self.device)

    def _loader_settings(self) -> LoaderSettings:
        cfg = self.cfg
        return LoaderSettings(
            cfg.batch_size, cfg.workers, cfg.cache_images, cfg.hflip, cfg.crop_scale, cfg.seed, cfg.augment,
            cfg.random_erasing, cache_dir=cfg.cache_dir, cache_limit=cfg.cache_limit,
        )  # fmt: skip

    def _plan_loaders(self) -> None:
        train, val = self.splits["train"], self.splits["val"]
        self.cache_mode = plan_mode(
            train.samples, val.samples, self.preprocess, self._loader_settings(), device=self.device,
            ranks=Ranks(self.ctx.rank, self.ctx.world_size), train_shards=train.shards, where=self.cfg.data,
        )  # fmt: skip

    def _build_loaders(self, first_epoch: int) -> None:
        train, val = self.splits["train"], self.splits["val"]
        self.loaders = build_loaders(
            train.samples,
            val.samples,
            self.preprocess,
            self._loader_settings(),
            device=self.device,
            ranks=Ranks(self.ctx.rank, self.ctx.world_size),
            first_epoch=first_epoch,
            log=self.log,
            train_shards=train.shards,
            val_shards=val.shards,
            where=self.cfg.data,
        )

    def _probe_head(self) -> None:
        """LP-FT's linear probe: the head fitted by logistic regression on the frozen features."""
        from edgecls.engine.probe import MAX_IMAGES, fit_head

        batches = self.loaders.calibration(MAX_IMAGES)
        accuracy = fit_head(self.model, batches, self.device, len(self.classes))
        self.log(f"probe_init: head fitted by logistic regression on the frozen features (train top-1 {accuracy:.3f})")

    def _find_lr(self) -> None:
        """lr auto: the range test on this run's data and model (restored after), then its suggestion."""
        from edgecls.engine.lr_find import range_test

        optimizer = make_optimizer(replace(self.cfg, lr=1.0), self._groups(1.0))
        batches = self.loaders.train(0)
        result = range_test(self.model, optimizer, batches, self.criterion, self.device, amp=self.cfg.amp)
        if result.suggestion is None:
            raise UserError("`lr` auto: the range test found no usable rate (too few steps); give `lr` a number")
        self.lr_range_test = result
        self.cfg = replace(self.cfg, lr=float(f"{result.suggestion:.3g}"))
        self.sources["lr"] = "lr-find"
        self.log(f"lr auto: the range test over {result.steps} steps suggests {self.cfg.lr:g}")

    def _start_record(self, scan_seconds: float) -> None:
        self.recorder.start({**self.cfg.to_dict(), "recipe_sources": self.sources}, self.classes, self.bad_report)
        if self.bad_report:
            n_bad = len(self.bad_report.splitlines())
            where = self.recorder.path("bad_files.txt")
            self.log(f"warning: skipped {n_bad} unreadable file(s) (listed in {where}):\n{self.bad_report}")
        if getattr(self, "lr_range_test", None) is not None and self.recorder.enabled:
            from edgecls.engine.lr_find import plot_range_test

            plot_range_test(
                self.lr_range_test, self.recorder.path("lr_find.png"), f"{self.cfg.backbone}: lr range test"
            )
        self.recorder.update_timings(
            {"scan_s": round(scan_seconds, 3), **self.loaders.timings, "world_size": self.ctx.world_size}
        )

    def _groups(self, lr: float) -> list[dict]:
        return param_groups(self.model, self.stages, lr, self.cfg.layer_decay)

    def _build_optimization(self) -> None:
        cfg = self.cfg
        self.optimizer = make_optimizer(cfg, self._groups(cfg.lr))
        steps = cfg.episodes_per_epoch if cfg.episodic else self.loaders.steps_per_epoch
        self.scheduler = make_scheduler(cfg, self.optimizer, steps)
        fp16 = cfg.amp and self.device.type == "cuda" and autocast_dtype(self.device) == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        if cfg.model_ema:
            self.ema = ModelEma(self.model, cfg.epochs * steps)
        self.mixer = make_mixer(cfg.mixup, cfg.cutmix, len(self.classes))
        self.train_model = dist_utils.wrap_model(self.model, self.ctx)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        if cfg.episodic:  # episode images -> query logits (edgecls/engine/episodic.py)
            from edgecls.engine.episodic import EpisodeModel

            self.train_model = EpisodeModel(self.train_model, self.model, cfg.n_way, cfg.k_shot)
            self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing or 0.0).to(self.device)
        if cfg.task == "autoencoder":  # images -> decoder logits (edgecls/engine/autoencoder.py)
            from edgecls.engine.autoencoder import ReconstructionModel

            self.train_model = ReconstructionModel(self.train_model)
        self.topk, capped = capped_topk(cfg.topk, len(self.classes))
        if capped and cfg.task != "autoencoder":
            self.log(f"topk {cfg.topk}: {capped}")
        self.recorder.describe_curves(f"{cfg.model_name} \u00b7 {self.recorder.run_dir.name}", self.topk)

    # ------------------------------------------------------------------ resume
    def restore(self, ckpt: dict) -> None:
        """Continue from a last.pth: weights, optimizer, schedule, scaler, EMA, best-so-far and RNG states."""
        state = ckpt["train"]
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.monitor.load_state_dict(state["early_stopping"])
        set_rng_state(state["rng"])
        self.start_epoch = self.saved_epochs = state["epoch"] + 1
        self.recorder.resume_history(self.start_epoch)  # summary rows are 1-based
        self.log(f"resuming {self.recorder.run_dir} at epoch {self.start_epoch + 1}/{self.cfg.epochs}")

    def train_state(self, epoch: int) -> dict:
        """What last.pth needs for an exact resume after `epoch` (0-based)."""
        return {
            "epoch": epoch,
            "config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "early_stopping": self.monitor.state_dict(),
            "rng": rng_state(),
        }

    # ------------------------------------------------------------------ steps
    def log(self, message: str) -> None:
        if self.is_main:
            self._log(message)

    def describe(self) -> str:
        h, w = self.preprocess.input_size
        return (
            f"training {self.cfg.backbone} on {len(self.loaders.train_set)} images ({len(self.classes)} classes), "
            f"validating on {len(self.loaders.val_set)}; input {h}x{w}, device {self.device}, "
            f"run folder {self.recorder.run_dir}"
        )

    def _freeze_for(self, epoch: int) -> None:
        """This epoch's trainable stages (LP-FT head epochs, gradual unfreezing, freeze_backbone)."""
        trainable = trainable_stages(self.cfg, epoch, len(self.stages))
        frozen = bool(self.cfg.freeze_backbone)
        apply_freezing(self.model, self.stages, trainable, frozen)
        shown = 1 if frozen else trainable
        first_and_all = self._trainable == -1 and shown == len(self.stages)  # a plain run: nothing to say
        if shown != self._trainable and len(self.stages) > 1 and not first_and_all:
            what = "the head only" if shown == 1 else (
                "every stage" if shown == len(self.stages) else f"the top {shown} of {len(self.stages)} stages"
            )  # fmt: skip
            self.log(f"epoch {epoch + 1}: training {what}")
        self._trainable = shown

    def train_epoch(self, epoch: int) -> dict:
        """Train one epoch (0-based); the figures are summed over ranks."""
        seed_everything(self.loaders.epoch_seed(epoch))
        self._freeze_for(epoch)
        if self.cfg.episodic:
            from edgecls.engine.episodic import EpisodeLoader

            loader = EpisodeLoader(self, epoch)
        else:
            loader = self.loaders.train(epoch)
        if self.cfg.task == "autoencoder":
            from edgecls.engine.autoencoder import SelfTargets

            loader = SelfTargets(loader)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        first = epoch == self.start_epoch
        stats = train_one_epoch(
            self.train_model, loader, self.criterion, self.optimizer, self.scheduler, self.device,
            amp=self.cfg.amp, scaler=self.scaler, channels_last=self.channels_last,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}", show_progress=sys.stderr.isatty() and self.is_main,
            time_first_step=first, mixer=self.mixer,
            after_step=(lambda: self.ema.update(self.model)) if self.ema is not None else None,
            should_stop=self._should_stop, keep_eval=self._frozen_batchnorms(self.model),
            accuracy=self.cfg.task != "autoencoder",
        )  # fmt: skip
        if self.interrupted:
            return {}  # a part of an epoch: the loop records nothing of it
        if first:
            self.recorder.update_timings(
                {"first_epoch_s": round(stats.seconds, 3), "first_step_s": round(stats.first_step_seconds, 3),
                 **self.loaders.fill_timings()}
            )  # fmt: skip
        self._recalibrate_bn()
        loss, correct, seen = dist_utils.all_reduce_sum([stats.loss, stats.acc, float(stats.images)], self.ctx)
        return {
            "epoch": epoch + 1,
            "train_loss": round(loss / seen, 6),
            "train_acc": round(correct / seen, 6) if self.cfg.task != "autoencoder" else "",
            "lr": f"{lr:.6g}",
            "images_per_s": round(seen / max(stats.seconds, 1e-9), 1),
            "seconds": round(stats.seconds, 2),
            "peak_mem_mb": round(peak_memory_mb(self.device), 1),
        }

    def _frozen_batchnorms(self, model: nn.Module) -> set[nn.Module]:
        """model's BatchNorms that keep their statistics this epoch: all with freeze_bn, else those whose
        parameters are frozen in self.model (a frozen stage); names map them onto the EMA's copy."""
        names = {
            name for name, m in self.model.named_modules()
            if is_batchnorm(m) and (self.cfg.freeze_bn or not any(p.requires_grad for p in m.parameters()))
        }  # fmt: skip
        return {m for name, m in model.named_modules() if name in names}

    def _recalibrate_bn(self) -> None:
        """BatchNorm statistics recomputed for the weights as trained (edgecls/engine/precise_bn.py); frozen
        BatchNorms keep theirs."""
        images = self.cfg.bn_recalibrate
        if not images:
            return
        for model in [self.model] + ([self.ema.module] if self.ema is not None else []):
            skip = self._frozen_batchnorms(model)
            recompute_bn_stats(model, self.loaders.calibration(images), images, self.device, self.cfg.amp, skip)

    def _evaluate(self, model: nn.Module) -> dict:
        if self.cfg.episodic:  # few-shot accuracy on val/ episodes
            from edgecls.engine.episodic import EpisodeModel, validate

            return validate(self, model.model if isinstance(model, EpisodeModel) else model)
        if self.cfg.task == "autoencoder":  # reconstruction loss on val/
            from edgecls.engine.autoencoder import ReconstructionModel, validate

            return validate(self, model.model if isinstance(model, ReconstructionModel) else model)
        sums = evaluate(
            model, self.loaders.val(), self.device, topk=self.topk, amp=self.cfg.amp, channels_last=self.channels_last,
            should_stop=self._should_stop,
        )  # fmt: skip
        if self.interrupted:
            return {"loss": float("nan"), "top1": float("nan"), "topk": float("nan")}  # not recorded
        loss, top1, topk, count = dist_utils.all_reduce_sum(
            [sums.loss, float(sums.top1), float(sums.topk), float(sums.count)], self.ctx
        )
        return {"loss": round(loss / count, 6), "top1": round(top1 / count, 6), "topk": round(topk / count, 6)}

    def validate(self) -> dict:
        """Loss, top-1 and top-K on the val images (each counted once over all ranks), for the raw weights
        and the EMA's; val_* are those of the better of the two (the weights a best.pth would hold)."""
        # The bare module under DDP: no collective ops, so ranks may hold different val batch counts.
        raw = self._evaluate(self.model if self.ctx.enabled else self.train_model)
        ema = self._evaluate(self.ema.module) if self.ema is not None else None
        chosen, weights = (ema, "ema") if ema is not None and self._better(ema, raw) else (raw, "raw")
        out = {f"val_{k}": v for k, v in chosen.items()}
        out.update({"val_top1_raw": raw["top1"], "val_top1_ema": ema["top1"] if ema else "", "weights": weights})
        return out

    def _better(self, a: dict, b: dict) -> bool:
        """Does evaluation `a` beat `b` on the monitored figure?"""
        if self.monitored == "val_loss":
            return a["loss"] < b["loss"]
        return a["top1"] > b["top1"]

    def checkpoint(self, metrics: dict, weights: str = "raw") -> dict:
        """The model as a self-describing checkpoint (backbone, classes, preprocessing, data, recipe, metrics)."""
        cfg = self.cfg
        model = self.ema.module if weights == "ema" and self.ema is not None else self.model
        return make_checkpoint(
            model, backbone=cfg.backbone, model_kwargs=self.model_kwargs, classes=self.classes,
            preprocess=self.preprocess, metrics=metrics, model_name=cfg.model_name,
            data={"root": str(Path(cfg.data).resolve()), "train": str(self.splits["train"].root.resolve()),
                  "val": str(self.splits["val"].root.resolve())},
            recipe=recipe_record(cfg, self.sources), task="episodic" if cfg.episodic else cfg.task,
        )  # fmt: skip

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        """Record the epoch: best-so-far, checkpoints, summary row, curves. Adds 'is_best' to metrics."""
        metrics["is_best"] = self.monitor.step(metrics[self.monitored], epoch + 1)
        self.epochs_run += 1
        saved = {"val_top1": metrics["val_top1"], f"val_top{self.topk}": metrics["val_topk"],
                 "val_loss": metrics["val_loss"], "epoch": epoch + 1, "weights": metrics["weights"]}  # fmt: skip
        if self.is_main:
            row = {k: metrics[k] for k in metrics if k != "is_best"}
            best = self.checkpoint(saved, metrics["weights"]) if metrics["is_best"] else None
            last = self.checkpoint(saved, "raw")
            self.recorder.record_epoch(row, last, self.train_state(epoch), best)
            if self.cfg.task == "autoencoder":
                from edgecls.engine.autoencoder import save_reconstructions

                save_reconstructions(self, self.model, self.recorder.path("reconstructions.png"))
        self.saved_epochs = epoch + 1

    def interrupt(self) -> None:
        """Ctrl-C: end the epoch in progress after its current step; fit() then records nothing of it."""
        self.interrupted = True

    def _should_stop(self) -> bool:
        return self.interrupted

    def stop(self, reason: str) -> None:
        """End the run after the current epoch (callbacks call this)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.log(reason)

    @property
    def stopped_early(self) -> bool:
        return bool(self.cfg.early_stop and self.monitor.should_stop)

    def result(self) -> RunResult:
        return RunResult(
            run_dir=str(self.recorder.run_dir), best_epoch=self.monitor.best_epoch,
            best_top1=self.monitor.best if self.monitored == "val_top1" else None,
            best_val_loss=self.monitor.best if self.monitored == "val_loss" else None,
            epochs_run=self.epochs_run, stopped_early=self.stopped_early, stop_reason=self.stop_reason,
            classes=list(self.classes), spec=self.spec.name,
        )  # fmt: skip

    def close(self) -> None:
        dist_utils.cleanup(self.ctx)
