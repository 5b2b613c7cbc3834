"""TrainConfig: every training setting, its default, its type, its help and its check, in one table.

train.py's parser is generated from it (edgecls.settings), so the flags, `--help`, `--config` files and
the library agree. The field names are Kneron's flag names with underscores.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

from edgecls.data.cache.policy import DEFAULT_LIMIT as CACHE_LIMIT
from edgecls.data.cache.policy import MODES as CACHE_MODES
from edgecls.data.presets import PRESETS, RESIZE_POLICIES
from edgecls.settings import NEGATED, POSITIONAL, SWITCH, TOGGLE, check, parse_bytes, parse_size, setting


def parse_model_args(text) -> dict:
    """`width=48,depth=4` (or a mapping from a config file) -> builder keyword arguments; numbers and
    true/false are converted."""
    if isinstance(text, dict):
        return dict(text)
    out: dict = {}
    for item in filter(None, (part.strip() for part in str(text).split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"{item!r}: use KEY=VALUE pairs, comma-separated: width=48,depth=4")
        out[key.strip()] = _scalar(value.strip())
    return out


def _scalar(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_lr(text: str) -> float | str:
    """A learning rate, or "auto" for the LR range test."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use a number such as 0.001, or auto") from None


OPTIMIZERS = ("SGD", "ASGD", "ADAM", "ADAMW")
SCHEDULERS = ("slanted-triangular", "onecycle", "cosine", "step", "none")
RECIPES = ("kneron", "finetune", "scratch")
TASKS = ("classify", "autoencoder")
RECON_LOSSES = ("mse", "bce")
AUGMENTS = ("none", "light", "trivial", "randaugment")

MODEL, OPTIM, AUGMENT, STOP, HARDWARE = (
    "model",
    "recipe and optimization",
    "augmentation",
    "stopping and checkpoints",
    "hardware",
)
EPISODIC = "few-shot (episodic) training"

# What `--resume` may change: where things are and how fast they run, never what is trained. Every other
# setting given on resume must equal the run's recorded value.
RESUME_MAY_CHANGE = (
    "data", "epochs", "workers", "gpu", "cudnn_benchmark", "model_def_path", "cache_dir", "cache_limit", "exist_ok",
    "final_eval",
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
        False,
        "start from ImageNet weights: efficientnet-lite0/1/2 from their packages, resnet18/50 and mobilenetv2 "
        "from the torch hub cache ($TORCH_HOME)",
        group=MODEL,
        kind=SWITCH,
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
    dropout: float | None = setting(
        None,
        "dropout before the classifier, for backbones that have one (FP_classifier, mobilenetv2, efficientnet; "
        "default: the backbone's)",
        group=MODEL,
        parse=float,
        within="[0, 1)",
    )
    task: str = setting(
        "classify",
        "what the run learns: classify (labelled class folders) or autoencoder (reconstruction; no labels needed, "
        "a flat folder of images works; backbone conv-autoencoder)",
        group=MODEL,
        choices=TASKS,
    )
    recon_loss: str = setting(
        "mse", "reconstruction loss of --task autoencoder: mse or bce (pixels in [0, 1])", group=MODEL,
        choices=RECON_LOSSES,
    )  # fmt: skip
    # ---- recipe and optimization (None: the recipe's value; see edgecls/engine/recipes.py)
    recipe: str | None = setting(
        None,
        "training recipe: kneron (Kneron's defaults: SGD, lr 1e-3, ...), finetune (LP-FT for pretrained weights) or "
        "scratch; default: finetune with --pretrained or --snapshot, else scratch. A flag given explicitly wins over "
        "the recipe",
        group=OPTIM,
        choices=RECIPES,
    )
    epochs: int = setting(100, "maximum epochs", group=OPTIM, parse=int, at_least=1)
    batch_size: int = setting(64, "images per step (per process under torchrun)", group=OPTIM, parse=int, at_least=1)
    lr: float | str | None = setting(
        None,
        "peak learning rate of the head (>= 0), or auto: run the LR range test (edgecls lr-find) first and use its "
        "suggestion",
        group=OPTIM,
        parse=parse_lr,
        within="[0, inf)",
        special=("auto",),
    )
    optimizer: str | None = setting(None, "optimizer", group=OPTIM, parse=str.upper, choices=OPTIMIZERS)
    momentum: float | None = setting(None, "SGD momentum, in [0, 1)", group=OPTIM, parse=float, within="[0, 1)")
    weight_decay: float | None = setting(None, "weight decay", group=OPTIM, parse=float, within="[0, inf)")
    layer_decay: float | None = setting(
        None,
        "discriminative learning rates: each parameter stage below the head trains at this times the rate of the "
        "stage above it (1: one rate for all)",
        group=OPTIM,
        parse=float,
        within="(0, 1]",
    )
    head_epochs: int | None = setting(
        None,
        "epochs that train only the head before the whole network (LP-FT's linear-probe phase; 0: none)",
        group=OPTIM,
        parse=int,
        at_least=0,
    )
    probe_init: bool | None = setting(
        None,
        "before training, fit the new head by logistic regression on the frozen backbone's features of the "
        "training images (the linear probe of LP-FT)",
        group=OPTIM,
        kind=TOGGLE,
    )
    gradual_unfreeze: bool | None = setting(
        None,
        "unfreeze one parameter stage per epoch from the top (epoch 1 trains the head only)",
        group=OPTIM,
        kind=TOGGLE,
    )
    scheduler: str | None = setting(None, "learning-rate schedule, stepped per batch", group=OPTIM, choices=SCHEDULERS)
    warmup_epochs: float | None = setting(
        None, "linear warmup epochs (fractions allowed)", group=OPTIM, parse=float, at_least=0
    )
    model_ema: bool | None = setting(
        None,
        "keep an exponential moving average of the weights (decay from the step count); validation reports both and "
        "the better one is saved",
        group=OPTIM,
        kind=TOGGLE,
    )
    freeze_bn: bool | None = setting(
        None,
        "BatchNorm layers keep their running statistics while training (eval mode), so training computes what "
        "inference will: for pretrained weights on small data. The BatchNorms of frozen stages always do",
        group=OPTIM,
        kind=TOGGLE,
    )
    bn_recalibrate: int = setting(
        256,
        "after each epoch, recompute the BatchNorm statistics from this many training images (evaluation's "
        "preprocessing) so that they describe the trained weights (not the frozen ones); 0: keep the running averages",
        group=OPTIM,
        parse=int,
        at_least=0,
    )
    loss: str = setting("cross_entropy", "loss function", group=OPTIM, choices=("cross_entropy",))
    label_smoothing: float | None = setting(
        None, "cross-entropy label smoothing", group=OPTIM, parse=float, within="[0, 1)"
    )
    class_weights: str = setting("none", "none | balanced | comma list, one weight per class", group=OPTIM)
    # ---- augmentation
    hflip: float = setting(
        0.5, "horizontal flip probability (0 for digits/text)", group=AUGMENT, parse=float, within="[0, 1]"
    )
    crop_scale: float | None = setting(
        None, "smallest random-resized-crop area (1.0: no crop)", group=AUGMENT, parse=float, within="(0, 1]"
    )
    augment: str | None = setting(
        None,
        "extra augmentation: none, light (colour jitter), trivial (TrivialAugmentWide) or randaugment (RandAugment)",
        group=AUGMENT,
        choices=AUGMENTS,
    )
    random_erasing: float | None = setting(
        None, "probability of erasing a random rectangle of each training image", group=AUGMENT, parse=float,
        within="[0, 1]",
    )  # fmt: skip
    mixup: float = setting(0.0, "mixup alpha (0: off)", group=AUGMENT, parse=float, within="[0, inf)")
    cutmix: float = setting(0.0, "cutmix alpha (0: off)", group=AUGMENT, parse=float, within="[0, inf)")
    # ---- few-shot (episodic) training: edgecls/engine/episodic.py
    episodic: bool = setting(
        False,
        "train the backbone as a prototypical network: each step is an episode of --n-way classes from train/ "
        "(--k-shot support + --query query images each), scored by scaled cosine to the support prototypes; "
        "validation (val top-1) is few-shot accuracy on val/ episodes",
        group=EPISODIC,
        kind=SWITCH,
    )
    n_way: int = setting(5, "classes per episode (--episodic)", group=EPISODIC, parse=int, at_least=2)
    k_shot: int = setting(5, "support images per class and episode (--episodic)", group=EPISODIC, parse=int, at_least=1)
    query: int = setting(15, "query images per class and episode (--episodic)", group=EPISODIC, parse=int, at_least=1)
    episodes_per_epoch: int = setting(
        100, "training episodes (optimizer steps) per epoch (--episodic)", group=EPISODIC, parse=int, at_least=1
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
    topk: int = setting(
        5, "K for the top-K validation accuracy (kept below the class count: top-1 only with 2 classes)", group=STOP,
        parse=int, at_least=1,
    )  # fmt: skip
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
    final_eval: bool = setting(
        True,
        "when training ends, evaluate best.pth on val/ (and test/ when the dataset has one): confusion matrix, "
        "per-class precision/recall/F1 and misclassified-image PNGs plus per-image predictions in the run folder",
        group=STOP,
        kind=TOGGLE,
    )
    tensorboard: bool = setting(
        False, "also write TensorBoard event files to RUN/tensorboard (needs the tensorboard package)", group=STOP,
        kind=SWITCH,
    )  # fmt: skip
    model_kwargs: dict = setting(
        {},
        "keyword arguments for the backbone's builder, e.g. width=48,depth=4 for classic-cnn (`edgecls models` "
        "lists each backbone's)",
        group=MODEL,
        parse=parse_model_args,
        flags=("--model-args",),
        metavar="K=V,...",
    )

    def __post_init__(self):
        if self.input_size is not None:
            self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        if isinstance(self.optimizer, str):
            self.optimizer = self.optimizer.upper()

    def check(self) -> None:
        """Every field against its declared rules (a UserError naming the field)."""
        check(self)

    def builder_kwargs(self) -> dict:
        """Keyword arguments for the backbone's builder: `model_kwargs`, plus `dropout` when given."""
        return {**self.model_kwargs, **({"dropout": self.dropout} if self.dropout is not None else {})}

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["input_size"] is not None:
            d["input_size"] = list(d["input_size"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config recorded by to_dict (args.yaml, a checkpoint); keys of older versions are ignored."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "recipe" not in d:  # recorded before recipes existed: those runs trained with Kneron's defaults
            known["recipe"] = "kneron"
        return cls(**known)
