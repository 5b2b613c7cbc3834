"""What each export step did, as typed reports, and the one text that pytorch2onnx.py prints from them.

The pipeline (edgecls.export.pipeline) fills an ExportResult step by step; `render` turns it into the
numbered summary, so the steps compute and this module only words what they found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgecls.export.passes import PassReport
from edgecls.export.profiles import ProfileResult
from edgecls.export.surgery import SurgeryReport
from edgecls.export.verify import FP32_MAX_DIFF, Comparison


@dataclass
class ImageSource:
    """Where the verification images came from: `verify_dir`, the checkpoint's val/ folder, or generated."""

    kind: str  # "verify_dir" | "support" | "val" | "generated"
    folder: Path | None = None

    def text(self) -> str:
        if self.kind == "verify_dir":
            return f"--verify-dir {self.folder}"
        if self.kind == "val":
            return f"training val images {self.folder}"
        if self.kind == "support":
            return f"support images {self.folder}"
        return "generated images (pass --verify-dir for real ones)"


@dataclass
class SurgeryStep:
    surgery: SurgeryReport
    top1: tuple[float | None, float | None] | None = None  # before, after: measured when it changes the function
    source: ImageSource | None = None


@dataclass
class ExportStep:
    dynamic_batch: bool
    input_size: tuple[int, int]
    ops: dict[str, int]  # op type -> count, as exported

    @property
    def nodes(self) -> int:
        return sum(self.ops.values())


@dataclass
class PassesStep:
    passes: PassReport
    simplify: bool
    bn_fusion: bool
    exported_ops: dict[str, int]
    final_ops: dict[str, int]


@dataclass
class MetadataStep:
    classes: int
    preset: str
    input_size: tuple[int, int]
    resize: str
    kind: str = "classifier"


@dataclass
class VerifyStep:
    comparison: Comparison
    source: ImageSource
    measure: str = "prob"  # "prob": probabilities compared; "cosine": features compared by cosine

    @property
    def passed(self) -> bool:
        return self.comparison.passed()


@dataclass
class ProfileStep:
    check: ProfileResult
    path: Path
    bytes: int


@dataclass
class Int8Step:
    comparison: Comparison  # INT8 against FP32 ONNX
    fp32_top1: float | None
    fp32_bytes: int
    path: Path
    bytes: int
    calib_images: int
    calib_dir: str
    kind: str = "classifier"


@dataclass
class ExportResult:
    backbone: str = ""
    classes: int = 0
    input_size: tuple[int, int] = (0, 0)
    opset: int = 0
    kind: str = "classifier"
    dim: int = 0  # feature width (embedding / prototypes)
    surgery: SurgeryStep | None = None
    export: ExportStep | None = None
    passes: PassesStep | None = None
    metadata: MetadataStep | None = None
    verify: VerifyStep | None = None
    profile: ProfileStep | None = None
    int8: Int8Step | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return self.verify is not None and self.verify.passed

    @property
    def profile_passed(self) -> bool:
        return self.profile is not None and self.profile.check.passed

    @property
    def ok(self) -> bool:
        return self.verified and self.profile_passed

    @property
    def onnx_path(self) -> Path | None:
        return self.profile.path if self.profile else None

    @property
    def int8_path(self) -> Path | None:
        return self.int8.path if self.int8 else None

    @property
    def figures(self) -> dict:
        """The measured numbers, for benchmarks and tests."""
        return figures(self)

    def summary(self) -> str:
        return render(self)


def figures(res: ExportResult) -> dict:
    out: dict = {}
    if res.surgery and res.surgery.top1 is not None:
        out["surgery_top1"] = list(res.surgery.top1)
    if res.passes:
        out["nodes"] = [sum(res.passes.exported_ops.values()), sum(res.passes.final_ops.values())]
    if res.verify:
        c = res.verify.comparison
        out["fp32"] = {"images": c.count, "max_diff": c.max_diff, "agreement": c.agreement}
        out["fp32"].update(torch_top1=c.reference_top1, onnx_top1=c.onnx_top1)
        if res.verify.measure == "cosine":
            out["fp32"]["min_cosine"] = 1 - c.max_diff
    if res.profile:
        out["fp32_bytes"] = res.profile.bytes
    if res.int8:
        q = res.int8
        out["int8"] = {"bytes": q.bytes, "size_ratio": q.bytes / q.fp32_bytes, "fp32_top1": q.fp32_top1}
        out["int8"].update(int8_top1=q.comparison.onnx_top1, agreement_with_fp32=q.comparison.agreement)
        out["int8"].update(max_diff=q.comparison.max_diff, calib_images=q.calib_images)
        if res.kind in ("embedding", "autoencoder"):
            out["int8"]["min_cosine"] = 1 - q.comparison.max_diff
    return out


# ----------------------------------------------------------------------------- the text
def pct(value: float | None) -> str:
    return "n/a (no labelled images)" if value is None else f"{100 * value:.2f}%"


def render(res: ExportResult) -> str:
    """The numbered summary: one block per step that ran, then the notes and the verdict."""
    h, w = res.input_size
    what = {
        "classifier": f"{res.classes} classes",
        "embedding": f"embedding ({res.dim}-d features)",
        "autoencoder": "whole autoencoder (images -> reconstructions)",
        "prototypes": f"prototypes ({res.classes} classes, {res.dim}-d features)",
    }[res.kind]
    lines = [f"edgecls export: {res.backbone}, {what}, input 1x3x{h}x{w}, opset {res.opset}"]
    for step, words in (
        (res.surgery, surgery_lines),
        (res.export, export_lines),
        (res.passes, passes_lines),
        (res.metadata, metadata_lines),
        (res.verify, verify_lines),
    ):
        if step is not None:
            lines += words(step)
    if res.verify is not None and not res.verify.passed:
        lines.append(f"   worst image: {res.verify.comparison.worst}; the ONNX file was NOT written")
        return "\n".join(lines + [f"   note: {n}" for n in res.notes])
    if res.profile is not None:
        lines += profile_lines(res.profile)
    if res.int8 is not None:
        lines += int8_lines(res.int8)
    lines += [f"note: {n}" for n in res.notes]
    if res.ok:
        lines.append("result: OK")
    else:
        failed = res.profile.check.verdict() if res.profile is not None else "see above"
        lines.append(f"result: FAILED ({failed}; the table above names the nodes and the fixes)")
    return "\n".join(lines)


def surgery_lines(step: SurgeryStep) -> list[str]:
    lines = [f"1. NPU surgery: {step.surgery.summary()}"]
    if step.surgery.changes_function:
        lines.append(
            "   WARNING: this changes the function the checkpoint was trained as; fine-tune the NPU form "
            "(train with the NPU-form backbone) for the best accuracy"
        )
        if step.top1 is None:
            lines.append("   (top-1 before/after is measured for classifier exports only)")
        else:
            before, after = step.top1
            lines.append(f"   top-1 before surgery {pct(before)}, after {pct(after)} on {step.source.text()}")
    return lines


def export_lines(step: ExportStep) -> list[str]:
    h, w = step.input_size
    batch = "dynamic" if step.dynamic_batch else "fixed 1"
    return [f"2. exported {batch}x3x{h}x{w}, {step.nodes} nodes, every node named"]


def passes_lines(step: PassesStep) -> list[str]:
    report = step.passes
    changes = ", ".join(f"{k} {v}" for k, v in report.changes.items())
    lines = [
        f"3. simplify: {report.simplifier if step.simplify else 'off (--no-simplify)'}"
        f"{' (' + report.simplifier_note + ')' if report.simplifier_note else ''}; passes: {changes}"
        f"{'; BN fusion off (--no-bn-fusion)' if not step.bn_fusion else ''}"
    ]
    return lines + op_count_lines(step.exported_ops, step.final_ops)


def op_count_lines(before: dict[str, int], after: dict[str, int]) -> list[str]:
    ops = sorted(set(before) | set(after), key=lambda op: (-before.get(op, 0), op))
    rows = [f"    {op:<22} {before.get(op, 0):>5} -> {after.get(op, 0):>5}" for op in ops]
    return [
        f"    {'op':<22} {'export':>5}    {'final':>5}",
        *rows,
        f"    {'total':<22} {sum(before.values()):>5} -> {sum(after.values()):>5}",
    ]


def metadata_lines(step: MetadataStep) -> list[str]:
    h, w = step.input_size
    return [
        f"4. metadata: kind {step.kind}, {step.classes} classes, preprocess {step.preset} "
        f"{h}x{w} {step.resize} (inference needs only the .onnx file)"
    ]


def verify_lines(step: VerifyStep) -> list[str]:
    c = step.comparison
    if step.measure == "cosine":
        return [
            f"5. verify: onnx.checker full check ok; ONNX Runtime vs PyTorch features on {c.count} "
            f"{step.source.text()}: lowest cosine {1 - c.max_diff:.8f} (limit {1 - FP32_MAX_DIFF:.4f}), "
            f"{c.agree}/{c.count} images at or above -> {'PASS' if step.passed else 'FAIL'}"
        ]
    return [
        f"5. verify: onnx.checker full check ok; ONNX Runtime vs PyTorch on {c.count} {step.source.text()}: "
        f"max |diff| {c.max_diff:.2e} (limit {FP32_MAX_DIFF:.0e}), top-1 agreement "
        f"{c.agree}/{c.count}, top-1 torch {pct(c.reference_top1)} onnx {pct(c.onnx_top1)}"
        f" -> {'PASS' if step.passed else 'FAIL'}"
    ]


def profile_lines(step: ProfileStep) -> list[str]:
    return ["6. " + step.check.table(), f"   wrote {step.path} ({step.bytes:,} bytes)"]


def int8_lines(step: Int8Step) -> list[str]:
    q, fp32_top1 = step.comparison, step.fp32_top1
    if step.kind in ("embedding", "autoencoder"):
        return [
            f"7. INT8 (QDQ, {step.calib_images} calibration images from {step.calib_dir}): outputs vs FP32 "
            f"lowest cosine {1 - q.max_diff:.4f}, {q.agree}/{q.count} images >= 0.99; size {step.fp32_bytes:,} "
            f"-> {step.bytes:,} bytes ({step.bytes / step.fp32_bytes:.2f}x)",
            f"   wrote {step.path}",
        ]
    drop = (
        ""
        if fp32_top1 is None or q.onnx_top1 is None
        else f" (drop {100 * (fp32_top1 - q.onnx_top1):+.2f} points)".replace("+-", "-")
    )
    return [
        f"7. INT8 (QDQ, per-channel weights, percentile calibration + bias correction, {step.calib_images} "
        f"calibration images from {step.calib_dir}): "
        f"top-1 FP32 {pct(fp32_top1)} vs INT8 {pct(q.onnx_top1)}{drop}; "
        f"agreement with FP32 {q.agree}/{q.count}; size {step.fp32_bytes:,} -> {step.bytes:,} bytes "
        f"({step.bytes / step.fp32_bytes:.2f}x)",
        f"   wrote {step.path}",
    ]
