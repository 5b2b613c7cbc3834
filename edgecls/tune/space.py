"""The search space: each parameter is a TrainConfig field with a range or a list of choices.

The default space is one line per field (`default_space`); a new train.py setting becomes searchable by
adding its line. A `--space FILE.yaml` narrows the default or replaces it:

    replace: false            # default; true: search only the parameters below
    lr: {low: 1e-4, high: 1e-2, log: true}
    batch-size: [32, 64]      # a list: the choices
    hflip: null               # not searched: every trial uses the tune command's value
    backbone: [FP_classifier, mobilenetv2]

Every range end and every choice is checked with the field's own rules (those train.py applies) when the
file is read, so no trial starts with a value train.py would refuse.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecls.engine.config import AUGMENT, MODEL, OPTIM, TrainConfig, parse_lr
from edgecls.errors import UserError
from edgecls.settings import NEGATED, SWITCH, TOGGLE, Setting, check_value, settings_of

FLOAT, INT, CATEGORICAL = "float", "int", "categorical"
ENTRY_KEYS = ("type", "low", "high", "log", "step", "choices")
# Model, optimisation and augmentation settings can be searched, and these stopping ones; paths and names cannot.
NOT_SEARCHABLE = ("model_name", "model_def_path", "snapshot", "loss")
ALSO_SEARCHABLE = ("early_stop", "patience")
# Sampled first: the settings the others' conditions read.
FIRST = ("backbone", "input_size", "pretrained", "snapshot", "recipe", "optimizer")


def searchable() -> dict[str, tuple[dataclasses.Field, Setting]]:
    """field name -> (field, setting) for every TrainConfig setting a space may search."""
    return {
        f.name: (f, s)
        for f, s in settings_of(TrainConfig)
        if s.cli and (s.group in (MODEL, OPTIM, AUGMENT) or f.name in ALSO_SEARCHABLE) and f.name not in NOT_SEARCHABLE
    }


def _takes_dropout(values: dict) -> bool:
    from edgecls.models.registry import takes_kwarg

    return takes_kwarg(values["backbone"], "dropout")


def _uses_sgd(values: dict) -> bool:
    """SGD given or sampled, or (optimizer left to the recipe) the recipe's optimizer."""
    from edgecls.engine.recipes import RECIPES

    if values.get("optimizer"):
        return values["optimizer"] == "SGD"
    recipe = values.get("recipe") or ("finetune" if values.get("pretrained") or values.get("snapshot") else "scratch")
    return RECIPES[recipe]["optimizer"] == "SGD"


# A parameter is sampled only where it means something for the values sampled (or given) before it.
CONDITIONS: dict[str, Callable[[dict], bool]] = {
    "momentum": _uses_sgd,
    "freeze_backbone": lambda v: bool(v["pretrained"] or v["snapshot"]),  # fine-tune or not: from weights only
    "dropout": _takes_dropout,
}


@dataclass(frozen=True)
class Param:
    """One searched field: a float/int range (optionally log or stepped) or a list of choices."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        """The raw value from the Optuna trial (a choice as written in the space)."""
        if self.kind == CATEGORICAL:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == INT:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict:
        d = {"type": self.kind}
        if self.kind == CATEGORICAL:
            return {**d, "choices": list(self.choices)}
        d.update(low=self.low, high=self.high)
        if self.log:
            d["log"] = True
        if self.step is not None:
            d["step"] = self.step
        return d

    def describe(self) -> str:
        if self.kind == CATEGORICAL:
            return f"{self.name} in {list(self.choices)}"
        return f"{self.name} {self.kind} [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


def span(name: str, low: float, high: float, log: bool = False) -> Param:
    kind = numeric_kind(name) or FLOAT
    return Param(name, kind, low=low, high=high, log=log)


def one_of(name: str, *choices) -> Param:
    return Param(name, CATEGORICAL, choices=tuple(choices))


def default_space(epochs_max: int) -> dict[str, Param]:
    """The issue's list where it applies to our models; one line per TrainConfig field."""
    params = [
        span("lr", 1e-4, 1e-1, log=True),
        span("epochs", max(1, epochs_max // 4), epochs_max),
        one_of("optimizer", "SGD", "ADAMW"),
        span("momentum", 0.8, 0.99),  # SGD only
        span("weight_decay", 1e-6, 1e-2, log=True),
        span("label_smoothing", 0.0, 0.2),
        one_of("class_weights", "none", "balanced"),
        span("dropout", 0.0, 0.5),  # backbones with a dropout layer only
        one_of("freeze_backbone", 0, 1),  # from --pretrained or --snapshot weights only
        one_of("hflip", 0.0, 0.5),
        span("crop_scale", 0.3, 1.0),
        one_of("batch_size", 16, 32, 64, 128),
    ]
    return {p.name: p for p in params}


class Space:
    """The parameters a study searches, in sampling order."""

    def __init__(self, params: dict[str, Param]):
        ordered = sorted(params.values(), key=lambda p: FIRST.index(p.name) if p.name in FIRST else len(FIRST))
        self.params = {p.name: p for p in ordered}

    def sample(self, trial, base: dict) -> dict[str, Any]:
        """field -> value for this trial: each parameter whose condition holds, converted to the field's type."""
        values, sampled = dict(base), {}
        for p in self.params.values():
            condition = CONDITIONS.get(p.name)
            if condition is not None and not condition(values):
                continue
            sampled[p.name] = values[p.name] = field_value(p.name, p.suggest(trial))
        return sampled

    def to_dict(self) -> dict:
        return {name: p.to_dict() for name, p in self.params.items()}

    def describe(self) -> str:
        return "; ".join(p.describe() for p in self.params.values())


# ----------------------------------------------------------------------------- values


def numeric_kind(name: str) -> str | None:
    """float / int for a field parsed as a number, None for one that only takes choices."""
    _, s = searchable()[name]
    if s.choices is not None or s.kind in (SWITCH, NEGATED, TOGGLE):
        return None
    return {float: FLOAT, int: INT, parse_lr: FLOAT}.get(s.parse)  # lr: a number (or auto, never searched)


def field_value(name: str, raw: Any, where: str = "") -> Any:
    """A raw choice or range value as the field's value, checked by the field's rules (as train.py would)."""
    f, s = searchable()[name]
    prefix = f"{where}: " if where else ""
    if raw is None:
        return None  # the field's "not set" (dropout: the backbone's own)
    if s.kind in (SWITCH, NEGATED, TOGGLE):
        if not isinstance(raw, bool):
            raise UserError(f"{prefix}'{name}' is on/off: its choices are true and false, not {raw!r}")
        value = raw
    elif isinstance(raw, (list, dict)):
        raise UserError(f"{prefix}'{name}': {raw!r} is not a single value (write a comma list as a string)")
    else:
        try:
            value = (s.parse or str)(str(raw))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise UserError(f"{prefix}'{name}': {raw!r} is not valid ({exc})") from None
    try:
        check_value(f.name, value, s)
    except UserError as exc:
        raise UserError(f"{prefix}{exc}") from None
    return value


# ----------------------------------------------------------------------------- --space files


def load_space(path: str | None, epochs_max: int) -> Space:
    """The default space, or the default narrowed / replaced by a YAML file; every bad entry is a UserError."""
    default = default_space(epochs_max)
    if path is None:
        return Space(default)
    import yaml

    where = f"`space` {path}"
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{where}: file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{where}: expected a mapping of parameter names to ranges or choice lists")
    replace = data.pop("replace", False)
    if not isinstance(replace, bool):
        raise UserError(f"{where}: 'replace' is true or false, not {replace!r}")
    params = {} if replace else dict(default)
    names = searchable()
    for key, entry in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UserError(f"{where}: {key!r} cannot be searched; parameters are {', '.join(names)}")
        if entry is None:
            params.pop(name, None)
            continue
        params[name] = parse_entry(name, entry, params.get(name), where)
    if not params:
        raise UserError(f"{where}: no parameter is left to search")
    epochs = params.get("epochs")
    top = max(epochs.choices) if epochs and epochs.kind == CATEGORICAL else epochs.high if epochs else 0
    if top > epochs_max:
        raise UserError(f"{where}: 'epochs' goes up to {top}, above `epochs_max` {epochs_max}; raise `epochs_max`")
    return Space(params)


def parse_entry(name: str, entry: Any, current: Param | None, file: str) -> Param:
    """One `name: {...}` or `name: [choices]` entry, merged over the parameter it narrows (if any)."""
    where = f"{file}: '{name}'"
    if isinstance(entry, list):
        entry = {"choices": entry}
    if not isinstance(entry, dict):
        raise UserError(f"{where}: give a range {{low: A, high: B}} or a list of choices, not {entry!r}")
    unknown = [k for k in entry if k not in ENTRY_KEYS]
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; use {', '.join(ENTRY_KEYS)}")
    kind = entry.get("type") or (CATEGORICAL if "choices" in entry else None)
    if kind not in (None, FLOAT, INT, CATEGORICAL):
        raise UserError(f"{where}: type {kind!r}: use float, int or categorical")
    if kind == CATEGORICAL or (kind is None and current is not None and current.kind == CATEGORICAL and
                               not ({"low", "high"} & set(entry))):  # fmt: skip
        return parse_choices(name, entry, current, file)
    return parse_range(name, kind, entry, current, file)


def parse_choices(name: str, entry: dict, current: Param | None, file: str) -> Param:
    where = f"{file}: '{name}'"
    choices = entry.get("choices", list(current.choices) if current and current.choices else None)
    if not isinstance(choices, list) or not choices:
        raise UserError(f"{where}: 'choices' must be a non-empty list")
    extra = [k for k in ("low", "high", "log", "step") if k in entry]
    if extra:
        raise UserError(f"{where}: a choice list takes no {extra[0]!r}")
    for choice in choices:
        if not (choice is None or isinstance(choice, (bool, int, float, str))):
            raise UserError(f"{where}: choice {choice!r} is not a single value (write a comma list as a string)")
        field_value(name, choice, file)
    if len(set(map(repr, choices))) != len(choices):
        raise UserError(f"{where}: a choice is listed twice")
    return Param(name, CATEGORICAL, choices=tuple(choices))


def parse_range(name: str, kind: str | None, entry: dict, current: Param | None, file: str) -> Param:
    where = f"{file}: '{name}'"
    field_kind = numeric_kind(name)
    if field_kind is None:
        raise UserError(f"{where}: takes a list of choices, not a range")
    kind = kind or field_kind
    if kind == FLOAT and field_kind == INT:
        raise UserError(f"{where}: is a whole number; use type int or a list of choices")
    old = current if current is not None and current.kind != CATEGORICAL else None
    low, high = entry.get("low", old.low if old else None), entry.get("high", old.high if old else None)
    if low is None or high is None:
        raise UserError(f"{where}: give both 'low' and 'high' (or a list of choices)")
    low, high = _number(low, kind, where, "low"), _number(high, kind, where, "high")
    log = entry.get("log", old.log if old else False)
    step = entry.get("step")
    if not isinstance(log, bool):
        raise UserError(f"{where}: 'log' is true or false, not {log!r}")
    if low > high:
        raise UserError(f"{where}: low {low:g} is above high {high:g}")
    if log and low <= 0:
        raise UserError(f"{where}: a log range needs low > 0, not {low:g}")
    if step is not None:
        step = _number(step, kind, where, "step")
        if step <= 0 or log:
            raise UserError(f"{where}: 'step' must be > 0 and cannot go with log: true")
    for end in (low, high):
        field_value(name, end, file)
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _number(value: Any, kind: str, where: str, key: str) -> float:
    """A YAML number; a string such as '1e-4' (PyYAML reads exponents without a dot as text) is accepted."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {key} {value!r} is not a number") from None
    if not math.isfinite(number) or (kind == INT and number != int(number)):
        raise UserError(f"{where}: {key} {value!r} must be a {'whole' if kind == INT else 'finite'} number")
    return int(number) if kind == INT else number
