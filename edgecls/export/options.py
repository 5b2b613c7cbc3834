"""ExportOptions: every export setting, its default, its type, its help and its check, in one table.

pytorch2onnx.py's parser is generated from it (edgecls.settings) with Kneron's flag names (`--snapshot`,
`--num_classes`); the library reads the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecls.errors import UserError
from edgecls.export.onnx_export import DEFAULT_OPSET, SUPPORTED_OPSETS
from edgecls.export.prototype_head import DEFAULT_TEMPERATURE
from edgecls.settings import NEGATED, SWITCH, check, parse_size, setting

MODEL, KIND, GRAPH, CHECKS, INT8 = "model (Kneron flags)", "embedding / prototypes", "graph", "checks", "INT8"


@dataclass
class ExportOptions:
    # ---- model (Kneron flags)
    snapshot: str | None = setting(
        None,
        "checkpoint (.pth) from train.py, or a bare state_dict with --backbone (required unless --prototypes "
        "with --pretrained)",
        group=MODEL,
    )
    backbone: str | None = setting(None, "backbone name; read from the checkpoint when omitted", group=MODEL)
    num_classes: int | None = setting(
        None,
        "number of classes; read from the checkpoint when omitted",
        group=MODEL,
        parse=int,
        flags=("--num_classes", "--num-classes"),
    )
    model_def_path: str | None = setting("./models/", "folder of user model definitions (plugins)", group=MODEL)
    save_path: str | None = setting(None, "output .onnx (default: the snapshot path with .onnx)", group=MODEL)
    force: bool = setting(False, "overwrite existing output files", group=MODEL, kind=SWITCH)
    # ---- what the graph computes
    embedding: bool = setting(
        False,
        "export the feature extractor (head stripped): outputs raw pooled features; the host L2-normalises",
        group=KIND,
        kind=SWITCH,
    )
    prototypes: str | None = setting(
        None,
        "export a nearest-prototype classifier: a catalog folder (manifest.json + prototypes.npy) or a support "
        "folder of class folders (DIR/<class>/*.jpg or DIR/train/<class>/)",
        group=KIND,
        metavar="CAT_OR_SUPPORT_DIR",
    )
    autoencoder_full: bool = setting(
        False,
        "a checkpoint of train.py --task autoencoder: export the whole autoencoder (images -> reconstructions in "
        "[0, 1]; its final Sigmoid is not on the kl520 profile); without it such a checkpoint exports its encoder "
        "(the pooled bottleneck, as --embedding)",
        group=KIND,
        kind=SWITCH,
    )
    pretrained: bool = setting(
        False,
        "with --prototypes / --embedding: use --backbone's installed pretrained weights, no --snapshot",
        group=KIND,
        kind=SWITCH,
    )
    temperature: float = setting(
        DEFAULT_TEMPERATURE,
        "prototypes: probabilities are softmax(T * cosine); 1 is plain cosine softmax",
        group=KIND,
        parse=float,
        within="(0, inf)",
    )
    # ---- graph
    opset: int = setting(
        DEFAULT_OPSET,
        "ONNX opset; 13 is the newest NPU toolchains read and the first with per-channel "
        "QuantizeLinear (INT8 --quantize); use 11 for older converters",
        group=GRAPH,
        parse=int,
        choices=SUPPORTED_OPSETS,
    )
    input_size: tuple[int, int] | None = setting(
        None, "H or HxW; default the checkpoint's training size", group=GRAPH, parse=parse_size
    )
    dynamic_batch: bool = setting(False, "dynamic batch axis (NPUs want fixed batch 1)", group=GRAPH, kind=SWITCH)
    softmax: bool = setting(False, "append Softmax so the graph outputs probabilities", group=GRAPH, kind=SWITCH)
    simplify: bool = setting(True, "skip onnxsim/onnxslim", group=GRAPH, kind=NEGATED, flags=("--no-simplify",))
    bn_fusion: bool = setting(
        True,
        "keep BatchNormalization nodes (workaround for compilers that choke on fused names)",
        group=GRAPH,
        kind=NEGATED,
        flags=("--no-bn-fusion",),
    )
    # ---- checks
    profile: str = setting("kl520", "chip profile: kl520, kl720, generic, or a profile .yaml", group=CHECKS)
    verify_dir: str | None = setting(
        None,
        "images to compare ONNX Runtime with PyTorch on (default: the run's val/ images, else generated)",
        group=CHECKS,
    )
    verify_count: int = setting(
        200,
        "at most this many verification images, spread over the folder (at most 32 generated)",
        group=CHECKS,
        parse=int,
        at_least=1,
    )
    task: str | None = setting(None, "the checkpoint's training task (set by the pipeline)", cli=False)
    # ---- INT8
    quantize: str | None = setting(None, "also write an INT8 (QDQ) model", group=INT8, choices=("int8",))
    calib_dir: str | None = setting(None, "calibration images (e.g. DATASET/train)", group=INT8)
    calib_count: int = setting(
        100, "at most this many calibration images, spread over --calib-dir", group=INT8, parse=int, at_least=1
    )
    int8_save_path: str | None = setting(None, "INT8 output (default: SAVE_PATH with .int8.onnx)", group=INT8)

    def check(self) -> None:
        """Every field against its declared rules (a UserError naming the field)."""
        check(self)
        if self.embedding and self.prototypes:
            raise UserError("`embedding` and `prototypes`: choose one (a feature extractor or a prototype classifier)")
        if self.pretrained and not (self.prototypes or self.embedding):
            raise UserError("`pretrained`: only with `prototypes` or `embedding` (a classifier needs its `snapshot`)")
        if self.pretrained and self.snapshot:
            raise UserError("`pretrained` and `snapshot`: choose one source of weights")
        if self.pretrained and not self.backbone:
            raise UserError("`pretrained` needs `backbone` NAME (edgecls models lists those with weights)")
        if not self.snapshot and not self.pretrained:
            hint = " or `backbone` NAME `pretrained`" if self.prototypes or self.embedding else ""
            raise UserError(f"`snapshot` CHECKPOINT.pth is required{hint}")
        if self.pretrained and not self.save_path:
            raise UserError("`pretrained`: there is no checkpoint to name the output after; pass `save_path` FILE.onnx")
        if self.autoencoder_full and (self.prototypes or self.embedding or self.pretrained):
            raise UserError("`autoencoder_full`: for an autoencoder `snapshot`, without `embedding` / `prototypes`")
        if self.autoencoder_full and self.task not in (None, "autoencoder"):
            raise UserError(
                f"`autoencoder_full`: {self.snapshot} is a {self.task} checkpoint, "
                "not one from train.py --task autoencoder"
            )
        if self.softmax and (self.prototypes or self.embedding or self.task == "autoencoder"):
            raise UserError("`softmax`: only for classifier exports; the host tail applies it to prototype scores")

    @property
    def kind(self) -> str:
        if self.prototypes:
            return "prototypes"
        if self.embedding or (self.task == "autoencoder" and not self.autoencoder_full):
            return "embedding"  # an autoencoder's classifier head is untrained: its encoder is what it offers
        return "autoencoder" if self.task == "autoencoder" else "classifier"
