"""Chip profiles (data files under export/profiles/) and the pass/fail check of an ONNX graph against one.

A profile lists the operators the chip's compiler runs, the opsets it reads, whether the batch
must be fixed at 1 and the model-size limit. The check names each offending node and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import yaml

from edgecls.errors import UserError

PROFILE_DIR = Path(__file__).with_name("profiles")

# What to do about an operator a profile rejects.
FIXES = {
    "Sigmoid": "Swish / Squeeze-and-Excitation left in the graph: keep NPU surgery on (it replaces them by ReLU)",
    "HardSigmoid": "Hardswish / Hardsigmoid: NPU surgery replaces them by ReLU",
    "Erf": "GELU: NPU surgery replaces nn.GELU by ReLU; replace custom GELU code in the model definition",
    "Softmax": "drop --softmax: the host applies softmax to the logits (edgecls does this for you)",
    "Shape": "a dynamic shape chain: export without --dynamic-batch and keep simplification on",
    "Gather": "a dynamic shape chain or indexing: export without --dynamic-batch and keep simplification on",
    "Unsqueeze": "a shape chain: keep simplification on, or use torch.flatten(x, 1) before the classifier",
    "Squeeze": "use torch.flatten(x, 1) instead of squeeze() before the classifier",
    "ReduceMean": "use nn.AdaptiveAvgPool2d(1) for global pooling (exports as GlobalAveragePool)",
    "MatMul": "use nn.Linear on a flattened 2-D input (exports as Gemm)",
    "Dropout": "export in eval mode (edgecls removes Dropout)",
    "Identity": "keep simplification on (removes Identity)",
    "QuantizeLinear": "check the FP32 file: this chip quantizes with its own toolchain",
    "DequantizeLinear": "check the FP32 file: this chip quantizes with its own toolchain",
}
DEFAULT_FIX = "replace the layer that produces it in the model definition with a supported one"


@dataclass
class Profile:
    name: str
    chip: str
    source: str
    ops: set[str]
    opsets: list[int]
    fixed_batch: bool
    max_model_bytes: int | None


@dataclass
class CheckRow:
    check: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class ProfileResult:
    profile: Profile
    rows: list[CheckRow] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.rows)

    def table(self) -> str:
        lines = [f"profile {self.profile.name} ({self.profile.chip}): {'PASS' if self.passed else 'FAIL'}"]
        for row in self.rows:
            lines.append(f"  [{'pass' if row.ok else 'FAIL'}] {row.check:<14} {row.detail}")
            if not row.ok and row.fix:
                lines.append(f"         fix: {row.fix}")
        return "\n".join(lines)


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile name (kl520, kl720, generic) or a path to a profile YAML of the same shape."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(
            f"`profile` {name_or_path}: unknown; choose one of {', '.join(list_profiles())} or a profile .yaml file"
        )
    try:
        data = yaml.safe_load(path.read_text())
        return Profile(
            name=str(data["name"]),
            chip=str(data.get("chip", data["name"])),
            source=str(data.get("source", "")),
            ops=set(data["ops"]),
            opsets=[int(v) for v in data.get("opsets", [11, 12, 13])],
            fixed_batch=bool(data.get("fixed_batch", True)),
            max_model_bytes=int(data["max_model_bytes"]) if data.get("max_model_bytes") else None,
        )
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"`profile` {path}: malformed profile ({exc!r}); needs name, ops, opsets, fixed_batch"
        ) from None


def npu_model_bytes(model: onnx.ModelProto) -> int:
    """Estimated size on the chip: 1 byte per weight (NPUs store 8-bit weights), 4 per bias/other 1-D value."""
    total = 0
    for tensor in model.graph.initializer:
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        total += count if len(tensor.dims) >= 2 else 4 * count
    return total


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_profile(model: onnx.ModelProto, profile: Profile) -> ProfileResult:
    result = ProfileResult(profile)
    bad_nodes = [n for n in model.graph.node if n.op_type not in profile.ops]
    if bad_nodes:
        by_op: dict[str, list[str]] = {}
        for node in bad_nodes:
            by_op.setdefault(node.op_type, []).append(node.name or "(unnamed)")
        for op, names in sorted(by_op.items()):
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            result.rows.append(
                CheckRow("operator", False, f"{op} not supported: node(s) {shown}", FIXES.get(op, DEFAULT_FIX))
            )
    else:
        result.rows.append(CheckRow("operators", True, f"all {len(model.graph.node)} nodes use supported ops"))
    opset = _opset(model)
    result.rows.append(
        CheckRow(
            "opset",
            opset in profile.opsets,
            f"opset {opset} (chip reads {profile.opsets})",
            f"re-export with --opset {max(profile.opsets)}",
        )
    )
    dims = model.graph.input[0].type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
    shape = "x".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)
    if profile.fixed_batch:
        result.rows.append(
            CheckRow("input", batch == 1, f"input {shape} (needs fixed batch 1)", "export without --dynamic-batch")
        )
    else:
        result.rows.append(CheckRow("input", True, f"input {shape}"))
    size = npu_model_bytes(model)
    if profile.max_model_bytes:
        result.rows.append(
            CheckRow(
                "model size",
                size <= profile.max_model_bytes,
                f"~{size:,} bytes at 8-bit weights (limit {profile.max_model_bytes:,})",
                "use a smaller backbone (mobilenetv2, resnet18, efficientnet-b0) or a larger chip",
            )
        )
    else:
        result.rows.append(CheckRow("model size", True, f"~{size:,} bytes at 8-bit weights (no limit)"))
    return result
