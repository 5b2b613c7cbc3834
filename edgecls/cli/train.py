"""`train.py DATASET_DIR`: Kneron's flags and defaults, plus resume, seed, presets, AMP, config."""

from __future__ import annotations

import argparse

from edgecls.cli.common import (
    DefaultsHelpFormatter,
    add_config_flag,
    given_dests,
    parse_size,
    parse_with_config,
    require_at_least,
    require_in,
    run_cli,
)
from edgecls.data.presets import PRESETS, RESIZE_POLICIES
from edgecls.engine.trainer import OPTIMIZERS, SCHEDULERS, TrainConfig


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="train.py",
        description="Train an image classifier on DATASET_DIR/train/<class>/ and validate on DATASET_DIR/val/<class>/.",
        formatter_class=DefaultsHelpFormatter,
        epilog="Distributed: torchrun --nproc-per-node N train.py ... (gloo on CPU, NCCL with --gpu). "
        "Backbones: python -m edgecls models.",
    )
    p.add_argument("data", metavar="DATASET_DIR", help="folder with train/ and val/, one subfolder per class")
    add_config_flag(p)

    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="resnet18", help="registered backbone name (see `edgecls models`)")
    g.add_argument(
        "--model-name", default=None, help="run name recorded in args.yaml and every checkpoint (default: the backbone)"
    )
    g.add_argument("--model-def-path", default="./models/", help="folder of plugin .py files that register backbones")
    g.add_argument(
        "--pretrained", action="store_true", help="start from installed ImageNet weights (efficientnet-lite0)"
    )
    g.add_argument(
        "--snapshot", default=None, metavar="PTH", help="initial weights: an edgecls checkpoint or a state_dict file"
    )
    g.add_argument("--freeze-backbone", type=int, default=0, choices=[0, 1], help="1: train only the classifier head")
    g.add_argument(
        "--input-size",
        type=parse_size,
        default=None,
        metavar="HxW",
        help="model input, e.g. 224 or 56x32 (default: the backbone's)",
    )
    g.add_argument(
        "--preprocess", default=None, choices=sorted(PRESETS), help="normalization preset (default: the backbone's)"
    )
    g.add_argument(
        "--resize", default="squash", choices=RESIZE_POLICIES, help="eval resize: squash to HxW or center_crop"
    )

    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=100, help="maximum epochs")
    g.add_argument("--batch-size", type=int, default=64, help="images per step (per process under torchrun)")
    g.add_argument("--lr", type=float, default=1e-3, help="learning rate (>= 0)")
    g.add_argument("--optimizer", default="SGD", type=str.upper, choices=OPTIMIZERS, help="optimizer")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum, in [0, 1)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay")
    g.add_argument("--scheduler", default="cosine", choices=SCHEDULERS, help="learning-rate schedule (per step)")
    g.add_argument("--warmup-epochs", type=int, default=0, help="linear warmup epochs")
    g.add_argument("--loss", default="cross_entropy", choices=["cross_entropy"], help="loss function")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    g.add_argument("--class-weights", default="none", help="none | balanced | comma list, one weight per class")
    g.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability (0 for digits/text)")
    g.add_argument("--crop-scale", type=float, default=0.6, help="smallest random-resized-crop area (1.0: no crop)")

    g = p.add_argument_group("stopping and checkpoints")
    g.add_argument("--early-stop", type=int, default=1, choices=[0, 1], help="1: stop when val top-1 stalls")
    g.add_argument("--patience", type=int, default=7, help="epochs without val top-1 improvement before stopping")
    g.add_argument("--snapshot-path", default=None, help="run folder (default: snapshots/<date-time>)")
    g.add_argument(
        "--resume", default=None, metavar="RUN_OR_CKPT", help="continue a run folder (its last.pth) or a last.pth file"
    )
    g.add_argument(
        "--exist-ok", action="store_true", help="allow writing into a --snapshot-path that already has checkpoints"
    )
    g.add_argument("--topk", type=int, default=5, help="K for the top-K validation accuracy")

    g = p.add_argument_group("hardware")
    g.add_argument("--gpu", type=int, default=-1, help="CUDA device index; -1 for the CPU")
    g.add_argument(
        "--workers",
        type=int,
        default=2,
        help="DataLoader worker processes; also the image-cache decode processes "
        "(for the gpu cache: its file-reading processes, at least 2, at most 8)",
    )
    g.add_argument(
        "--cache-images",
        default="auto",
        choices=["auto", "none", "ram", "disk", "gpu"],
        help="decode images once and keep uint8 copies (ram; disk: a memory-mapped file under "
        "$EDGECLS_CACHE_DIR reused by later runs; gpu: in GPU memory, JPEGs decoded there with "
        "nvjpeg); auto: gpu on CUDA if under 35%% of free GPU memory, else ram if under a quarter "
        "of RAM (disk under torchrun), else disk, else none (PIL decode every epoch)",
    )
    g.add_argument(
        "--amp", action="store_true", help="mixed precision (bf16 autocast; fp16 + scaler on GPUs without bf16)"
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW on GPU")
    g.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="let cudnn autotune its convolution algorithms on GPU (default: off). Measured on an H100 "
        "(bf16, batch 256): it added 3 s to resnet18's first epoch and 19 s to mobilenetv2's, and "
        "changed the later epochs by at most 1.3%%",
    )
    g.add_argument("--seed", type=int, default=0, help="random seed (data order, augmentation, init)")
    return p


def config_from_args(args: argparse.Namespace, argv: list[str] | None) -> TrainConfig:
    values = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    if args.resume:
        given = given_dests(get_args_parser, argv)
        values["resume_flags"] = {k: values[k] for k in sorted(given) if k in values}
        if "epochs" in given:
            values["override_epochs"] = args.epochs
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    args = parse_with_config(get_args_parser(), argv)
    require_at_least(args, {"epochs": 1, "batch_size": 1, "topk": 1, "patience": 1, "warmup_epochs": 0, "workers": 0})
    require_in(
        args,
        {"lr": "[0, inf)", "momentum": "[0, 1)", "weight_decay": "[0, inf)", "hflip": "[0, 1]", "crop_scale": "(0, 1]"},
    )
    from edgecls.engine.trainer import fit

    fit(config_from_args(args, argv))
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv)
