"""Training recipes: named sets of defaults for the settings a user rarely wants to choose by hand.

- kneron:   Kneron's ai_training defaults, exactly (SGD, lr 1e-3, momentum 0.9, cosine, no extras).
- finetune: for pretrained weights (--pretrained or --snapshot). LP-FT (Kumar et al., ICLR 2022): the
            new head is fitted by a linear probe (logistic regression on the frozen features), then the whole
            network trains with its BatchNorm statistics frozen and discriminative learning rates (each stage
            below the head at `layer_decay` times the rate above it), AdamW, warmup + cosine, label
            smoothing, light colour jitter, mild crops and an EMA of the weights. Chosen by measurement on
            real photos (the stamps `tune` set; `heldout` checks it): benchmarks/finetune_quality.py, docs/training.md.
- scratch:  random initialisation: Kneron's settings but AdamW at 3e-3, which the demo and the tests measured
            to learn faster from scratch than SGD at 1e-3 (short CPU runs: no warmup, no smoothing).

A setting left as None takes the recipe's value; one the user gave (flag or config file) always wins.
"""

from __future__ import annotations

from dataclasses import replace

from edgecls.engine.config import TrainConfig

RECIPES: dict[str, dict] = {
    "kneron": {
        "optimizer": "SGD", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4, "layer_decay": 1.0,
        "head_epochs": 0, "probe_init": False, "gradual_unfreeze": False, "freeze_bn": False,
        "scheduler": "cosine", "warmup_epochs": 0.0, "model_ema": False, "label_smoothing": 0.0, "crop_scale": 0.6,
        "augment": "none",
        "random_erasing": 0.0,
    },
    "finetune": {
        "optimizer": "ADAMW", "lr": 1e-4, "momentum": 0.9, "weight_decay": 0.05, "layer_decay": 0.7,
        "head_epochs": 0, "probe_init": True, "gradual_unfreeze": False, "freeze_bn": True, "scheduler": "cosine",
        "warmup_epochs": 1.0, "model_ema": True, "label_smoothing": 0.1, "crop_scale": 0.8, "augment": "light",
        "random_erasing": 0.0,
    },
    "scratch": {
        "optimizer": "ADAMW", "lr": 3e-3, "momentum": 0.9, "weight_decay": 1e-4, "layer_decay": 1.0,
        "head_epochs": 0, "probe_init": False, "gradual_unfreeze": False, "freeze_bn": False,
        "scheduler": "cosine", "warmup_epochs": 0.0, "model_ema": False, "label_smoothing": 0.0, "crop_scale": 0.6,
        "augment": "none", "random_erasing": 0.0,
    },
}  # fmt: skip
RECIPE_FIELDS = tuple(RECIPES["kneron"])


# Settings that mean nothing without a trained classifier head on whole batches of labelled images
# (episodic and autoencoder training refuse them when given, and turn the recipe's off).
CLASSIFIER_ONLY = {
    "mixup": lambda v: v > 0,
    "cutmix": lambda v: v > 0,
    "freeze_backbone": lambda v: bool(v),
    "probe_init": lambda v: bool(v),
    "head_epochs": lambda v: bool(v),
    "gradual_unfreeze": lambda v: bool(v),
    "class_weights": lambda v: str(v).lower() != "none",
    "lr": lambda v: v == "auto",
}


def refuse_given(cfg: TrainConfig, sources: dict, rules: dict, what: str) -> TrainConfig:
    """A UserError for the first setting the user gave that `rules` refuse; the recipe's head-only steps
    (probe_init, head epochs, gradual unfreezing) are turned off."""
    from edgecls.errors import UserError

    for name, bad in rules.items():
        value = getattr(cfg, name)
        if bad(value) and sources.get(name, "given") == "given":
            raise UserError(f"{what}: `{name}` {value} does not apply; leave it out")
    off = {name: False for name in ("probe_init", "gradual_unfreeze") if getattr(cfg, name)}
    return replace(cfg, head_epochs=0, **off)


def default_recipe(cfg: TrainConfig) -> str:
    """finetune when the run starts from pretrained weights, else scratch."""
    return "finetune" if (cfg.pretrained or cfg.snapshot) else "scratch"


def resolve_recipe(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, str]]:
    """(the settings with every recipe field filled, where each came from: "given" or "recipe")."""
    name = cfg.recipe or default_recipe(cfg)
    values, sources = {}, {}
    for field in RECIPE_FIELDS:
        given = getattr(cfg, field)
        values[field] = given if given is not None else RECIPES[name][field]
        sources[field] = "given" if given is not None else "recipe"
    sources["recipe"] = "given" if cfg.recipe else "default"
    return replace(cfg, recipe=name, **values), sources


def describe(cfg: TrainConfig, sources: dict[str, str]) -> str:
    """One line for the log: the recipe, why it was chosen, and which settings came from it."""
    why = "given" if sources.get("recipe") == "given" else (
        "the run starts from pretrained weights" if cfg.recipe == "finetune" else "random initialisation"
    )  # fmt: skip
    from_recipe = [f"{f.replace('_', '-')}={getattr(cfg, f)}" for f in RECIPE_FIELDS if sources[f] == "recipe"]
    given = [f"{f.replace('_', '-')}={getattr(cfg, f)}" for f in RECIPE_FIELDS if sources[f] != "recipe"]
    parts = [f"recipe {cfg.recipe} ({why})"]
    if from_recipe:
        parts.append("from the recipe: " + " ".join(from_recipe))
    if given:
        parts.append("given: " + " ".join(given))
    return "; ".join(parts)


def defaults_text(field: str) -> str:
    """The field's value in each recipe, for --help: "kneron 0.001, finetune 0.001, scratch 0.003"."""
    return ", ".join(f"{name} {values[field]}" for name, values in RECIPES.items())


def recipe_record(cfg: TrainConfig, sources: dict[str, str]) -> dict:
    """What checkpoints and args.yaml keep of the recipe."""
    return {"name": cfg.recipe, "sources": dict(sources)}
