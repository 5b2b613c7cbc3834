"""Settings schema: one dataclass per command is the single source of defaults, types, help and checks.

Each field is declared with `setting(default, help, ...)`. From that one table:
- `build_parser` generates the command's argparse parser (Kneron flag spellings kept through `flags=`);
- `parse_command_line` reads `--config FILE.yaml` (its keys are flag or field names, checked and converted
  exactly like the same value typed on the command line), then the command line, and also says which
  fields the user gave (on the command line or in the file);
- `check` validates an instance (choices, minimums, intervals) and raises a UserError that names the
  field in backticks (`lr`). The library only ever speaks in field names; the CLI prints them as flags
  (`render_fields`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgecls.errors import UserError

CONFIG = "config"
VALUE, SWITCH, NEGATED, TOGGLE, POSITIONAL = "value", "switch", "negated", "toggle", "positional"


@dataclasses.dataclass(frozen=True)
class Setting:
    """How one field is spelled, parsed and checked."""

    help: str
    group: str | None = None
    flags: tuple[str, ...] = ()  # CLI spellings; default ("--field-name",). NEGATED: the --no-... flag
    parse: Callable[[str], Any] | None = None  # text -> value, for the command line and for config files
    choices: tuple | None = None
    at_least: float | None = None
    within: str | None = None  # an interval such as "[0, 1)" or "(0, inf)"
    metavar: str | None = None
    kind: str = VALUE  # value | switch (store_true) | negated (store_false) | toggle (--x/--no-x) | positional
    required: bool = False
    cli: bool = True  # False: a library-only field, no flag
    special: tuple = ()  # words allowed besides the numeric rules (lr: "auto")


def setting(default: Any = None, help: str = "", **kw) -> Any:
    """A dataclass field carrying its Setting (mutable defaults are copied per instance)."""
    meta = {"setting": Setting(help=help, **kw)}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def settings_of(cls) -> list[tuple[dataclasses.Field, Setting]]:
    return [(f, f.metadata["setting"]) for f in dataclasses.fields(cls) if "setting" in f.metadata]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def flag_of(f: dataclasses.Field, s: Setting) -> str:
    if s.kind == POSITIONAL:
        return s.metavar or f.name.upper()
    return s.flags[0] if s.flags else "--" + f.name.replace("_", "-")


def flag_names(*classes) -> dict[str, str]:
    """field name -> the flag the CLI prints for it (`lr` -> --lr, `num_classes` -> --num_classes), for the
    fields of every class given, plus `config` -> --config."""
    names = {CONFIG: "--config"}
    for cls in classes:
        names.update({f.name: flag_of(f, s) for f, s in settings_of(cls) if s.cli})
    return names


# ----------------------------------------------------------------------------- checks


def describe_interval(spec: str) -> str:
    low, high = (float(v) for v in spec[1:-1].split(","))

    def num(v: float) -> str:
        return f"{v:g}"

    lower = f"greater than {num(low)}" if spec[0] == "(" else f"at least {num(low)}"
    if high == float("inf"):
        return lower
    upper = f"less than {num(high)}" if spec[-1] == ")" else f"at most {num(high)}"
    if spec[0] == "[" and spec[-1] == "]":
        return f"between {num(low)} and {num(high)}"
    return f"{lower} and {upper}"


def in_interval(value: float, spec: str) -> bool:
    low, high = (float(v) for v in spec[1:-1].split(","))
    above = value > low if spec[0] == "(" else value >= low
    below = value < high if spec[-1] == ")" else value <= high
    return above and below


def check_value(name: str, value: Any, s: Setting) -> None:
    """A one-line error naming the field when `value` breaks its setting's rules (None is always allowed)."""
    if value is None or value in s.special:
        return
    if s.choices is not None and value not in s.choices:
        raise UserError(f"`{name}` {value!r}: choose one of {', '.join(map(str, s.choices))}")
    if s.at_least is not None and value < s.at_least:
        raise UserError(f"`{name}` {value}: must be at least {s.at_least:g}")
    if s.within is not None and not in_interval(value, s.within):
        raise UserError(f"`{name}` {value}: must be {describe_interval(s.within)}")


def check(obj) -> None:
    """Validate every field of a settings dataclass instance, in declaration order."""
    for f, s in settings_of(type(obj)):
        check_value(f.name, getattr(obj, f.name), s)


# ----------------------------------------------------------------------------- parser


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" where it informs: not for None (the help says what happens) nor for on/off flags."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, argparse.SUPPRESS) or action.nargs == 0 or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser(
    cls,
    *,
    prog: str,
    description: str,
    epilog: str | None = None,
    config: bool = True,
    suppress: bool = False,
    config_at: str | None = None,
    help_notes: dict[str, str] | None = None,
) -> argparse.ArgumentParser:
    """The argparse parser for a settings dataclass. suppress=True: no defaults (to learn what was given).

    `config_at` places --config: None, first among the top-level options; "end", last of them; a field
    name, right after that field's flag (in its group). `help_notes`: field name -> text appended to its help."""
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog=prog, description=description, epilog=epilog, formatter_class=DefaultsHelpFormatter
    )
    return add_settings(p, cls, config=config, suppress=suppress, config_at=config_at, help_notes=help_notes)


def add_settings(
    p: argparse.ArgumentParser,
    cls,
    *,
    config: bool = False,
    suppress: bool = False,
    config_at: str | None = None,
    help_notes: dict[str, str] | None = None,
) -> argparse.ArgumentParser:
    """Add a settings dataclass's flags to an existing parser (a subcommand's, for instance); see build_parser."""
    groups: dict[str | None, Any] = {None: p}
    entries = [(f, s) for f, s in settings_of(cls) if s.cli]
    for f, s in entries:
        if s.kind == POSITIONAL:
            kw = {} if not suppress else {"nargs": "?", "default": argparse.SUPPRESS}
            p.add_argument(f.name, metavar=s.metavar or f.name.upper(), help=s.help, type=s.parse, **kw)
    if config and config_at is None:
        add_config_flag(p)
    for f, s in entries:
        if s.kind == POSITIONAL:
            continue
        if s.group not in groups:
            groups[s.group] = p.add_argument_group(s.group)
        if help_notes and f.name in help_notes:
            s = dataclasses.replace(s, help=f"{s.help} ({help_notes[f.name]})")
        _add_flag(groups[s.group], f, s, argparse.SUPPRESS if suppress else _default(f), suppress)
        if config and config_at == f.name:
            add_config_flag(groups[s.group])
    if config and config_at == "end":
        add_config_flag(p)
    return p


def _add_flag(g, f: dataclasses.Field, s: Setting, default: Any, suppress: bool) -> None:
    flags = list(s.flags) or ["--" + f.name.replace("_", "-")]
    if s.kind == SWITCH:
        g.add_argument(*flags, dest=f.name, action="store_true", default=default, help=s.help)
    elif s.kind == NEGATED:
        g.add_argument(*flags, dest=f.name, action="store_false", default=default, help=s.help)
    elif s.kind == TOGGLE:
        g.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=s.help)
    else:
        g.add_argument(
            *flags,
            dest=f.name,
            type=s.parse,
            default=default,
            choices=s.choices,
            metavar=s.metavar,
            required=s.required and not suppress,
            help=s.help,
        )


def add_config_flag(parser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="YAML file whose keys set this command's defaults; flags given on the command line win",
    )


def parse_command_line(cls, parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[dict, set[str]]:
    """(field values, the fields the user gave) from --config and the command line; the command line wins."""
    pre = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    from_config = load_config(known.config, cls) if known.config else {}
    if from_config:
        parser.set_defaults(**from_config)
    values = vars(parser.parse_args(argv))
    values.pop(CONFIG, None)
    quiet = build_parser(cls, prog=parser.prog, description="", config=True, suppress=True)
    given_cli, _ = quiet.parse_known_args(argv)
    given = (set(vars(given_cli)) | set(from_config)) - {CONFIG}
    return values, given


# ----------------------------------------------------------------------------- --config files


def load_config(path: str, cls) -> dict:
    """A YAML file of flag (or field) names -> values, each checked as on the command line."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"`config` {p}: file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"`config` {p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"`config` {p}: expected a mapping of flag names to values")
    lookup: dict[str, tuple[dataclasses.Field, Setting, bool]] = {}  # key -> (field, setting, inverted)
    for f, s in settings_of(cls):
        if not s.cli:
            continue
        names = [f.name, f.name.replace("_", "-"), *(fl.lstrip("-") for fl in s.flags)]
        for name in names:
            lookup[name] = (f, s, s.kind == NEGATED and name != f.name and name != f.name.replace("_", "-"))
        if s.kind == TOGGLE:
            lookup["no-" + f.name.replace("_", "-")] = (f, s, True)
    out = {}
    for key, value in data.items():
        name = str(key).lstrip("-")
        entry = lookup.get(name) or lookup.get(name.replace("_", "-"))
        if entry is None:
            raise UserError(f"`config` {p}: unknown key {key!r}; keys are the command's flag names (e.g. batch-size)")
        f, s, inverted = entry
        value = config_value(p, key, value, f, s)
        out[f.name] = (not value) if inverted else value
    return out


def config_value(path: Path, key, value, f: dataclasses.Field, s: Setting):
    """A YAML value checked and converted exactly as the same value typed on the command line would be."""
    if s.required or s.kind == POSITIONAL:
        raise UserError(
            f"`config` {path}: {key!r} cannot come from a config file; give {flag_of(f, s)} on the command line"
        )
    if s.kind in (SWITCH, NEGATED, TOGGLE):
        if value is None and s.kind == TOGGLE and _default(f) is None:
            return None  # "key:" or null: not set (a recipe's on/off setting then takes the recipe's value)
        if not isinstance(value, bool):
            raise UserError(f"`config` {path}: {key!r} is an on/off flag; use true or false, not {value!r}")
        return value
    default = _default(f)
    if value is None:  # "key:" with nothing after it
        if default is None:
            return None
        if s.parse is None and s.choices is None:
            return ""  # like the flag given an empty value (--model-def-path "": no plugin folder)
        raise UserError(f"`config` {path}: {key!r} has no value; give one (default: {default}) or remove the line")
    if isinstance(value, dict) and isinstance(default, dict):  # a mapping setting (model-args)
        value = ", ".join(f"{k}={v}" for k, v in value.items())
    elif isinstance(value, dict):
        raise UserError(f"`config` {path}: {key!r}: expected a single value, not a mapping")
    if isinstance(value, list):  # class-weights: [1, 2] reads like the flag's "1,2"
        value = ",".join(str(v) for v in value)
    try:
        value = (s.parse or str)(str(value))
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        raise UserError(f"`config` {path}: {key!r}: {value!r} is not valid ({exc})") from None
    if s.choices is not None and value not in s.choices:
        raise UserError(f"`config` {path}: {key!r}: {value!r} is not one of {', '.join(map(str, s.choices))}")
    return value


# ----------------------------------------------------------------------------- messages

_FIELD = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def render_fields(message: str, flags: Mapping[str, str]) -> str:
    """`field` -> its flag for the fields in `flags`; other backticked words are left as they are."""
    return _FIELD.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


_BYTE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}  # fmt: skip


def parse_bytes(text: str) -> int:
    """'100MB' -> 100_000_000, '1.5GiB' -> 1_610_612_736, '4096' -> 4096 (KB/MB/GB decimal, KiB/MiB/GiB binary).

    Hand-written: ten lines, where a package (humanfriendly) would be a dependency for one call."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?b?\s*", str(text).lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: use a size such as 100MB, 2GB, 512MiB or a number of bytes")
    value = float(match.group(1)) * _BYTE_UNITS[match.group(2) or ""]
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1 byte")
    return int(value)


def format_bytes(n: float) -> str:
    """Bytes as a person reads them, in the decimal units the size flags take: 1.2 GB, 350 MB, 12 kB."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}" if n / scale < 100 else f"{n / scale:.0f} {unit}"
    return f"{int(n)} B"


def parse_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '56x32' or '56,32' -> (56, 32) as H x W."""
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        nums = [int(v) for v in parts if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use N or HxW, e.g. 224 or 56x32") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 8:
        raise argparse.ArgumentTypeError(f"{text!r}: use N or HxW with sides >= 8, e.g. 224 or 56x32")
    return nums[0], nums[1]
