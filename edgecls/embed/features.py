"""Pooled pre-head features, L2-normalised, from a checkpoint, an ONNX file or a pretrained backbone name.

The Embedder is a Predictor whose scores are feature vectors: the same preprocessing, the same threaded
decoding (`predict_paths`), so a .pth and its exported .onnx give the same embedding of an image.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np

from edgecls.data.presets import Preprocess
from edgecls.device import resolve_device
from edgecls.errors import UserError
from edgecls.predict import Predictor, _OnnxRunner, _sniff_kind, _static_hw, check_input_size

EPS = 1e-12


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row stays zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, EPS)


def file_sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def strip_head(model):
    """(a copy of `model` with its last nn.Linear replaced by Identity, the feature width): the head of every
    registered family is its last Linear, so what reaches it is the pooled feature vector."""
    import torch.nn as nn

    model = copy.deepcopy(model)
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise UserError(f"{type(model).__name__}: no Linear head to strip; this backbone cannot give embeddings")
    name, linear = last
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Identity())
    return model.eval(), linear.in_features


class _TorchFeatures:
    def __init__(self, model, device: str):
        import torch

        self.torch = torch
        self.model = model.to(device).eval()
        self.device = device

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            out = self.model(x)
            if isinstance(out, (tuple, list)):
                out = out[0]
        return out.float().reshape(len(x), -1).cpu().numpy()


class _OnnxFeatures(_OnnxRunner):
    """The Predictor's ONNX runner, reading one named output (the pooled features) instead of class scores."""

    def __init__(self, session, output: str, fixed_batch_one: bool, fixed_hw):
        super().__init__(session, True, fixed_batch_one, fixed_hw)
        self.output = output

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.outputs(batch, [self.output])[0]
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)


def head_input(model) -> str:
    """The tensor feeding a classifier graph's last Gemm/MatMul: its pooled features."""
    for node in reversed(list(model.graph.node)):
        if node.op_type in ("Gemm", "MatMul"):
            return node.input[0]
    raise UserError("the ONNX graph has no Gemm/MatMul head; export it with pytorch2onnx.py --embedding")


class Embedder(Predictor):
    """Images -> N x D float32 unit vectors. `identity` names the model (what a catalog records)."""

    def __init__(self, runner, *, dim: int, identity: dict, **kw):
        super().__init__(runner, classes=[], **kw)
        self.dim = int(dim)
        self.identity = identity

    @classmethod
    def load(cls, model: str, *, device="cpu", model_def_path=None, threads: int | None = None) -> Embedder:
        """`model`: an edgecls checkpoint, an ONNX file (classifier or --embedding export), or the name of a
        backbone with installed pretrained weights."""
        p = Path(model)
        device = str(resolve_device(device))
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        if p.is_file():
            if _sniff_kind(p) == "onnx":
                return cls._from_onnx_file(p, device, threads)
            return cls._from_checkpoint(p, device, model_def_path)
        return cls._from_backbone(model, device, model_def_path)

    @classmethod
    def _from_checkpoint(cls, p: Path, device, model_def_path):
        from edgecls.engine.checkpoint import is_edgecls_checkpoint, load_model, load_raw

        obj = load_raw(p)
        if not is_edgecls_checkpoint(obj):
            raise UserError(f"`model` {p}: a bare state_dict; embed with an edgecls checkpoint (best.pth)")
        loaded = load_model(obj, model_def_path=model_def_path, path=p)
        features, dim = strip_head(loaded.model)
        identity = {"kind": "checkpoint", "backbone": loaded.backbone, "sha256": file_sha256(p), "path": str(p)}
        return cls(
            _TorchFeatures(features, device),
            dim=dim,
            identity=identity,
            preprocess=loaded.preprocess,
            backbone=loaded.backbone,
            kind="torch",
            path=str(p),
            device=device,
        )

    @classmethod
    def _from_backbone(cls, name: str, device, model_def_path):
        from edgecls.models import create_model, get_spec, list_models, load_plugins

        load_plugins(model_def_path)
        if name not in list_models():
            raise UserError(
                f"`model` {name}: no such file, and not a registered backbone; pass a checkpoint, an ONNX file "
                "or a backbone name (edgecls models lists them)"
            )
        spec = get_spec(name)
        if not spec.has_pretrained:
            raise UserError(
                f"`model` {name}: no pretrained weights are installed for it; random features make no catalog. "
                f"Use one of {', '.join(n for n in list_models() if get_spec(n).has_pretrained)} or a checkpoint"
            )
        features, dim = strip_head(create_model(name, num_classes=1, pretrained=True))
        return cls(
            _TorchFeatures(features, device),
            dim=dim,
            identity={"kind": "pretrained", "backbone": name, "sha256": f"pretrained:{name}"},
            preprocess=Preprocess(input_size=spec.input_size, preset=spec.preprocess),
            backbone=name,
            kind="torch",
            path=name,
            device=device,
        )

    @classmethod
    def _from_onnx_file(cls, p: Path, device, threads):
        import onnx
        import onnxruntime as ort

        from edgecls.export.metadata import metadata_of, read_metadata

        try:
            graph = onnx.load(str(p))
        except Exception as exc:  # noqa: BLE001 - onnx raises its own untyped errors for bad files
            raise UserError(f"`model` {p}: not a loadable ONNX model ({str(exc).splitlines()[0][:200]})") from None
        props = metadata_of(graph)
        meta = read_metadata(props, str(p))
        kind = props.get("edgecls.kind", "classifier")
        if kind == "embedding":
            output = graph.graph.output[0].name
        elif kind == "classifier":
            output = head_input(graph)
            if output not in {o.name for o in graph.graph.output}:
                graph.graph.output.add().name = output  # ORT infers its type and shape
        else:
            raise UserError(
                f"`model` {p}: a {kind} ONNX file gives scores, not features; embed with its checkpoint, a "
                "classifier export or a pytorch2onnx.py --embedding export"
            )
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        session = ort.InferenceSession(graph.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        fixed = _static_hw(inp.shape)
        check_input_size(p, fixed, meta["preprocess"].input_size)
        fixed_one = isinstance(inp.shape[0], int) and inp.shape[0] == 1
        runner = _OnnxFeatures(session, output, fixed_one, fixed)
        h, w = meta["preprocess"].input_size
        dim = runner(np.zeros((1, 3, h, w), np.float32)).shape[1]
        identity = {
            "kind": "onnx",
            "backbone": meta["backbone"],
            "sha256": file_sha256(p),
            "source_sha256": props.get("edgecls.source_sha256", ""),
            "path": str(p),
        }
        return cls(
            runner,
            dim=dim,
            identity=identity,
            preprocess=meta["preprocess"],
            backbone=meta["backbone"],
            kind="onnx",
            path=str(p),
            device=device,
        )

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x H x W float32 (preprocessed) -> N x D unit vectors."""
        batch = self.checked_batch(batch)
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalize(self._run(batch))

    def embed_paths(self, paths, batch_size: int = 32, workers: int | None = None):
        """Yield (path, unit vector | None, reason | None) per path, in order (Predictor.predict_paths)."""
        yield from self.predict_paths(paths, batch_size=batch_size, workers=workers)


def model_keys(identity: dict) -> set[str]:
    """The hashes that name a model's weights: its own file, and the checkpoint an ONNX file came from."""
    return {v for k in ("sha256", "source_sha256") if (v := identity.get(k))}


def same_model(a: dict, b: dict) -> bool:
    """Do two identities name the same weights (a checkpoint and the ONNX exported from it count as one)?"""
    return bool(model_keys(a) & model_keys(b))


def describe(identity: dict) -> str:
    what = identity.get("path") or identity.get("backbone", "?")
    return f"{identity.get('kind', '?')} {what} ({identity.get('backbone', '?')}, {identity.get('sha256', '')[:12]})"
