"""Chip profiles (data files under export/profiles/) and the pass/fail check of an ONNX graph against one.

A profile lists the operators the chip's compiler runs, the opsets it reads, whether the batch
must be fixed at 1 and the model-size limit. The check names each offending node and the fix; a node that
belongs to a transformer layer (LayerNorm, attention, GELU, token handling: see node_origins) is reported
as that layer, since the fix is the layer's, not the operator's.
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
    "LayerNormalization": "LayerNorm (one op at opset 17+): export at opset 13 decomposes it, which this chip "
    "may not run either; use a BatchNorm backbone",
    "Transpose": "a permute() / transpose() in the model definition: keep the NCHW layout up to the pooling",
    "Split": "torch.chunk / split / unbind in the model definition: use separate layers",
    "Identity": "keep simplification on (removes Identity)",
    "QuantizeLinear": "check the FP32 file: this chip quantizes with its own toolchain",
    "DequantizeLinear": "check the FP32 file: this chip quantizes with its own toolchain",
}
DEFAULT_FIX = "replace the layer that produces it in the model definition with a supported one"

# What to do about a node of a transformer layer (node_origins), whatever its operator.
_NO_FIX = (
    "no fix on this chip; run the transformer where one runs (a kl730-class NPU, or a CPU / GPU runtime: "
    "--profile generic), or train a CNN backbone for this chip"
)
ORIGIN_FIXES = {
    "LayerNorm": "LayerNorm (ReduceMean, Sub, Pow, Sqrt, Div at opset 13; LayerNormalization at 17): " + _NO_FIX,
    "attention": "self-attention (MatMul of two activations, Softmax over the tokens): " + _NO_FIX,
    "GELU": "a transformer MLP's GELU (NPU surgery keeps it: ReLU would change what a transformer computes): "
    + _NO_FIX,
    "tokens": "a transformer's token handling (Linear layers on the token sequence as MatMul, splitting q/k/v "
    "and heads, picking the class token): " + _NO_FIX,
}
# A Sigmoid whose output is the graph's output: an autoencoder's reconstruction, not Swish.
OUTPUT_SIGMOID_FIX = (
    "the Sigmoid on the model's output (an autoencoder's reconstruction in [0, 1]): export the encoder (leave out "
    "--autoencoder-full), or run the whole autoencoder where Sigmoid runs (--profile generic)"
)
# Operators that only move or pick tokens, in a transformer's graph.
_TOKEN_OPS = {"MatMul", "Transpose", "Split", "Squeeze", "Unsqueeze", "Gather", "Slice", "Reshape", "Concat"}


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
    unsupported: dict[str, int] = field(default_factory=dict)  # op type -> nodes of it the chip does not run

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.rows)

    def verdict(self) -> str:
        """One line: PASS, or what failed (the unsupported operators, then the other checks)."""
        if self.passed:
            return f"profile {self.profile.name}: PASS"
        parts = []
        if self.unsupported:
            count, ops = sum(self.unsupported.values()), ", ".join(sorted(self.unsupported))
            parts.append(f"{count} node(s) of {len(self.unsupported)} operator(s) the chip does not run ({ops})")
        parts += [row.check for row in self.rows if not row.ok and row.check != "operator"]
        return f"profile {self.profile.name}: FAILED: {'; '.join(parts)}"

    def table(self) -> str:
        lines = [f"profile {self.profile.name} ({self.profile.chip}): {'PASS' if self.passed else 'FAIL'}"]
        for i, row in enumerate(self.rows):
            lines.append(f"  [{'pass' if row.ok else 'FAIL'}] {row.check:<14} {row.detail}")
            last_of_its_fix = i + 1 == len(self.rows) or self.rows[i + 1].fix != row.fix
            if not row.ok and row.fix and last_of_its_fix:  # one fix line under rows that share it
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


def _layernorm_nodes(nodes: list, producer: dict, consumers: dict) -> set[str]:
    """Names of the nodes of LayerNorms: LayerNormalization, or the opset-13 chain the TorchScript exporter
    writes: m = ReduceMean(x); d = Sub(x, m); Div(d, Sqrt(Add(ReduceMean(Pow(d, 2)), eps)))."""
    found = {n.name for n in nodes if n.op_type == "LayerNormalization"}
    for sub in (n for n in nodes if n.op_type == "Sub" and len(n.input) == 2):
        mean = producer.get(sub.input[1])
        if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0]:
            continue
        chain, tensor = [mean, sub], sub.output[0]
        for op in ("Pow", "ReduceMean", "Add", "Sqrt", "Div"):
            step = next((c for c in consumers.get(tensor, []) if c.op_type == op), None)
            if step is None:
                break
            chain.append(step)
            tensor = step.output[0]
        if chain[-1].op_type == "Div" and chain[-1].input[0] == sub.output[0]:
            found.update(n.name for n in chain)
    return found


def node_origins(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> the transformer layer it belongs to ("LayerNorm", "attention", "GELU", "tokens"); nodes of
    other graphs (a CNN's) are absent. Attention: a MatMul of two activations, and a Softmax feeding one."""
    nodes = list(model.graph.node)
    weights = {i.name for i in model.graph.initializer}
    producer = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    origins = dict.fromkeys(_layernorm_nodes(nodes, producer, consumers), "LayerNorm")
    for node in nodes:
        if node.op_type == "MatMul" and not any(i in weights for i in node.input):
            origins[node.name] = "attention"
        elif node.op_type == "Softmax" and any(c.op_type == "MatMul" for c in consumers.get(node.output[0], [])):
            origins[node.name] = "attention"
    if not origins:
        return {}  # not a transformer: every operator keeps its own fix
    for node in nodes:
        if node.op_type == "Erf":
            origins[node.name] = "GELU"
            before = producer.get(node.input[0])
            if before is not None and before.op_type == "Div":  # GELU(x) = x * 0.5 * (1 + erf(x / sqrt 2))
                origins[before.name] = "GELU"
        elif node.op_type in _TOKEN_OPS and node.name not in origins:
            origins[node.name] = "tokens"
    return origins


def _operator_rows(model: onnx.ModelProto, profile: Profile, result: ProfileResult) -> None:
    """One failing row per (layer, operator), naming its nodes; a pass row when every node is supported."""
    bad_nodes = [n for n in model.graph.node if n.op_type not in profile.ops]
    if not bad_nodes:
        result.rows.append(CheckRow("operators", True, f"all {len(model.graph.node)} nodes use supported ops"))
        return
    origins = node_origins(model)
    outputs = {o.name for o in model.graph.output}
    for node in bad_nodes:
        if node.op_type == "Sigmoid" and node.output[0] in outputs:
            origins[node.name] = "output"
    groups: dict[tuple[str, str], list[str]] = {}
    for node in bad_nodes:
        origin = origins.get(node.name, "")
        groups.setdefault((origin, node.op_type), []).append(node.name or "(unnamed)")
        result.unsupported[node.op_type] = result.unsupported.get(node.op_type, 0) + 1
    layer_order = ["", "output", *ORIGIN_FIXES]
    for (origin, op), names in sorted(groups.items(), key=lambda kv: (layer_order.index(kv[0][0]), kv[0][1])):
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        what = f" ({origin})" if origin else ""
        fix = {"": FIXES.get(op, DEFAULT_FIX), "output": OUTPUT_SIGMOID_FIX}.get(origin) or ORIGIN_FIXES[origin]
        result.rows.append(CheckRow("operator", False, f"{op} not supported{what}: {len(names)} node(s) {shown}", fix))


def check_profile(model: onnx.ModelProto, profile: Profile) -> ProfileResult:
    result = ProfileResult(profile)
    _operator_rows(model, profile, result)
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
