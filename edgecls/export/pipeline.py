"""The export pipeline: checkpoint -> NPU surgery -> ONNX -> simplify + graph passes -> metadata ->
verify against PyTorch -> chip-profile check -> [INT8]. One summary reports every step."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch.nn as nn

from edgecls.data.presets import Preprocess
from edgecls.engine.checkpoint import extract_state_dict, is_edgecls_checkpoint, load_raw
from edgecls.errors import UserError
from edgecls.export import passes, profiles, quantize, surgery, verify
from edgecls.export.metadata import write_metadata
from edgecls.export.onnx_export import DEFAULT_OPSET, export_onnx, op_counts, save_onnx_atomic


@dataclass
class ExportOptions:
    snapshot: str
    save_path: str | None = None
    backbone: str | None = None
    num_classes: int | None = None
    model_def_path: str | None = None
    opset: int = DEFAULT_OPSET
    input_size: tuple[int, int] | None = None
    dynamic_batch: bool = False
    profile: str = "kl520"
    verify_dir: str | None = None
    verify_count: int = 200
    quantize: str | None = None  # "int8"
    calib_dir: str | None = None
    calib_count: int = 100
    int8_save_path: str | None = None
    softmax: bool = False
    simplify: bool = True
    bn_fusion: bool = True
    force: bool = False


@dataclass
class ExportResult:
    onnx_path: Path | None = None
    int8_path: Path | None = None
    verified: bool = False
    profile_passed: bool = False
    lines: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.verified and self.profile_passed

    def log(self, text: str = "") -> None:
        self.lines.append(text)

    def summary(self) -> str:
        return "\n".join(self.lines)


@dataclass
class LoadedModel:
    model: nn.Module
    backbone: str
    classes: list[str]
    preprocess: Preprocess
    raw: dict


def load_model(opts: ExportOptions) -> LoadedModel:
    """An edgecls checkpoint (backbone, classes, preprocessing inside), or a bare state_dict with
    --backbone and --num_classes (Kneron's flags)."""
    from edgecls.models import create_model, get_spec, load_plugins

    load_plugins(opts.model_def_path)
    raw = load_raw(opts.snapshot)
    if is_edgecls_checkpoint(raw):
        backbone = raw["model"]["name"]
        if opts.backbone and opts.backbone != backbone:
            raise UserError(
                f"--backbone {opts.backbone}: the checkpoint holds a {backbone}; omit --backbone or pass {backbone}"
            )
        classes = [str(c) for c in raw["classes"]]
        if opts.num_classes and opts.num_classes != len(classes):
            raise UserError(
                f"--num_classes {opts.num_classes}: the checkpoint has {len(classes)} classes; omit --num_classes"
            )
        kwargs = dict(raw["model"].get("kwargs", {}))
        preprocess = Preprocess.from_dict(raw["preprocess"])
    else:
        if not opts.backbone or not opts.num_classes:
            raise UserError(
                f"{opts.snapshot}: a bare state_dict carries no backbone or classes; pass --backbone and --num_classes"
            )
        backbone, classes, kwargs = opts.backbone, [str(i) for i in range(opts.num_classes)], {}
        spec = get_spec(backbone)
        preprocess = Preprocess(input_size=spec.input_size, preset=spec.preprocess)
    model = create_model(backbone, num_classes=len(classes), **kwargs)
    state = extract_state_dict(raw, opts.snapshot)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(
            f"{opts.snapshot}: weights do not fit {backbone} with {len(classes)} classes "
            f"({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc})"
        ) from None
    if opts.input_size:
        preprocess.input_size = tuple(opts.input_size)
    return LoadedModel(model.eval(), backbone, classes, preprocess, raw if isinstance(raw, dict) else {})


def _counts_line(before, after) -> list[str]:
    ops = sorted(set(before) | set(after), key=lambda op: (-before.get(op, 0), op))
    rows = [f"    {op:<22} {before.get(op, 0):>5} -> {after.get(op, 0):>5}" for op in ops]
    return [
        f"    {'op':<22} {'export':>5}    {'final':>5}",
        *rows,
        f"    {'total':<22} {sum(before.values()):>5} -> {sum(after.values()):>5}",
    ]


def _pct(value: float | None) -> str:
    return "n/a (no labelled images)" if value is None else f"{100 * value:.2f}%"


def _same_file(a: Path, b: Path) -> bool:
    """Do two paths name one file (after resolving '..', symlinks and, where both exist, hard links)?"""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.normcase(a.resolve()) == os.path.normcase(b.resolve())


def default_save_path(snapshot: str) -> Path:
    return Path(snapshot).with_suffix(".onnx")


def run_export(opts: ExportOptions) -> ExportResult:
    res = ExportResult()
    save_path = Path(opts.save_path) if opts.save_path else default_save_path(opts.snapshot)
    int8_path = Path(opts.int8_save_path) if opts.int8_save_path else save_path.with_name(save_path.stem + ".int8.onnx")
    if opts.quantize not in (None, "int8"):
        raise UserError(f"--quantize {opts.quantize}: only int8 is supported")
    if opts.quantize and _same_file(save_path, int8_path):
        raise UserError(
            f"--int8-save-path {int8_path}: the same file as --save-path; choose another path for the "
            "INT8 model (default: SAVE_PATH with .int8.onnx)"
        )
    if opts.int8_save_path and not opts.quantize:
        raise UserError("--int8-save-path: only used with --quantize int8; add --quantize int8 or drop it")
    for flag, path in [("--save-path", save_path)] + ([("--int8-save-path", int8_path)] if opts.quantize else []):
        if _same_file(path, Path(opts.snapshot)):
            raise UserError(f"{flag} {path}: is the --snapshot checkpoint itself; choose another path")
    for path in [save_path] + ([int8_path] if opts.quantize else []):
        if path.exists() and not opts.force:
            raise UserError(f"{path}: already exists; pass --force to overwrite it or choose another --save-path")
    if opts.quantize and not opts.calib_dir:
        raise UserError("--quantize int8 needs --calib-dir DIR (training images, e.g. DATASET/train)")
    if opts.calib_dir and not Path(opts.calib_dir).is_dir():
        raise UserError(f"--calib-dir {opts.calib_dir}: folder not found")
    if opts.verify_dir and not Path(opts.verify_dir).is_dir():
        raise UserError(f"--verify-dir {opts.verify_dir}: folder not found")
    profile = profiles.load_profile(opts.profile)
    calib, calib_bad = [], []
    if opts.quantize:  # read before anything is written: a bad folder must not leave a half-done export
        calib, calib_bad = verify.load_samples(opts.calib_dir, [], opts.calib_count, flag="--calib-dir")

    loaded = load_model(opts)
    h, w = loaded.preprocess.input_size
    res.log(f"edgecls export: {loaded.backbone}, {len(loaded.classes)} classes, input 1x3x{h}x{w}, opset {opts.opset}")

    # Images for verification (and labelled accuracy).
    notes: list[str] = []
    if opts.verify_dir:
        samples, bad = verify.load_samples(opts.verify_dir, loaded.classes, opts.verify_count, flag="--verify-dir")
        source = f"--verify-dir {opts.verify_dir}"
    elif (val := verify.dataset_val_dir(opts.snapshot, loaded.raw)) is not None:
        samples, bad = verify.load_samples(val, loaded.classes, opts.verify_count)
        source = f"training val images {val}"
    else:
        samples, bad = verify.generated_samples(min(opts.verify_count, 32), (h, w)), []
        source = "generated images (pass --verify-dir for real ones)"
    if bad:
        notes.append(f"{len(bad)} unreadable image(s) skipped, e.g. {bad[0]}")
    inputs = verify.batch_tensor(samples, loaded.preprocess)

    # 1. NPU surgery.
    original = copy.deepcopy(loaded.model)
    report = surgery.npu_surgery(loaded.model)
    res.log(f"1. NPU surgery: {report.summary()}")
    if report.changes_function:
        res.log(
            "   WARNING: this changes the function the checkpoint was trained as; fine-tune the NPU form "
            "(train with the NPU-form backbone) for the best accuracy"
        )
        before = verify.accuracy(verify.torch_probs(original, inputs), samples)
        after = verify.accuracy(verify.torch_probs(loaded.model, inputs), samples)
        res.log(f"   top-1 before surgery {_pct(before)}, after {_pct(after)} on {source}")
        res.figures["surgery_top1"] = [before, after]
    del original

    # 2. Export.
    proto = export_onnx(
        loaded.model,
        (h, w),
        opset=opts.opset,
        dynamic_batch=opts.dynamic_batch,
        softmax=opts.softmax,
        fuse_bn=opts.bn_fusion,
    )
    exported_counts = op_counts(proto)
    res.log(
        f"2. exported {'dynamic' if opts.dynamic_batch else 'fixed 1'}x3x{h}x{w}, "
        f"{sum(exported_counts.values())} nodes, every node named"
    )

    # 3. Simplify + graph passes.
    proto, pass_report = passes.optimize(proto, simplify_graph=opts.simplify, fuse_bn=opts.bn_fusion)
    final_counts = op_counts(proto)
    changes = ", ".join(f"{k} {v}" for k, v in pass_report.changes.items())
    res.log(
        f"3. simplify: {pass_report.simplifier if opts.simplify else 'off (--no-simplify)'}"
        f"{' (' + pass_report.simplifier_note + ')' if pass_report.simplifier_note else ''}; passes: {changes}"
        f"{'; BN fusion off (--no-bn-fusion)' if not opts.bn_fusion else ''}"
    )
    res.lines += _counts_line(exported_counts, final_counts)
    res.figures["nodes"] = [sum(exported_counts.values()), sum(final_counts.values())]

    # 4. Metadata.
    write_metadata(
        proto, classes=loaded.classes, preprocess=loaded.preprocess, backbone=loaded.backbone, softmax=opts.softmax
    )
    res.log(
        f"4. metadata: {len(loaded.classes)} classes, preprocess {loaded.preprocess.preset} "
        f"{h}x{w} {loaded.preprocess.resize} (inference needs only the .onnx file)"
    )

    # 5. Verify.
    verify.full_check(proto)
    reference = verify.torch_probs(loaded.model, inputs)
    fp32 = verify.onnx_probs(verify.session(proto), inputs, graph_softmax=opts.softmax)
    cmp = verify.compare(reference, fp32, samples)
    res.verified = cmp.passed()
    res.figures["fp32"] = {
        "images": cmp.count,
        "max_diff": cmp.max_diff,
        "agreement": cmp.agreement,
        "torch_top1": cmp.reference_top1,
        "onnx_top1": cmp.onnx_top1,
    }
    res.log(
        f"5. verify: onnx.checker full check ok; ONNX Runtime vs PyTorch on {cmp.count} {source}: "
        f"max |diff| {cmp.max_diff:.2e} (limit {verify.FP32_MAX_DIFF:.0e}), top-1 agreement "
        f"{cmp.agree}/{cmp.count}, top-1 torch {_pct(cmp.reference_top1)} onnx {_pct(cmp.onnx_top1)}"
        f" -> {'PASS' if res.verified else 'FAIL'}"
    )
    if not res.verified:
        res.log(f"   worst image: {cmp.worst}; the ONNX file was NOT written")
        res.lines += [f"   note: {n}" for n in notes]
        return res

    # 6. Profile check.
    check = profiles.check_profile(proto, profile)
    res.profile_passed = check.passed
    res.log("6. " + check.table())
    size = save_onnx_atomic(proto, save_path)
    res.onnx_path = save_path
    res.figures["fp32_bytes"] = size
    res.log(f"   wrote {save_path} ({size:,} bytes)")

    # 7. INT8.
    if opts.quantize:
        int8 = quantize.quantize_int8(proto, verify.batch_tensor(calib, loaded.preprocess))
        passes.drop_int32_zero_points(int8)
        q_probs = verify.onnx_probs(verify.session(int8), inputs, graph_softmax=opts.softmax)
        qcmp = verify.compare(fp32, q_probs, samples, allow_ties=False)
        int8_size = save_onnx_atomic(int8, int8_path)
        res.int8_path = int8_path
        res.figures["int8"] = {
            "bytes": int8_size,
            "size_ratio": int8_size / size,
            "fp32_top1": cmp.onnx_top1,
            "int8_top1": qcmp.onnx_top1,
            "agreement_with_fp32": qcmp.agreement,
            "max_diff": qcmp.max_diff,
            "calib_images": len(calib),
        }
        drop = (
            ""
            if cmp.onnx_top1 is None or qcmp.onnx_top1 is None
            else f" (drop {100 * (cmp.onnx_top1 - qcmp.onnx_top1):+.2f} points)".replace("+-", "-")
        )
        res.log(
            f"7. INT8 (QDQ, per-channel weights, percentile calibration + bias correction, {len(calib)} calibration "
            f"images from {opts.calib_dir}): "
            f"top-1 FP32 {_pct(cmp.onnx_top1)} vs INT8 {_pct(qcmp.onnx_top1)}{drop}; "
            f"agreement with FP32 {qcmp.agree}/{qcmp.count}; size {size:,} -> {int8_size:,} bytes "
            f"({int8_size / size:.2f}x)"
        )
        res.log(f"   wrote {int8_path}")
        if calib_bad:
            notes.append(f"{len(calib_bad)} unreadable calibration image(s) skipped")
    res.lines += [f"note: {n}" for n in notes]
    res.log(f"result: {'OK' if res.ok else 'FAILED (see the profile table above)'}")
    return res


def probe(path: str | os.PathLike) -> dict:
    """Input shape, op counts and size of a written .onnx file (for benchmarks and tests)."""
    model = onnx.load_model(str(path))
    return {
        "nodes": len(model.graph.node),
        "ops": dict(op_counts(model)),
        "bytes": Path(path).stat().st_size,
        "input": [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim],
    }


__all__ = ["ExportOptions", "ExportResult", "run_export", "load_model", "probe"]
