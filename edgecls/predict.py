"""One Predictor for a checkpoint (.pth) or an ONNX file: same preprocessing, softmax scores.

Used by inference.py, eval_utils/eval.py and the HTTP server. Classes and preprocessing
come from the file itself (checkpoint dict or ONNX metadata); a bare state_dict needs a
backbone name and a class map.

Thread safety: `predict_arrays` / `predict_images` may be called from several threads.
onnxruntime's `InferenceSession.run` is documented as thread-safe; the torch forward runs
under a lock (intra-op threads already use every core, so the lock costs no throughput).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from edgecls.data.images import MAX_PIXELS, load_rgb
from edgecls.data.presets import Preprocess
from edgecls.device import resolve_device
from edgecls.errors import UserError

ONNX_SUFFIXES = (".onnx",)
TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar")


def softmax(logits: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Row-wise softmax, computed in float64 for stability and returned as `dtype` (the one softmax edgecls
    applies to logits: the Predictor's and export verification's)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x.astype(dtype, copy=False)


def image_error_reason(exc: BaseException, path=None) -> str:
    """A short user-facing reason for a file that failed to decode (matches check_image's words)."""
    if path is not None and _is_empty_file(path):
        return "zero-byte file"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"too many pixels (over {MAX_PIXELS:,})"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image (unrecognized format)"
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    return f"corrupt or truncated: {exc}"


def _is_empty_file(path) -> bool:
    try:
        return os.stat(path).st_size == 0
    except (OSError, TypeError, ValueError):
        return False


def _sniff_kind(path: Path) -> str:
    """'onnx' or 'torch' from the suffix, else from the first bytes (zip / pickle = torch)."""
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    with open(path, "rb") as fh:
        head = fh.read(4)
    return "torch" if head[:2] == b"PK" or head[:1] == b"\x80" else "onnx"


def predictor_for(settings, log=None) -> Predictor:
    """load_predictor from a command's settings (inference's and eval's share these field names), on the
    process's thread budget (edgecls.threads: their `threads`, 0 or None: auto), logged once through `log`."""
    from edgecls.threads import configure

    budget = configure(getattr(settings, "threads", None) or 0, log=log)
    return load_predictor(
        snapshot=settings.snapshot,
        onnx=settings.onnx,
        backbone=settings.backbone,
        model_def_path=settings.model_def_path,
        class_id_path=settings.class_id_path,
        input_size=settings.input_size,
        preset=settings.preprocess,
        resize=settings.resize,
        gpu=settings.gpu,
        threads=budget.intra or None,
    )


def load_predictor(
    *,
    snapshot: str | None = None,
    onnx: str | None = None,
    backbone: str | None = None,
    model_def_path: str | None = None,
    class_id_path: str | None = None,
    input_size: tuple[int, int] | None = None,
    preset: str | None = None,
    resize: str | None = None,
    gpu=-1,
    threads: int | None = None,
) -> Predictor:
    """The Predictor for exactly one of `snapshot` / `onnx`, with the class map and preprocessing overrides
    applied (what inference.py and eval_utils/eval.py load)."""
    from edgecls.data.classmap import read_class_map

    if bool(snapshot) == bool(onnx):
        raise UserError("give exactly one model: `snapshot` CHECKPOINT.pth or `onnx` MODEL.onnx")
    names = read_class_map(class_id_path) if class_id_path else None
    kw = dict(device=gpu, backbone=backbone, model_def_path=model_def_path, class_names=names, num_threads=threads)
    override = preprocess_override(None, input_size, preset, resize)
    try:
        predictor = Predictor.from_path(snapshot or onnx, **kw)
    except UserError:
        if override is None or not onnx or names is None:
            raise
        # an ONNX file without edgecls metadata: the settings, the class map and the graph say everything
        return Predictor.from_path(onnx, preprocess=override, input_size_from_graph=not input_size, **kw)
    if override is not None:  # overrides change only what they name; the rest stays as stored
        predictor.preprocess = preprocess_override(predictor.preprocess, input_size, preset, resize)
        check_input_size(predictor.path, predictor.fixed_input_size, predictor.preprocess.input_size)
    return predictor


def preprocess_override(base: Preprocess | None, input_size, preset, resize) -> Preprocess | None:
    """`base` (or the defaults) with the given input size, normalization preset and resize policy; None when
    nothing is overridden."""
    if not (input_size or preset or resize):
        return None
    d = base.to_dict() if base else Preprocess().to_dict()
    if input_size:
        d["input_size"] = list(input_size)
    if preset:
        d["preset"], d["mean"], d["std"] = preset, [], []
    if resize:
        d["resize"] = resize
    return Preprocess.from_dict(d)


def _check_class_count(outputs: int, class_names: list[str] | None, what: str) -> None:
    if class_names is not None and outputs != len(class_names):
        raise UserError(
            f"{what} has {outputs} outputs but the class map has {len(class_names)} classes; "
            "pass the class_id.json that was written with this model"
        )


class _TorchRunner:
    def __init__(self, model, device: str):
        import torch

        self.torch = torch
        self.model = model.to(device).eval()
        self.device = device
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        with self.lock, torch.inference_mode():
            out = self.model(x)
            if isinstance(out, (tuple, list)):
                out = out[0]
            probs = torch.softmax(out.float(), dim=1)
        return probs.cpu().numpy()


def _static_hw(shape) -> tuple[int, int] | None:
    """(H, W) of an N x 3 x H x W input whose spatial dims are fixed numbers; None when either is symbolic."""
    hw = list(shape[2:4]) if shape is not None and len(shape) == 4 else []
    if len(hw) == 2 and all(isinstance(v, int) and v > 0 for v in hw):
        return hw[0], hw[1]
    return None


def check_input_size(path, fixed: tuple[int, int] | None, size) -> None:
    """A one-line error when a fixed-size graph is asked to take another input size."""
    if fixed is None or tuple(size) == tuple(fixed):
        return
    h, w = fixed
    raise UserError(
        f"`input_size` {size[0]}x{size[1]}: {path} takes a fixed {h}x{w} input; drop `input_size` "
        f"or pass `input_size` {h}x{w}"
    )


QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QGemm", "QAttention"}


def onnx_precision(path) -> str:
    """ "int8" when the graph quantizes (QDQ nodes, QLinear* or *Integer operators), else "fp32"."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - onnxruntime has loaded it; an unreadable graph only loses this label
        return "unknown"
    ops = {node.op_type for node in graph.node}
    quantized = ops & QUANTIZED_OPS or any(op.startswith("QLinear") or op.endswith("Integer") for op in ops)
    return "int8" if quantized else "fp32"


class _OnnxRunner:
    def __init__(self, session, softmax_applied: bool, fixed_batch_one: bool, fixed_hw: tuple[int, int] | None):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.fixed_hw = fixed_hw
        self.softmax_applied = softmax_applied
        self.fixed_batch_one = fixed_batch_one

    def outputs(self, batch: np.ndarray, names: list[str] | None = None) -> list[np.ndarray]:
        """The graph's outputs (all, or `names`) for a batch; a fixed batch-1 graph runs image by image."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        run = self.session.run
        if self.fixed_batch_one and len(x) != 1:
            parts = [run(names, {self.input_name: x[i : i + 1]}) for i in range(len(x))]
            return [np.concatenate([part[k] for part in parts]) for k in range(len(parts[0]))]
        return run(names, {self.input_name: x})

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = np.asarray(self.outputs(batch)[0], dtype=np.float32).reshape(len(batch), -1)
        return out if self.softmax_applied else softmax(out)


class _PrototypeRunner(_OnnxRunner):
    """A `pytorch2onnx.py --prototypes` graph: outputs (scores, sqnorm) -> softmax(temperature * cosine)
    (edgecls.export.prototype_head.host_tail: the Div, Sqrt and Softmax the NPU lacks)."""

    def __init__(self, session, temperature: float, fixed_batch_one: bool, fixed_hw: tuple[int, int] | None):
        super().__init__(session, True, fixed_batch_one, fixed_hw)
        self.temperature = float(temperature)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        from edgecls.export.prototype_head import host_tail

        scores, sqnorm = self.outputs(batch)[:2]
        return host_tail(scores, sqnorm, self.temperature)


class Predictor:
    """Classify images with a checkpoint or an ONNX file; scores are softmax probabilities."""

    def __init__(
        self,
        runner,
        *,
        classes: list[str],
        preprocess: Preprocess,
        backbone: str,
        kind: str,
        path: str,
        device: str = "cpu",
    ):
        self._run = runner
        self.classes = list(classes)
        self.preprocess = preprocess
        self.backbone = backbone
        self.kind = kind
        self.path = path
        self.device = device

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_path(
        cls,
        path,
        *,
        device="cpu",
        backbone=None,
        model_def_path=None,
        class_names=None,
        num_threads=None,
        preprocess: Preprocess | None = None,
        input_size_from_graph: bool = False,
    ) -> Predictor:
        """Load a .pth (edgecls checkpoint or bare state_dict) or a .onnx file.

        `class_names` overrides the stored names (same count required); `preprocess`
        overrides the stored preprocessing (needed for bare state_dicts' non-default sizes
        and for ONNX files without edgecls metadata); with `input_size_from_graph`, an ONNX graph
        of fixed height and width sets the input size instead.
        """
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: model file not found")
        class_names = None if class_names is None else [str(c) for c in class_names]
        device = str(resolve_device(device))
        if _sniff_kind(p) == "onnx":
            return cls._from_onnx(p, device, class_names, num_threads, preprocess, input_size_from_graph)
        return cls._from_torch(p, device, backbone, model_def_path, class_names, num_threads, preprocess)

    @classmethod
    def _from_torch(cls, p, device, backbone, model_def_path, class_names, num_threads, preprocess):
        import torch

        from edgecls.engine.checkpoint import extract_state_dict, is_edgecls_checkpoint, load_model, load_raw

        if num_threads:
            torch.set_num_threads(int(num_threads))
        obj = load_raw(p)
        if is_edgecls_checkpoint(obj):
            if obj.get("task") == "autoencoder":
                raise UserError(
                    f"{p}: an autoencoder checkpoint (train.py --task autoencoder) has an untrained classifier head; "
                    "use it with `edgecls embed` / a catalog, or fine-tune it with train.py --snapshot to classify"
                )
            _check_class_count(len(obj["classes"]), class_names, f"checkpoint {p}")
            name = obj["model"]["name"]
            if backbone and backbone != name:
                import warnings

                warnings.warn(f"`backbone` {backbone} ignored: {p} is a {name} checkpoint", stacklevel=2)
        else:
            extract_state_dict(obj, p)  # not even weights: say so first
            if not backbone:
                raise UserError(f"{p}: a bare state_dict (no edgecls metadata); pass `backbone` and `class_id_path`")
            if class_names is None:
                raise UserError(f"{p}: a bare state_dict carries no class names; pass `class_id_path` class_id.json")
        loaded = load_model(obj, backbone=backbone, classes=class_names, model_def_path=model_def_path, path=p)
        return cls(
            _TorchRunner(loaded.model, device),
            classes=class_names or loaded.classes,
            preprocess=preprocess or loaded.preprocess,
            backbone=loaded.backbone,
            kind="torch",
            path=str(p),
            device=device,
        )

    @classmethod
    def _from_onnx(cls, p, device, class_names, num_threads, preprocess, input_size_from_graph=False):
        import onnxruntime as ort

        from edgecls.export.metadata import read_metadata

        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = int(num_threads)
        providers = ["CPUExecutionProvider"]
        if device != "cpu":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError(f"{p}: this onnxruntime has no CUDA provider; use `gpu` -1 (CPU) for ONNX files")
            providers = [("CUDAExecutionProvider", {"device_id": int(device.split(":")[1])}), "CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(str(p), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise UserError(f"{p}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        props = session.get_modelmeta().custom_metadata_map or {}
        if "edgecls.classes" in props or class_names is None or preprocess is None:
            meta = read_metadata(props, str(p))
        else:
            meta = {"classes": class_names, "preprocess": preprocess, "backbone": "", "softmax": False}
            meta.update(kind="classifier", temperature=None)
        if meta["kind"] == "autoencoder":
            raise UserError(
                f"{p}: a whole-autoencoder export reconstructs images and gives no class scores; export the "
                "encoder (pytorch2onnx.py without --autoencoder-full) for `edgecls embed`"
            )
        if meta["kind"] == "embedding":
            raise UserError(
                f"{p}: an embedding export gives features, not class scores; use it with `edgecls embed` or a "
                "catalog, or export a classifier (or pytorch2onnx.py --prototypes) to classify"
            )
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        if len(inp.shape) != 4:
            raise UserError(f"{p}: input {inp.name} has shape {inp.shape}; expected N x 3 x H x W")
        outputs = out.shape[-1] if out.shape and isinstance(out.shape[-1], int) else None
        if outputs is not None:
            _check_class_count(outputs, meta["classes"], f"ONNX model {p}")
            _check_class_count(outputs, class_names, f"ONNX model {p}")
        elif class_names is not None:
            _check_class_count(len(meta["classes"]), class_names, f"ONNX model {p}")
        fixed = _static_hw(inp.shape)
        if preprocess is not None and input_size_from_graph and fixed is not None:
            preprocess = Preprocess.from_dict({**preprocess.to_dict(), "input_size": list(fixed)})
        if preprocess is not None:
            check_input_size(p, fixed, preprocess.input_size)
        prep = preprocess or meta["preprocess"]
        if fixed is not None and tuple(fixed) != tuple(prep.input_size):
            raise UserError(
                f"{p}: the graph takes {fixed[0]}x{fixed[1]} input but its metadata says "
                f"{prep.input_size[0]}x{prep.input_size[1]}; re-export it with pytorch2onnx.py"
            )
        fixed_one = isinstance(inp.shape[0], int) and inp.shape[0] == 1
        if meta["kind"] == "prototypes":
            runner = _PrototypeRunner(session, meta["temperature"], fixed_batch_one=fixed_one, fixed_hw=fixed)
        else:
            runner = _OnnxRunner(session, softmax_applied=meta["softmax"], fixed_batch_one=fixed_one, fixed_hw=fixed)
        return cls(
            runner,
            classes=class_names or meta["classes"],
            preprocess=prep,
            backbone=meta["backbone"],
            kind="onnx",
            path=str(p),
            device=device,
        )

    @property
    def fixed_input_size(self) -> tuple[int, int] | None:
        """(H, W) an ONNX graph is fixed to; None for checkpoints and symbolic (dynamic) sizes."""
        return getattr(self._run, "fixed_hw", None)

    # ---------------------------------------------------------------- predicting
    def preprocess_image(self, img: Image.Image) -> np.ndarray:
        """RGB PIL image -> 3xHxW float32, exactly the training's validation transform."""
        if img.mode != "RGB":
            from edgecls.data.images import to_rgb

            img = to_rgb(img)
        return self.preprocess.normalize_uint8(np.asarray(self.preprocess.resize_image(img), np.uint8))

    def checked_batch(self, batch: np.ndarray) -> np.ndarray:
        """A preprocessed image or batch as N x 3 x H x W float32, or a one-line error for another shape."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        h, w = self.preprocess.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, h, w):
            raise UserError(f"input batch has shape {batch.shape}; expected N x 3 x {h} x {w}")
        return batch

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Nx3xHxW float32 (already preprocessed) -> NxC softmax probabilities."""
        batch = self.checked_batch(batch)
        if len(batch) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        probs = self._run(batch)
        if probs.shape[1] != len(self.classes):
            raise UserError(
                f"{self.path}: the model gives {probs.shape[1]} scores but there are "
                f"{len(self.classes)} class names; pass the matching class map"
            )
        return probs

    def predict_images(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, len(self.classes)), np.float32)
        return self.predict_arrays(np.stack([self.preprocess_image(im) for im in images]))

    def _load_one(self, path) -> tuple[np.ndarray | None, str | None]:
        try:
            img = load_rgb(path)
        except (
            OSError,
            ValueError,
            SyntaxError,
            EOFError,
            Image.DecompressionBombWarning,
            Image.DecompressionBombError,
        ) as exc:
            return None, image_error_reason(exc, path)
        return self.preprocess_image(img), None

    def predict_paths(
        self, paths: Iterable, batch_size: int = 32, workers: int | None = None
    ) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
        """Yield (path, probs, None) or (path, None, reason) per path, in input order.

        Decoding and preprocessing run in a thread pool (PIL and numpy release the GIL)
        while the model works on the previous batch.
        """
        batch_size = max(1, int(batch_size))
        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        workers = max(1, int(workers))
        window = batch_size * 2 + workers
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgecls-decode") as pool:
            pending: deque = deque()
            ordered: list = []  # (path, array | None, reason | None) since the last batch, in input order
            arrays: list = []
            it = iter(paths)
            exhausted = False
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        path = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.append((path, pool.submit(self._load_one, path)))
                if not pending:
                    break
                path, fut = pending.popleft()
                array, reason = fut.result()
                ordered.append((path, array, reason))
                if array is not None:
                    arrays.append(array)
                if len(arrays) >= batch_size or (exhausted and not pending):
                    probs = self.predict_arrays(np.stack(arrays)) if arrays else None
                    k = 0
                    for p_, a_, r_ in ordered:
                        if a_ is None:
                            yield str(p_), None, r_
                        else:
                            yield str(p_), probs[k], None
                            k += 1
                    ordered, arrays = [], []

    def topk(self, probs_row, k: int) -> list[tuple[float, str]]:
        """The k best (score, class name) pairs, highest first (ties: lower class index first)."""
        row = np.asarray(probs_row, dtype=np.float64).reshape(-1)
        k = max(1, min(int(k), len(row)))
        order = np.argsort(-row, kind="stable")[:k]
        return [(float(row[i]), self.classes[i]) for i in order]

    @property
    def precision(self) -> str:
        """ "int8" for a quantized ONNX graph, else "fp32"; read from the graph once, when first asked."""
        if not hasattr(self, "_precision"):
            self._precision = onnx_precision(self.path) if self.kind == "onnx" else "fp32"
        return self._precision

    def info(self) -> dict:
        return {
            "backbone": self.backbone,
            "precision": self.precision,
            "classes": list(self.classes),
            "num_classes": len(self.classes),
            "input_size": list(self.preprocess.input_size),
            "preprocess": self.preprocess.to_dict(),
            "kind": self.kind,
            "path": self.path,
            "device": self.device,
        }
