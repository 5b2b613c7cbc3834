"""One pass of training and one of evaluation over a loader; plain functions of their arguments."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class EpochStats:
    loss: float  # summed over the images
    acc: float  # correct images (a count)
    images: int
    seconds: float
    first_step_seconds: float = 0.0  # from the epoch's start to its first step done (when timed)


@dataclass
class EvalSums:
    loss: float
    top1: int
    topk: int
    count: int


def autocast_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=True, dynamic_ncols=True, file=sys.stderr)


def _inputs(images, labels, device, mixer, channels_last):
    """(images, labels, targets) on the device; with a mixer the targets are soft and the labels the dominant
    class (for the training accuracy)."""
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    targets = labels
    if mixer is not None:
        images, targets = mixer(images, labels)
        labels = targets.argmax(1)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels, targets


def _optimizer_step(model, images, targets, criterion, optimizer, scaler, device, amp):
    """Forward, loss, backward and step (through the grad scaler under fp16); returns (logits, loss)."""
    with torch.autocast(device.type, dtype=autocast_dtype(device), enabled=amp):
        logits = model(images)
        loss = criterion(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return logits, loss


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
    mixer=None,
    after_step=None,
    should_stop=None,
    keep_eval=(),
    accuracy=True,
) -> EpochStats:
    """One pass over `loader`. time_first_step: wait for the first step's GPU work (one host sync) to record
        how long it took; asked for in the first epoch a run trains, which timings.json reports. mixer: mixup /
        cutmix on each batch (soft labels). after_step(): called after every optimizer step (the EMA update).
        should_stop(): checked between steps; True ends the epoch early (an interrupt). keep_eval: modules that
        stay in eval mode (frozen BatchNorms keep their statistics). accuracy=False: outputs are not class scores
    (an autoencoder's reconstructions), so no accuracy is counted."""
    model.train()
    for module in keep_eval:
        module.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    start = time.perf_counter()
    first_step = 0.0
    bar = progress(loader, len(loader), desc, show_progress)
    for step, (images, labels) in enumerate(bar):
        images, labels, targets = _inputs(images, labels, device, mixer, channels_last)
        logits, loss = _optimizer_step(model, images, targets, criterion, optimizer, scaler, device, amp)
        scheduler.step()
        if after_step is not None:
            after_step()
        n = labels.shape[0]
        seen += n
        total_loss += loss.detach().double() * n
        if accuracy:
            correct += (logits.argmax(1) == labels).sum()
        if step == 0 and time_first_step:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first_step = time.perf_counter() - start
        if show_progress and step % 10 == 0:
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{total_loss.item() / seen:.4f}",
                **({"acc": f"{correct.item() / seen:.3f}"} if accuracy else {}),
                img_s=f"{seen / max(elapsed, 1e-9):.0f}",
            )
        if should_stop is not None and should_stop():
            break
    return EpochStats(total_loss.item(), float(correct.item()), seen, time.perf_counter() - start, first_step)


@torch.no_grad()
def evaluate(model, loader, device, *, topk=5, amp=False, channels_last=False, should_stop=None) -> EvalSums:
    """Sums over the loader: cross-entropy, top-1 and top-K hits, image count. should_stop(): checked between
    batches; True ends the pass early (an interrupt; the partial sums are not for reporting)."""
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
        if should_stop is not None and should_stop():
            break
    return EvalSums(loss_sum.item(), int(top1.item()), int(topk_hits.item()), count)
