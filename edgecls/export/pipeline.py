"""The export pipeline: checkpoint -> NPU surgery -> ONNX -> simplify + graph passes -> metadata ->
verify against PyTorch -> chip-profile check -> [INT8]. Each step returns its typed report
(edgecls.export.report); run_export collects them into one ExportResult, whose summary() is the text
pytorch2onnx.py prints."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgecls.engine.checkpoint import LoadedModel, WeightsMismatch, is_edgecls_checkpoint, load_model, load_raw
from edgecls.errors import UserError
from edgecls.export import passes, profiles, quantize, surgery, verify
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
class Images:
    """The verification images, preprocessed, and where they came from."""

    samples: list[verify.Sample]
    inputs: np.ndarray
    source: ImageSource
    bad: list[str]


def run_export(opts: ExportOptions) -> ExportResult:
    opts.check()
    plan = prepare(opts)
    loaded = load_export_model(opts)
    images = verification_images(opts, loaded)
    res = ExportResult(loaded.backbone, len(loaded.classes), tuple(loaded.preprocess.input_size), opts.opset)
    if images.bad:
        res.notes.append(f"{len(images.bad)} unreadable image(s) skipped, e.g. {images.bad[0]}")
    res.surgery = surgery_step(loaded, images)
    proto, res.export = export_step(loaded, opts)
    proto, res.passes = passes_step(proto, opts, res.export.ops)
    res.metadata = metadata_step(proto, loaded, opts)
    res.verify, fp32 = verify_step(proto, loaded, images, opts)
    if not res.verify.passed:
        return res
    res.profile = profile_step(proto, plan)
    if opts.quantize:
        res.int8 = int8_step(proto, loaded, images, plan, fp32, res, opts)
        if plan.calib_bad:
            res.notes.append(f"{len(plan.calib_bad)} unreadable calibration image(s) skipped")
    return res


# ------------------------------------------------------------------------ before any work
def prepare(opts: ExportOptions) -> Plan:
    """Every check that can be made up front, so a bad setting leaves nothing half-written."""
    save_path = Path(opts.save_path) if opts.save_path else default_save_path(opts.snapshot)
    int8_path = Path(opts.int8_save_path) if opts.int8_save_path else save_path.with_name(save_path.stem + ".int8.onnx")
    check_output_paths(opts, save_path, int8_path)
    if opts.quantize and not opts.calib_dir:
        raise UserError("`quantize` int8 needs `calib_dir` DIR (training images, e.g. DATASET/train)")
    if opts.calib_dir and not Path(opts.calib_dir).is_dir():
        raise UserError(f"`calib_dir` {opts.calib_dir}: folder not found")
    if opts.verify_dir and not Path(opts.verify_dir).is_dir():
        raise UserError(f"`verify_dir` {opts.verify_dir}: folder not found")
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
        if same_file(path, Path(opts.snapshot)):
            raise UserError(f"`{name}` {path}: is the `snapshot` checkpoint itself; choose another path")
    for _, path in outputs:
        if path.exists() and not opts.force:
            raise UserError(f"{path}: already exists; pass `force` to overwrite it or choose another `save_path`")


def same_file(a: Path, b: Path) -> bool:
    """Do two paths name one file (after resolving '..', symlinks and, where both exist, hard links)?"""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.normcase(a.resolve()) == os.path.normcase(b.resolve())


def default_save_path(snapshot: str) -> Path:
    return Path(snapshot).with_suffix(".onnx")


def load_export_model(opts: ExportOptions) -> LoadedModel:
    """An edgecls checkpoint (backbone, classes, preprocessing inside), or a bare state_dict with
    `backbone` and `num_classes` (Kneron's flags); `input_size` overrides the stored size."""
    from edgecls.models import load_plugins

    load_plugins(opts.model_def_path)
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


def verification_images(opts: ExportOptions, loaded: LoadedModel) -> Images:
    """`verify_dir`, else the val/ folder the checkpoint records, else generated images."""
    if opts.verify_dir:
        samples, bad = verify.load_samples(opts.verify_dir, loaded.classes, opts.verify_count, setting="verify_dir")
        source = ImageSource("verify_dir", Path(opts.verify_dir))
    elif (val := verify.dataset_val_dir(loaded.checkpoint)) is not None:
        samples, bad = verify.load_samples(val, loaded.classes, opts.verify_count)
        source = ImageSource("val", val)
    else:
        size = tuple(loaded.preprocess.input_size)
        samples, bad, source = verify.generated_samples(min(opts.verify_count, 32), size), [], ImageSource("generated")
    return Images(samples, verify.batch_tensor(samples, loaded.preprocess), source, bad)


# ------------------------------------------------------------------------------ the steps
def surgery_step(loaded: LoadedModel, images: Images) -> SurgeryStep:
    """1. NPU surgery in place; when it changes the function, top-1 before and after on the images."""
    original = copy.deepcopy(loaded.model)
    report = surgery.npu_surgery(loaded.model)
    if not report.changes_function:
        return SurgeryStep(report)
    before = verify.accuracy(verify.torch_probs(original, images.inputs), images.samples)
    after = verify.accuracy(verify.torch_probs(loaded.model, images.inputs), images.samples)
    return SurgeryStep(report, (before, after), images.source)


def export_step(loaded: LoadedModel, opts: ExportOptions) -> tuple[onnx.ModelProto, ExportStep]:
    """2. torch.onnx.export with every node named."""
    size = tuple(loaded.preprocess.input_size)
    proto = export_onnx(
        loaded.model,
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


def metadata_step(proto: onnx.ModelProto, loaded: LoadedModel, opts: ExportOptions) -> MetadataStep:
    """4. classes, preprocessing and backbone into the file (the Predictor needs nothing else)."""
    prep = loaded.preprocess
    write_metadata(proto, classes=loaded.classes, preprocess=prep, backbone=loaded.backbone, softmax=opts.softmax)
    return MetadataStep(len(loaded.classes), prep.preset, tuple(prep.input_size), prep.resize)


def verify_step(proto, loaded: LoadedModel, images: Images, opts: ExportOptions) -> tuple[VerifyStep, np.ndarray]:
    """5. onnx.checker, then ONNX Runtime against PyTorch on the images; also returns the FP32 ONNX scores."""
    verify.full_check(proto)
    reference = verify.torch_probs(loaded.model, images.inputs)
    fp32 = verify.onnx_probs(verify.session(proto), images.inputs, graph_softmax=opts.softmax)
    return VerifyStep(verify.compare(reference, fp32, images.samples), images.source), fp32


def profile_step(proto: onnx.ModelProto, plan: Plan) -> ProfileStep:
    """6. the chip-profile check, then the FP32 file (written even when the check fails)."""
    check = profiles.check_profile(proto, plan.profile)
    return ProfileStep(check, plan.save_path, save_onnx_atomic(proto, plan.save_path))


def int8_step(proto, loaded: LoadedModel, images: Images, plan: Plan, fp32, res: ExportResult, opts) -> Int8Step:
    """7. INT8 (QDQ) from the calibration images, compared with the FP32 ONNX file, then written."""
    int8 = quantize.quantize_int8(proto, verify.batch_tensor(plan.calib, loaded.preprocess))
    passes.drop_int32_zero_points(int8)
    q_probs = verify.onnx_probs(verify.session(int8), images.inputs, graph_softmax=opts.softmax)
    comparison = verify.compare(fp32, q_probs, images.samples, allow_ties=False)
    size = save_onnx_atomic(int8, plan.int8_path)
    fp32_top1 = res.verify.comparison.onnx_top1
    return Int8Step(comparison, fp32_top1, res.profile.bytes, plan.int8_path, size, len(plan.calib), opts.calib_dir)


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
