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
    """One line per epoch: losses, accuracies, speed, and whether it is the best so far (no top-K column when
    K is 1: with 2 classes top-K is kept below the class count, so it would repeat top-1)."""

    def on_epoch_end(self, run, metrics: dict) -> None:
        m, k = metrics, run.topk
        if run.monitored == "val_loss":  # an autoencoder: reconstruction losses only
            run.log(
                f"epoch {m['epoch']}/{run.cfg.epochs}  train loss {m['train_loss']:.5f}  val loss {m['val_loss']:.5f} "
                f"({run.cfg.recon_loss})  {m['images_per_s']:.0f} img/s  {m['seconds']:.1f}s"
                + ("  *best*" if m["is_best"] else "")
            )
            return
        ema = f" (raw {m['val_top1_raw']:.4f}, EMA {m['val_top1_ema']:.4f})" if m.get("val_top1_ema") != "" else ""
        topk = f" top-{k} {m['val_topk']:.4f}" if k > 1 else ""
        run.log(
            f"epoch {m['epoch']}/{run.cfg.epochs}  train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f}  "
            f"val loss {m['val_loss']:.4f} top-1 {m['val_top1']:.4f}{ema}{topk}  "
            f"{m['images_per_s']:.0f} img/s  {m['seconds']:.1f}s" + ("  *best*" if m["is_best"] else "")
        )


class EarlyStop(Callback):
    """Kneron's rule: stop when val top-1 has not improved for `patience` epochs."""

    def on_epoch_end(self, run, metrics: dict) -> None:
        monitor = run.monitor
        if run.cfg.early_stop and monitor.should_stop:
            what = "val loss" if run.monitored == "val_loss" else "val top-1"
            run.stop(
                f"early stopping: {what} has not improved for {run.cfg.patience} epochs "
                f"(best {monitor.best:.4f} at epoch {monitor.best_epoch})"
            )


class FinalTable(Callback):
    """The table printed when training ends: the best epoch's figures, the test/ figures of that checkpoint (or
    a word that val chose it), the end-of-training files and where the run folder is."""

    def __init__(self, evaluation=None):
        self.evaluation = evaluation  # the FinalEvaluation callback, when there is one

    def on_train_end(self, run, result) -> None:
        rows = run.recorder.history
        if not rows or not run.is_main:
            return
        best = next((r for r in rows if int(r["epoch"]) == result.best_epoch), rows[-1])
        k, run_dir = run.topk, run.recorder.run_dir
        found = self.evaluation.results if self.evaluation is not None else {}
        lines = ["", "  metric          value", "  --------------  ----------", f"  best epoch      {best['epoch']}"]
        if run.monitored == "val_loss":
            lines.append(f"  val loss        {float(best['val_loss']):.5f}  ({run.cfg.recon_loss} reconstruction)")
            lines.append(f"  epochs run      {len(rows)}")
            lines.append(f"  best model      {run_dir / 'best.pth'}")
            lines.append(f"  run folder      {run_dir}  (summary.csv, curves.png, reconstructions.png, args.yaml)")
            print("\n".join(lines) + "\n", flush=True)
            return
        lines.append(f"  val top-1       {float(best['val_top1']):.4f}")
        if k > 1:
            lines.append(f"  val top-{k:<7} {float(best['val_topk']):.4f}")
        lines.append(f"  val loss        {float(best['val_loss']):.4f}")
        lines += selection_lines(run, found.get("test"), k)
        if best.get("weights") == "ema":
            lines.append("  weights         EMA (the moving average scored higher than the raw weights)")
        lines.append(f"  epochs run      {len(rows)}")
        lines.append(f"  best model      {run_dir / 'best.pth'}")
        for split, done in found.items():
            lines.append(f"  {split + ' files':<16}{', '.join(f.name for f in done.files)}")
        lines.append(f"  run folder      {run_dir}  (summary.csv, curves.png, args.yaml, class_id.json)")
        print("\n".join(lines) + "\n", flush=True)


def selection_lines(run, test, k: int) -> list[str]:
    """Honest metrics: the test/ figures of the checkpoint val chose, or why the val figure is optimistic."""
    from edgecls.evaluation import has_split

    if test is not None:
        r = test.report
        lines = [f"  test top-1      {r['accuracy']:.4f}  (best.pth, chosen on val; {r['num_images']} test images)"]
        if k > 1:
            lines.append(f"  test top-{k:<6} {r['topk'][f'top{k}']:.4f}")
        return lines
    lines = [
        "  note            val chose best.pth (it is the selection split), so the val figure is optimistic; "
        "hold out a test/ split for an unbiased one: edgecls data split --test-fraction"
    ]
    if has_split(run.cfg.data, "test"):
        lines[0] = "  note            val chose best.pth (it is the selection split), so the val figure is optimistic"
        lines.append("  test            not evaluated (final_eval is off, or it was skipped: see above); "
                     "eval_utils/eval.py --split test evaluates it")  # fmt: skip
    return lines


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
    from edgecls.engine.final_eval import FinalEvaluation

    extra = [TensorBoardLog()] if cfg is not None and cfg.tensorboard else []
    evaluation = FinalEvaluation() if cfg is not None and cfg.final_eval else None
    return [EpochLog(), EarlyStop(), *extra, *([evaluation] if evaluation else []), FinalTable(evaluation)]
