"""Does the ONNX file give the same answers as PyTorch? Real images in, probabilities compared.

Images come from `verify_dir`, else the val/ folder the checkpoint records it was validated on, else
generated ones (seeded noise and gradients) so a bare checkpoint can still be checked. When an image sits in a
folder named after a class, it also counts toward top-1 accuracy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from PIL import Image

from edgecls.data.images import load_rgb
from edgecls.data.layout import walk_paths
from edgecls.data.presets import Preprocess
from edgecls.errors import UserError
from edgecls.predict import softmax

FP32_MAX_DIFF = 1e-4
MIN_COSINE = 1 - FP32_MAX_DIFF  # embedding exports: every image's ONNX features within this cosine of torch's
INT8_MIN_COSINE = 0.99  # an INT8 embedding image "agrees" with FP32 at this cosine or above


@dataclass
class Sample:
    name: str  # path, or "generated-N"
    image: Image.Image
    label: int | None


@dataclass
class Comparison:
    count: int
    max_diff: float
    agree: int
    worst: str
    reference_top1: float | None  # accuracy of the reference (torch) model on labelled images
    onnx_top1: float | None

    @property
    def agreement(self) -> float:
        return self.agree / self.count if self.count else 0.0

    def passed(self, tolerance: float = FP32_MAX_DIFF) -> bool:
        return self.count > 0 and self.agree == self.count and self.max_diff <= tolerance


def full_check(model: onnx.ModelProto) -> None:
    """onnx.checker with full shape/type inference; a failure is a bug in export, not user input."""
    onnx.checker.check_model(model, full_check=True)


def _evenly(items: list, count: int) -> list:
    if count <= 0 or len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def load_samples(
    folder: str | os.PathLike, classes: list[str], count: int, setting: str | None = None
) -> tuple[list[Sample], list[str]]:
    """Up to `count` decodable images (spread over the folder); labels from class-named parent folders.

    `setting` (e.g. "calib_dir") names the setting the folder came from in error messages.
    """
    folder = Path(folder)
    where = f"`{setting}` {folder}" if setting else str(folder)
    if not folder.is_dir():
        raise UserError(f"{where}: image folder not found")
    index = {name: i for i, name in enumerate(classes)}
    samples, bad = [], []
    for path in _evenly(walk_paths(folder, images_only=True), count):
        try:
            image = load_rgb(path)
        except (OSError, ValueError, UserError) as exc:
            bad.append(f"{path}: {exc}")
            continue
        samples.append(Sample(str(path), image, index.get(path.parent.name)))
    if not samples:
        raise UserError(f"{where}: no readable images (.jpg .png .bmp .webp .tif) found")
    return samples, bad


def generated_samples(count: int, size: tuple[int, int], seed: int = 0) -> list[Sample]:
    """Seeded noise + gradient images: exercise every pixel path when no real images exist."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for i in range(count):
        ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * rng.uniform(0.2, 1.0, 3)
        noise = rng.normal(0, 40, (h, w, 3))
        arr = np.clip(ramp + noise + rng.uniform(0, 80), 0, 255).astype(np.uint8)
        out.append(Sample(f"generated-{i}", Image.fromarray(arr, "RGB"), None))
    return out


def dataset_val_dir(ckpt: dict | None) -> Path | None:
    """The val/ folder the checkpoint records it was validated on (`ckpt["data"]["val"]`), if it still exists."""
    val = ((ckpt or {}).get("data") or {}).get("val")
    return Path(val) if val and Path(val).is_dir() else None


def batch_tensor(samples: list[Sample], preprocess: Preprocess) -> np.ndarray:
    return np.stack([preprocess(s.image).numpy() for s in samples]).astype(np.float32)


@torch.no_grad()
def torch_probs(model: nn.Module, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    model.eval()
    outs = [model(torch.from_numpy(inputs[i : i + batch])).float() for i in range(0, len(inputs), batch)]
    return torch.softmax(torch.cat(outs), dim=1).numpy().astype(np.float64)


@torch.no_grad()
def torch_features(model: nn.Module, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    """N x D raw features of a head-stripped model."""
    model.eval()
    outs = [model(torch.from_numpy(inputs[i : i + batch])).float() for i in range(0, len(inputs), batch)]
    return torch.cat(outs).reshape(len(inputs), -1).numpy().astype(np.float64)


def _run_outputs(sess: ort.InferenceSession, inputs: np.ndarray) -> list[np.ndarray]:
    """Every output of the graph, concatenated over the batch (one image at a time for a fixed batch of 1)."""
    name = sess.get_inputs()[0].name
    step = 1 if sess.get_inputs()[0].shape[0] == 1 else 32
    runs = [sess.run(None, {name: inputs[i : i + step]}) for i in range(0, len(inputs), step)]
    return [np.concatenate([r[k] for r in runs]).astype(np.float64) for k in range(len(runs[0]))]


def onnx_features(sess: ort.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    return _run_outputs(sess, inputs)[0].reshape(len(inputs), -1)


def prototype_probs(sess: ort.InferenceSession, inputs: np.ndarray, temperature: float) -> np.ndarray:
    """A prototypes graph's (scores, sqnorm) through the host tail the Predictor applies."""
    from edgecls.export.prototype_head import host_tail

    scores, sqnorm = _run_outputs(sess, inputs)[:2]
    return host_tail(scores, sqnorm, temperature).astype(np.float64)


def compare_cosine(
    reference: np.ndarray, candidate: np.ndarray, samples: list[Sample], minimum: float = MIN_COSINE
) -> Comparison:
    """Features compared per image by cosine: max_diff is 1 - the lowest cosine, `agree` counts the images at
    or above `minimum` (so `passed()` means every image's cosine >= MIN_COSINE)."""
    a = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    b = candidate / np.maximum(np.linalg.norm(candidate, axis=1, keepdims=True), 1e-12)
    cos = (a * b).sum(axis=1)
    return Comparison(
        count=len(samples),
        max_diff=float(1 - cos.min()) if len(cos) else 0.0,
        agree=int((cos >= minimum).sum()),
        worst=samples[int(np.argmin(cos))].name if samples else "",
        reference_top1=None,
        onnx_top1=None,
    )


def session(model: onnx.ModelProto | str | os.PathLike, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def onnx_probs(sess: ort.InferenceSession, inputs: np.ndarray, graph_softmax: bool) -> np.ndarray:
    """One image at a time when the graph's batch is fixed at 1 (the NPU form)."""
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0] == 1
    step = 1 if fixed else 32
    outs = [sess.run(None, {name: inputs[i : i + step]})[0] for i in range(0, len(inputs), step)]
    out = np.concatenate(outs).astype(np.float64)
    return out if graph_softmax else softmax(out, dtype=np.float64)


def accuracy(probs: np.ndarray, samples: list[Sample]) -> float | None:
    labelled = [(p, s.label) for p, s in zip(probs, samples) if s.label is not None]
    if not labelled:
        return None
    return float(np.mean([int(np.argmax(p)) == label for p, label in labelled]))


def compare(reference: np.ndarray, candidate: np.ndarray, samples: list[Sample], allow_ties: bool = True) -> Comparison:
    """allow_ties: a top-1 "disagreement" between two classes whose reference probabilities differ by
    less than that image's numeric error is a tie (common with untrained weights), not a mismatch."""
    diff = np.abs(reference - candidate).max(axis=1)
    rows = np.arange(len(reference))
    cand_top = candidate.argmax(axis=1)
    agree = reference.argmax(axis=1) == cand_top
    if allow_ties:
        agree |= reference.max(axis=1) - reference[rows, cand_top] <= 2 * diff
    # The worst image: a top-1 disagreement first, else the largest difference.
    worst_index = int(np.argmax(diff + (~agree) * 10.0))
    return Comparison(
        count=len(samples),
        max_diff=float(diff.max()) if len(diff) else 0.0,
        agree=int(agree.sum()),
        worst=samples[worst_index].name if samples else "",
        reference_top1=accuracy(reference, samples),
        onnx_top1=accuracy(candidate, samples),
    )
