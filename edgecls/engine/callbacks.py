"""Callbacks: how code outside the engine hears about a run and stops it.

A callback gets `on_train_start(run)`, `on_epoch_end(run, metrics)` after each epoch is recorded, and
`on_train_end(run, result)`. It may call `run.stop(reason)` to end the run after the current epoch.
Under DDP every rank calls its callbacks with the same (all-reduced) metrics, so decisions agree.
Early stopping, the epoch log line and the final table are callbacks too; `edgecls tune` adds pruning.
"""

from __future__ import annotations


class Callback:
    """Override the hooks you need."""

    def on_train_start(self, run) -> None:
        pass

    def on_epoch_end(self, run, metrics: dict) -> None:
        pass

    def on_train_end(self, run, result) -> None:
        pass


class CallbackList(Callback):
    def __init__(self, callbacks):
        self.callbacks = list(callbacks)

    def on_train_start(self, run) -> None:
        for cb in self.callbacks:
            cb.on_train_start(run)

    def on_epoch_end(self, run, metrics: dict) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(run, metrics)

    def on_train_end(self, run, result) -> None:
        for cb in self.callbacks:
            cb.on_train_end(run, result)


class EpochLog(Callback):
    """One line per epoch: losses, accuracies, speed, and whether it is the best so far."""

    def on_epoch_end(self, run, metrics: dict) -> None:
        m, k = metrics, run.topk
        ema = f" (raw {m['val_top1_raw']:.4f}, EMA {m['val_top1_ema']:.4f})" if m.get("val_top1_ema") != "" else ""
        run.log(
            f"epoch {m['epoch']}/{run.cfg.epochs}  train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f}  "
            f"val loss {m['val_loss']:.4f} top-1 {m['val_top1']:.4f}{ema} top-{k} {m['val_topk']:.4f}  "
            f"{m['images_per_s']:.0f} img/s  {m['seconds']:.1f}s" + ("  *best*" if m["is_best"] else "")
        )


class EarlyStop(Callback):
    """Kneron's rule: stop when val top-1 has not improved for `patience` epochs."""

    def on_epoch_end(self, run, metrics: dict) -> None:
        monitor = run.monitor
        if run.cfg.early_stop and monitor.should_stop:
            run.stop(
                f"early stopping: val top-1 has not improved for {run.cfg.patience} epochs "
                f"(best {monitor.best:.4f} at epoch {monitor.best_epoch})"
            )


class FinalTable(Callback):
    """The table printed when training ends: the best epoch's figures and where the files are."""

    def on_train_end(self, run, result) -> None:
        rows = run.recorder.history
        if not rows or not run.is_main:
            return
        best = next((r for r in rows if int(r["epoch"]) == result.best_epoch), rows[-1])
        k, run_dir = run.topk, run.recorder.run_dir
        print("\n  metric          value")
        print("  --------------  ----------")
        print(f"  best epoch      {best['epoch']}")
        print(f"  val top-1       {float(best['val_top1']):.4f}")
        print(f"  val top-{k:<7} {float(best['val_topk']):.4f}")
        print(f"  val loss        {float(best['val_loss']):.4f}")
        if best.get("weights") == "ema":
            print("  weights         EMA (the moving average scored higher than the raw weights)")
        print(f"  epochs run      {len(rows)}")
        print(f"  best model      {run_dir / 'best.pth'}")
        print(f"  run folder      {run_dir}  (summary.csv, curves.png, args.yaml, class_id.json)\n", flush=True)


class TensorBoardLog(Callback):
    """`tensorboard`: every numeric epoch figure as a scalar in RUN/tensorboard (rank 0 only)."""

    def __init__(self):
        self.writer = None

    def on_train_start(self, run) -> None:
        if not run.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter  # present: checked before the run started

        self.writer = SummaryWriter(log_dir=str(run.recorder.path("tensorboard")))

    def on_epoch_end(self, run, metrics: dict) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if key not in ("epoch", "is_best"):
                self.writer.add_scalar(key, number, metrics["epoch"])
        self.writer.flush()

    def on_train_end(self, run, result) -> None:
        if self.writer is not None:
            self.writer.close()


def default_callbacks(cfg=None) -> list[Callback]:
    extra = [TensorBoardLog()] if cfg is not None and cfg.tensorboard else []
    return [EpochLog(), EarlyStop(), *extra, FinalTable()]
