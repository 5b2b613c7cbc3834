"""TrainConfig: every training setting, its default, its type, its help and its check, in one table.

train.py's parser is generated from it (edgecls.settings), so the flags, `--help`, `--config` files and
the library agree. The field names are Kneron's flag names with underscores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgecls.data.cache.policy import MODES as CACHE_MODES
from edgecls.data.cache.store import DEFAULT_LIMIT as CACHE_LIMIT
from edgecls.data.presets import PRESETS, RESIZE_POLICIES
from edgecls.settings import NEGATED, POSITIONAL, SWITCH, TOGGLE, check, parse_bytes, parse_size, setting

OPTIMIZERS = ("SGD", "ASGD", "ADAM", "ADAMW")
SCHEDULERS = ("cosine", "step", "none")

MODEL, OPTIM, STOP, HARDWARE = "model", "optimization", "stopping and checkpoints", "hardware"

# What `--resume` may change: where things are and how fast they run, never what is trained. Every other
# setting given on resume must equal the run's recorded value.
RESUME_MAY_CHANGE = (
    "data", "epochs", "workers", "gpu", "cudnn_benchmark", "model_def_path", "cache_dir", "cache_limit", "exist_ok"
)  # fmt: skip


@dataclass
class TrainConfig:
    data: str | None = setting(
        None,
        "folder with train/ and val/, one subfolder per class; or a shard folder from `edgecls data pack`",
        kind=POSITIONAL,
        metavar="DATASET_DIR",
    )
    # ---- model
    backbone: str = setting("resnet18", "registered backbone name (see `edgecls models`)", group=MODEL)
    model_name: str | None = setting(
        None, "run name recorded in args.yaml and every checkpoint (default: the backbone)", group=MODEL
    )
    model_def_path: str | None = setting("./models/", "folder of plugin .py files that register backbones", group=MODEL)
    pretrained: bool = setting(
        False, "start from installed ImageNet weights (efficientnet-lite0)", group=MODEL, kind=SWITCH
    )
    snapshot: str | None = setting(
        None, "initial weights: an edgecls checkpoint or a state_dict file", group=MODEL, metavar="PTH"
    )
    freeze_backbone: int = setting(0, "1: train only the classifier head", group=MODEL, choices=(0, 1), parse=int)
    input_size: tuple[int, int] | None = setting(
        None, "model input, e.g. 224 or 56x32 (default: the backbone's)", group=MODEL, parse=parse_size, metavar="HxW"
    )
    preprocess: str | None = setting(
        None, "normalization preset (default: the backbone's)", group=MODEL, choices=tuple(sorted(PRESETS))
    )
    resize: str = setting("squash", "eval resize: squash to HxW or center_crop", group=MODEL, choices=RESIZE_POLICIES)
    # ---- optimization
    epochs: int = setting(100, "maximum epochs", group=OPTIM, parse=int, at_least=1)
    batch_size: int = setting(64, "images per step (per process under torchrun)", group=OPTIM, parse=int, at_least=1)
    lr: float = setting(1e-3, "learning rate (>= 0)", group=OPTIM, parse=float, within="[0, inf)")
    optimizer: str = setting("SGD", "optimizer", group=OPTIM, parse=str.upper, choices=OPTIMIZERS)
    momentum: float = setting(0.9, "SGD momentum, in [0, 1)", group=OPTIM, parse=float, within="[0, 1)")
    weight_decay: float = setting(1e-4, "weight decay", group=OPTIM, parse=float, within="[0, inf)")
    scheduler: str = setting("cosine", "learning-rate schedule (per step)", group=OPTIM, choices=SCHEDULERS)
    warmup_epochs: int = setting(0, "linear warmup epochs", group=OPTIM, parse=int, at_least=0)
    loss: str = setting("cross_entropy", "loss function", group=OPTIM, choices=("cross_entropy",))
    label_smoothing: float = setting(0.0, "cross-entropy label smoothing", group=OPTIM, parse=float, within="[0, 1)")
    class_weights: str = setting("none", "none | balanced | comma list, one weight per class", group=OPTIM)
    hflip: float = setting(
        0.5, "horizontal flip probability (0 for digits/text)", group=OPTIM, parse=float, within="[0, 1]"
    )
    crop_scale: float = setting(
        0.6, "smallest random-resized-crop area (1.0: no crop)", group=OPTIM, parse=float, within="(0, 1]"
    )
    # ---- stopping and checkpoints
    early_stop: int = setting(1, "1: stop when val top-1 stalls", group=STOP, choices=(0, 1), parse=int)
    patience: int = setting(
        7, "epochs without val top-1 improvement before stopping", group=STOP, parse=int, at_least=1
    )
    snapshot_path: str | None = setting(None, "run folder (default: snapshots/<date-time>)", group=STOP)
    exist_ok: bool = setting(
        False, "allow writing into a --snapshot-path that already has checkpoints", group=STOP, kind=SWITCH
    )
    topk: int = setting(5, "K for the top-K validation accuracy", group=STOP, parse=int, at_least=1)
    # ---- hardware
    gpu: int = setting(-1, "CUDA device index; -1 for the CPU", group=HARDWARE, parse=int)
    workers: int = setting(
        2,
        "DataLoader worker processes; also the image-cache decode processes (for the gpu cache: its "
        "file-reading processes, at least 2, at most 8)",
        group=HARDWARE,
        parse=int,
        at_least=0,
    )
    cache_images: str = setting(
        "auto",
        "decode images once and keep uint8 copies (ram; disk: a memory-mapped file in --cache-dir reused by later "
        "runs; gpu: in GPU memory, JPEGs decoded there with nvjpeg, kept in --cache-dir for the next run); ram and "
        "gpu start from what --cache-dir already holds for these images; auto: gpu on CUDA if under 35%% of free "
        "GPU memory, else ram if under a quarter of RAM (disk under torchrun), else disk, else none (PIL decode "
        "every epoch; a shard folder is then streamed shard by shard)",
        group=HARDWARE,
        choices=CACHE_MODES,
    )
    cache_dir: str | None = setting(
        None,
        "the persistent decoded-image cache: one entry per image list + decoding, reused by every later run on the "
        "same images (default: $EDGECLS_CACHE_DIR/images, i.e. ~/.cache/edgecls/images)",
        group=HARDWARE,
        metavar="DIR",
    )
    cache_limit: int = setting(
        CACHE_LIMIT,
        "most bytes --cache-dir may hold, e.g. 20GB; the least recently used entries are removed to make room "
        "for a new one (default: 50GB)",
        group=HARDWARE,
        parse=parse_bytes,
        metavar="SIZE",
    )
    amp: bool = setting(
        False, "mixed precision (bf16 autocast; fp16 + scaler on GPUs without bf16)", group=HARDWARE, kind=SWITCH
    )
    compile: bool = setting(False, "torch.compile the model", group=HARDWARE, kind=SWITCH)
    channels_last: bool = setting(True, "keep NCHW on GPU", group=HARDWARE, kind=NEGATED, flags=("--no-channels-last",))
    cudnn_benchmark: bool = setting(
        False,
        "let cudnn autotune its convolution algorithms on GPU (default: off). Measured on an H100 (bf16, batch "
        "256): it added 3 s to resnet18's first epoch and 19 s to mobilenetv2's, and changed the later epochs "
        "by at most 1.3%%",
        group=HARDWARE,
        kind=TOGGLE,
    )
    seed: int = setting(0, "random seed (data order, augmentation, init)", group=HARDWARE, parse=int)
    # ---- library only
    model_kwargs: dict = setting({}, "keyword arguments for the backbone's builder", cli=False)

    def __post_init__(self):
        if self.input_size is not None:
            self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        if isinstance(self.optimizer, str):
            self.optimizer = self.optimizer.upper()

    def check(self) -> None:
        """Every field against its declared rules (a UserError naming the field)."""
        check(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["input_size"] is not None:
            d["input_size"] = list(d["input_size"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config recorded by to_dict (args.yaml, a checkpoint); keys of older versions are ignored."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)
