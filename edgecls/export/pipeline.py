"""The export pipeline: checkpoint -> NPU surgery -> ONNX -> simplify + graph passes -> metadata ->
verify against PyTorch -> chip-profile check -> [INT8]. Each step returns its typed report
(edgecls.export.report); run_export collects them into one ExportResult, whose summary() is the text
pytorch2onnx.py prints.

Three kinds of graph (ExportOptions.kind): the classifier; `embedding`, the feature extractor (head stripped,
raw pooled features: the host L2-normalises); `prototypes`, the feature extractor plus the prototype head
(edgecls.export.prototype_head), whose prototypes come from a catalog or a support folder."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch.nn as nn

from edgecls.data.layout import class_folders, walk_paths
from edgecls.engine.checkpoint import LoadedModel, WeightsMismatch, is_edgecls_checkpoint, load_model, load_raw
from edgecls.errors import UserError
from edgecls.export import passes, profiles, prototype_head, quantize, surgery, verify
from edgecls.export.metadata import write_metadata
from edgecls.export.onnx_export import export_onnx, op_counts, save_onnx_atomic
from edgecls.export.options import ExportOptions
from edgecls.export.report import (
    ExportResult,
    ExportStep,
    ImageSource,
    Int8Step,
    MetadataStep,
    PassesStep,
    ProfileStep,
    SurgeryStep,
    VerifyStep,
)


@dataclass
class Plan:
    """What run_export settled before touching anything: output paths, the profile, calibration images."""

    save_path: Path
    int8_path: Path
    profile: profiles.Profile
    calib: list[verify.Sample]
    calib_bad: list[str]


@dataclass
class Head:
    """What the exported graph computes past the backbone: its kind, output classes and (prototypes) the
    C x D unit prototypes with their temperature; `net` is the torch module exported."""

    kind: str
    classes: list[str]
    source_sha256: str
    net: object = None
    prototypes: np.ndarray | None = None
    temperature: float | None = None
    support: Path | None = None  # the support folder the prototypes came from (also the default verify images)


@dataclass
class Images:
    """The verification images, preprocessed, and where they came from."""

    samples: list[verify.Sample]
    inputs: np.ndarray
    source: ImageSource
    bad: list[str]


def run_export(opts: ExportOptions) -> ExportResult:
    opts.check()
    loaded = load_export_model(opts)
    opts = replace(opts, task=(loaded.checkpoint or {}).get("task"))
    opts.check()  # now that the task is known (autoencoder_full)
    plan = prepare(opts)
    head = export_head(opts, loaded)
    images = verification_images(opts, loaded, head)
    res = ExportResult(loaded.backbone, len(head.classes), tuple(loaded.preprocess.input_size), opts.opset)
    res.kind = head.kind
    if images.bad:
        res.notes.append(f"{len(images.bad)} unreadable image(s) skipped, e.g. {images.bad[0]}")
    res.surgery = surgery_step(loaded, images, head)
    head_step(opts, loaded, head, res, images)
    proto, res.export = export_step(loaded, opts, head)
    if head.kind == "prototypes":
        prototype_head.add_prototype_head(proto, head.prototypes)
    proto, res.passes = passes_step(proto, opts, res.export.ops)
    res.metadata = metadata_step(proto, loaded, opts, head)
    res.verify, fp32 = verify_step(proto, loaded, images, opts, head)
    if not res.verify.passed:
        return res
    res.profile = profile_step(proto, plan)
    if opts.quantize:
        res.int8 = int8_step(proto, loaded, images, plan, fp32, res, opts, head)
        if plan.calib_bad:
            res.notes.append(f"{len(plan.calib_bad)} unreadable calibration image(s) skipped")
    return res


# ------------------------------------------------------------------------ before any work
def prepare(opts: ExportOptions) -> Plan:
    """Every check that can be made up front, so a bad setting leaves nothing half-written."""
    save_path = Path(opts.save_path) if opts.save_path else default_save_path(opts.snapshot, opts.kind)
    int8_path = Path(opts.int8_save_path) if opts.int8_save_path else save_path.with_name(save_path.stem + ".int8.onnx")
    check_output_paths(opts, save_path, int8_path)
    if opts.quantize and not opts.calib_dir:
        raise UserError("`quantize` int8 needs `calib_dir` DIR (training images, e.g. DATASET/train)")
    if opts.calib_dir and not Path(opts.calib_dir).is_dir():
        raise UserError(f"`calib_dir` {opts.calib_dir}: folder not found")
    if opts.verify_dir and not Path(opts.verify_dir).is_dir():
        raise UserError(f"`verify_dir` {opts.verify_dir}: folder not found")
    if opts.prototypes:
        prototype_source(opts.prototypes)
    profile = profiles.load_profile(opts.profile)
    calib, calib_bad = [], []
    if opts.quantize:  # read before anything is written: a bad folder must not leave a half-done export
        calib, calib_bad = verify.load_samples(opts.calib_dir, [], opts.calib_count, setting="calib_dir")
    return Plan(save_path, int8_path, profile, calib, calib_bad)


def check_output_paths(opts: ExportOptions, save_path: Path, int8_path: Path) -> None:
    """Neither output is the checkpoint or the other output; neither exists unless `force`."""
    if opts.quantize and same_file(save_path, int8_path):
        raise UserError(
            f"`int8_save_path` {int8_path}: the same file as `save_path`; choose another path for the "
            "INT8 model (default: SAVE_PATH with .int8.onnx)"
        )
    if opts.int8_save_path and not opts.quantize:
        raise UserError("`int8_save_path`: only used with `quantize` int8; add `quantize` int8 or drop it")
    outputs = [("save_path", save_path)] + ([("int8_save_path", int8_path)] if opts.quantize else [])
    for name, path in outputs:
        if opts.snapshot and same_file(path, Path(opts.snapshot)):
            raise UserError(f"`{name}` {path}: is the `snapshot` checkpoint itself; choose another path")
    for _, path in outputs:
        if path.exists() and not opts.force:
            raise UserError(f"{path}: already exists; pass `force` to overwrite it or choose another `save_path`")


def same_file(a: Path, b: Path) -> bool:
    """Do two paths name one file (after resolving '..', symlinks and, where both exist, hard links)?"""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.normcase(a.resolve()) == os.path.normcase(b.resolve())


def default_save_path(snapshot: str, kind: str = "classifier") -> Path:
    """best.pth -> best.onnx; embedding / prototype exports get best.embedding.onnx / best.prototypes.onnx."""
    return Path(snapshot).with_suffix(".onnx" if kind == "classifier" else f".{kind}.onnx")


def prototype_source(folder: str) -> tuple[str, Path]:
    """("catalog", CAT) for CAT/manifest.json, ("support", root of the class folders) for SUPPORT/<class>/ or
    SUPPORT/train/<class>/; else a UserError."""
    p = Path(folder)
    if not p.is_dir():
        raise UserError(f"`prototypes` {p}: folder not found; pass a catalog folder or a folder of class folders")
    if (p / "manifest.json").is_file():
        return "catalog", p
    root = p / "train" if (p / "train").is_dir() else p
    if not any(walk_paths(root / c, images_only=True) for c in class_folders(root)):
        raise UserError(
            f"`prototypes` {p}: neither a catalog (manifest.json) nor a support folder of class folders with "
            f"images ({p}/<class>/*.jpg or {p}/train/<class>/*.jpg)"
        )
    return "support", root


def load_export_model(opts: ExportOptions) -> LoadedModel:
    """An edgecls checkpoint (backbone, classes, preprocessing inside), or a bare state_dict with
    `backbone` and `num_classes` (Kneron's flags); `input_size` overrides the stored size."""
    from edgecls.models import load_plugins

    load_plugins(opts.model_def_path)
    if opts.pretrained:
        return load_pretrained(opts)
    raw = load_raw(opts.snapshot)
    if is_edgecls_checkpoint(raw):
        backbone, count = raw["model"]["name"], len(raw["classes"])
        if opts.backbone and opts.backbone != backbone:
            raise UserError(
                f"`backbone` {opts.backbone}: the checkpoint holds a {backbone}; omit `backbone` or pass {backbone}"
            )
        if opts.num_classes and opts.num_classes != count:
            raise UserError(f"`num_classes` {opts.num_classes}: the checkpoint has {count} classes; omit `num_classes`")
    elif not opts.backbone or not opts.num_classes:
        raise UserError(
            f"{opts.snapshot}: a bare state_dict carries no backbone or classes; pass `backbone` and `num_classes`"
        )
    else:
        backbone, count = opts.backbone, opts.num_classes
    classes = [str(i) for i in range(count)]
    try:
        loaded = load_model(raw, backbone=backbone, classes=classes, model_def_path=opts.model_def_path)
    except WeightsMismatch as exc:
        detail = f"{opts.snapshot}: weights do not fit {backbone} with {count} classes ({exc.detail})"
        raise UserError(detail) from None
    if opts.input_size:
        loaded.preprocess.input_size = tuple(opts.input_size)
    return loaded


def load_pretrained(opts: ExportOptions) -> LoadedModel:
    """`backbone` with its installed pretrained weights (a 1-class head, stripped before export)."""
    from edgecls.data.presets import Preprocess
    from edgecls.models import create_model, get_spec, list_models

    name = opts.backbone
    if name not in list_models():
        raise UserError(f"`backbone` {name}: not a registered backbone (edgecls models lists them)")
    spec = get_spec(name)
    if not spec.has_pretrained:
        with_weights = ", ".join(n for n in list_models() if get_spec(n).has_pretrained)
        raise UserError(f"`backbone` {name}: no pretrained weights are installed for it; use one of {with_weights}")
    model = create_model(name, num_classes=1, pretrained=True).eval()
    prep = Preprocess(input_size=tuple(opts.input_size or spec.input_size), preset=spec.preprocess)
    return LoadedModel(model, name, ["0"], prep, None)


def export_head(opts: ExportOptions, loaded: LoadedModel) -> Head:
    """The kind, output classes and model identity; a catalog's prototypes are read (and its model checked)
    here, before any work. Support-folder prototypes are computed after surgery (head_step)."""
    from edgecls.embed.features import describe, file_sha256, same_model

    sha = f"pretrained:{opts.backbone}" if opts.pretrained else file_sha256(opts.snapshot)
    if opts.kind == "classifier":
        return Head("classifier", list(loaded.classes), sha)
    if opts.kind in ("embedding", "autoencoder"):
        return Head(opts.kind, [], sha)
    form, folder = prototype_source(opts.prototypes)
    if form == "support":
        return Head("prototypes", [], sha, temperature=opts.temperature, support=folder)
    from edgecls.embed.prototypes import read_catalog_prototypes

    products, protos, manifest = read_catalog_prototypes(folder)
    model = manifest.get("model") or {}
    if not same_model(model, {"sha256": sha}):
        source = opts.snapshot or f"pretrained {opts.backbone}"
        raise UserError(
            f"`prototypes` {folder}: the catalog was built with {describe(model)}, not {source}; export with that "
            "model, or rebuild the catalog with this one"
        )
    return Head("prototypes", products, sha, prototypes=protos, temperature=opts.temperature)


def verification_images(opts: ExportOptions, loaded: LoadedModel, head: Head) -> Images:
    """`verify_dir`, else the support folder (prototypes), else the val/ folder the checkpoint records, else
    generated images. Images in folders named after an output class are labelled."""
    if opts.verify_dir:
        samples, bad = verify.load_samples(opts.verify_dir, head.classes, opts.verify_count, setting="verify_dir")
        source = ImageSource("verify_dir", Path(opts.verify_dir))
    elif head.support is not None:
        names = class_folders(head.support)  # the prototype classes, once computed
        samples, bad = verify.load_samples(head.support, names, opts.verify_count)
        source = ImageSource("support", head.support)
    elif (val := verify.dataset_val_dir(loaded.checkpoint)) is not None:
        samples, bad = verify.load_samples(val, head.classes, opts.verify_count)
        source = ImageSource("val", val)
    else:
        size = tuple(loaded.preprocess.input_size)
        samples, bad, source = verify.generated_samples(min(opts.verify_count, 32), size), [], ImageSource("generated")
    return Images(samples, verify.batch_tensor(samples, loaded.preprocess), source, bad)


# ------------------------------------------------------------------------------ the steps
def surgery_step(loaded: LoadedModel, images: Images, head: Head) -> SurgeryStep:
    """1. NPU surgery in place; when it changes a classifier's function, top-1 before and after on the images."""
    original = copy.deepcopy(loaded.model) if head.kind == "classifier" else None
    report = surgery.npu_surgery(loaded.model)
    if not report.changes_function or original is None:
        return SurgeryStep(report)
    before = verify.accuracy(verify.torch_probs(original, images.inputs), images.samples)
    after = verify.accuracy(verify.torch_probs(loaded.model, images.inputs), images.samples)
    return SurgeryStep(report, (before, after), images.source)


def head_step(opts: ExportOptions, loaded: LoadedModel, head: Head, res: ExportResult, images: Images) -> None:
    """1b. embedding / prototypes: strip the head (after surgery, so the features are the chip's); a support
    folder is embedded with these very features and its class means become the prototypes."""
    if head.kind == "classifier":
        head.net = loaded.model
        return
    if head.kind == "autoencoder":
        head.net = Reconstruction(loaded.model).eval()
        return
    from edgecls.embed.features import Embedder, _TorchFeatures, strip_head

    head.net, dim = strip_head(loaded.model)
    res.dim = dim
    if head.support is None:
        if head.prototypes is not None and head.prototypes.shape[1] != dim:
            raise UserError(
                f"`prototypes` {opts.prototypes}: {head.prototypes.shape[1]}-d prototypes for {dim}-d features; "
                "rebuild the catalog with this model"
            )
        return
    from edgecls.embed.embed import embed_images
    from edgecls.embed.prototypes import compute_prototypes
    from edgecls.embed.store import label_of

    paths = [str(p) for p in walk_paths(head.support, images_only=True) if label_of(str(p), head.support)]
    embedder = Embedder(
        _TorchFeatures(head.net, "cpu"),
        dim=dim,
        identity={"kind": "export", "backbone": loaded.backbone, "sha256": head.source_sha256},
        preprocess=loaded.preprocess,
        backbone=loaded.backbone,
        kind="torch",
        path=str(opts.snapshot or opts.backbone),
    )
    failed: list = []
    emb = embed_images(embedder, paths, root=head.support, failed=failed)
    head.classes, head.prototypes = compute_prototypes(emb.vectors, emb.labels)
    res.classes = len(head.classes)
    if images.source.kind != "generated":  # label the verification images by the prototype classes, now known
        index = {c: i for i, c in enumerate(head.classes)}
        for sample in images.samples:
            sample.label = index.get(Path(sample.name).parent.name)
    res.notes.append(
        f"prototypes: {len(head.classes)} classes from {len(emb.paths)} support images in {head.support}"
        + (f" ({len(failed)} unreadable skipped)" if failed else "")
    )


class Reconstruction(nn.Module):
    """The whole autoencoder as one module: images -> reconstructions (pixels in [0, 1])."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.reconstruct(x)


def export_step(loaded: LoadedModel, opts: ExportOptions, head: Head) -> tuple[onnx.ModelProto, ExportStep]:
    """2. torch.onnx.export with every node named."""
    size = tuple(loaded.preprocess.input_size)
    proto = export_onnx(
        head.net,
        size,
        opset=opts.opset,
        dynamic_batch=opts.dynamic_batch,
        softmax=opts.softmax,
        fuse_bn=opts.bn_fusion,
    )
    return proto, ExportStep(opts.dynamic_batch, size, dict(op_counts(proto)))


def passes_step(proto: onnx.ModelProto, opts: ExportOptions, exported_ops: dict) -> tuple[onnx.ModelProto, PassesStep]:
    """3. simplify + graph passes; the op counts before and after."""
    proto, report = passes.optimize(proto, simplify_graph=opts.simplify, fuse_bn=opts.bn_fusion)
    return proto, PassesStep(report, opts.simplify, opts.bn_fusion, dict(exported_ops), dict(op_counts(proto)))


def metadata_step(proto: onnx.ModelProto, loaded: LoadedModel, opts: ExportOptions, head: Head) -> MetadataStep:
    """4. kind, classes, preprocessing, backbone and source checkpoint into the file (the Predictor needs
    nothing else)."""
    prep = loaded.preprocess
    write_metadata(
        proto,
        classes=head.classes,
        preprocess=prep,
        backbone=loaded.backbone,
        softmax=opts.softmax,
        kind=head.kind,
        source_sha256=head.source_sha256,
        temperature=head.temperature,
    )
    return MetadataStep(len(head.classes), prep.preset, tuple(prep.input_size), prep.resize, head.kind)


def verify_step(
    proto, loaded: LoadedModel, images: Images, opts: ExportOptions, head: Head
) -> tuple[VerifyStep, np.ndarray]:
    """5. onnx.checker, then ONNX Runtime against PyTorch on the images; also returns the FP32 ONNX outputs.

    classifier: probabilities; embedding (and a whole autoencoder's reconstructions): per-image cosine of the
    outputs (>= verify.MIN_COSINE);
    prototypes: softmax(T * cosine) from the torch features vs the ONNX file through the Predictor's tail."""
    verify.full_check(proto)
    if head.kind in ("embedding", "autoencoder"):
        reference = verify.torch_features(head.net, images.inputs)
        fp32 = verify.onnx_features(verify.session(proto), images.inputs)
        return VerifyStep(verify.compare_cosine(reference, fp32, images.samples), images.source, "cosine"), fp32
    if head.kind == "prototypes":
        feats = verify.torch_features(head.net, images.inputs)
        reference = prototype_head.reference_probs(feats, head.prototypes, head.temperature)
        fp32 = verify.prototype_probs(verify.session(proto), images.inputs, head.temperature)
        return VerifyStep(verify.compare(reference, fp32, images.samples, allow_ties=False), images.source), fp32
    reference = verify.torch_probs(loaded.model, images.inputs)
    fp32 = verify.onnx_probs(verify.session(proto), images.inputs, graph_softmax=opts.softmax)
    return VerifyStep(verify.compare(reference, fp32, images.samples), images.source), fp32


def profile_step(proto: onnx.ModelProto, plan: Plan) -> ProfileStep:
    """6. the chip-profile check, then the FP32 file (written even when the check fails)."""
    check = profiles.check_profile(proto, plan.profile)
    return ProfileStep(check, plan.save_path, save_onnx_atomic(proto, plan.save_path))


def int8_step(
    proto, loaded: LoadedModel, images: Images, plan: Plan, fp32, res: ExportResult, opts, head: Head
) -> Int8Step:
    """7. INT8 (QDQ) from the calibration images, compared with the FP32 ONNX file, then written."""
    int8 = quantize.quantize_int8(proto, verify.batch_tensor(plan.calib, loaded.preprocess))
    passes.drop_int32_zero_points(int8)
    sess = verify.session(int8)
    if head.kind in ("embedding", "autoencoder"):
        q_feats = verify.onnx_features(sess, images.inputs)
        comparison = verify.compare_cosine(fp32, q_feats, images.samples, minimum=verify.INT8_MIN_COSINE)
    else:
        if head.kind == "prototypes":
            q_probs = verify.prototype_probs(sess, images.inputs, head.temperature)
        else:
            q_probs = verify.onnx_probs(sess, images.inputs, graph_softmax=opts.softmax)
        comparison = verify.compare(fp32, q_probs, images.samples, allow_ties=False)
    size = save_onnx_atomic(int8, plan.int8_path)
    fp32_top1 = res.verify.comparison.onnx_top1
    return Int8Step(
        comparison, fp32_top1, res.profile.bytes, plan.int8_path, size, len(plan.calib), opts.calib_dir, head.kind
    )


def probe(path: str | os.PathLike) -> dict:
    """Input shape, op counts and size of a written .onnx file (for benchmarks and tests)."""
    model = onnx.load_model(str(path))
    return {
        "nodes": len(model.graph.node),
        "ops": dict(op_counts(model)),
        "bytes": Path(path).stat().st_size,
        "input": [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim],
    }


__all__ = ["ExportOptions", "ExportResult", "run_export", "load_export_model", "probe"]
