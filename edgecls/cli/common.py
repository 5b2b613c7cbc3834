"""Shared CLI plumbing: user errors become `error: ...` + exit 2; YAML --config sets defaults."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

from edgecls.errors import UserError
from edgecls.settings import DefaultsHelpFormatter, describe_interval, parse_size, render_fields

__all__ = ["DefaultsHelpFormatter", "parse_size", "run_cli"]


def _short_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def run_cli(
    main: Callable[[list[str] | None], int], argv: list[str] | None = None, flags: Mapping[str, str] | None = None
) -> int:
    """Call main; a UserError prints one line and exits 2 (tracebacks are for bugs only). The library names
    settings as `field`; `flags` (field -> flag) turns them into the command's flag spellings."""
    warnings.showwarning = _short_warning
    try:
        return main(argv) or 0
    except UserError as exc:
        print(f"error: {render_fields(str(exc), flags or {})}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # the reader of our output went away (`... | head`): stop quietly, like other command-line tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 1


def _stdout_closed() -> bool:
    """Is stdout a pipe whose reader has gone (rather than some other pipe or socket that broke)?"""
    import select

    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    if not hasattr(select, "poll"):
        return True  # no way to ask (Windows): a broken pipe there is almost always stdout's
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="YAML file whose keys set this command's defaults; flags given on the command line win",
    )


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Two-pass parse: read --config, apply its keys as defaults, then parse the command line."""
    pre = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_config(known.config, parser))
    return parser.parse_args(argv)


def given_dests(make_parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None) -> set[str]:
    """The dests the user set, on the command line (any spelling: --epochs 3, --epochs=3) or in --config."""
    parser = make_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(argv)
    dests = set(vars(given))
    if getattr(given, "config", None):
        dests |= set(load_config(given.config, make_parser()))
    return dests - {"config", "help"}


def load_config(path: str, parser: argparse.ArgumentParser) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {p}: file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"--config {p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {p}: expected a mapping of flag names to values")
    by_dest = {a.dest: a for a in parser._actions}
    by_flag = {opt: a for a in parser._actions for opt in a.option_strings}
    out = {}
    for key, value in data.items():
        name = str(key).lstrip("-")
        action = by_dest.get(name.replace("-", "_"))
        dashed = "--" + name.replace("_", "-")
        flag = by_flag.get("--" + name) or by_flag.get(dashed)
        negative = flag is not None and (
            flag.const is False  # no-simplify: true (a store_false flag)
            or (isinstance(flag, argparse.BooleanOptionalAction) and dashed.startswith("--no-"))
        )
        inverted = action is None and negative and flag.nargs == 0
        action = action or flag
        if action is None or action.dest in ("help", "config"):
            raise UserError(f"--config {p}: unknown key {key!r}; keys are the command's flag names (e.g. batch-size)")
        value = _config_value(p, key, value, action)
        out[action.dest] = (not value) if inverted else value
    return out


def _config_value(path: Path, key, value, action: argparse.Action):
    """A YAML value checked and converted exactly as the same value typed on the command line would be."""
    if action.required or not action.option_strings:
        shown = action.option_strings[0] if action.option_strings else action.metavar or action.dest
        raise UserError(f"--config {path}: {key!r} cannot come from a config file; give {shown} on the command line")
    if action.nargs == 0:  # on/off flags: --amp, --no-simplify ...
        if not isinstance(value, bool):
            raise UserError(f"--config {path}: {key!r} is an on/off flag; use true or false, not {value!r}")
        return value
    if value is None:  # "key:" with nothing after it
        if action.default is None:
            return None
        if action.type is None and action.choices is None:
            return ""  # like the flag given an empty value (--model-def-path "": no plugin folder)
        raise UserError(
            f"--config {path}: {key!r} has no value; give one (default: {action.default}) or remove the line"
        )
    if isinstance(value, dict):
        raise UserError(f"--config {path}: {key!r}: expected a single value, not a mapping")
    if isinstance(value, list):  # class-weights: [1, 2] reads like the flag's "1,2"
        value = ",".join(str(v) for v in value)
    try:
        value = (action.type or str)(str(value))
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        raise UserError(f"--config {path}: {key!r}: {value!r} is not valid ({exc})") from None
    if action.choices is not None and value not in action.choices:
        raise UserError(f"--config {path}: {key!r}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def require_at_least(args: argparse.Namespace, minimums: dict[str, int]) -> None:
    """A one-line error for the first flag (by dest) whose value is below its minimum."""
    for dest, least in minimums.items():
        value = getattr(args, dest)
        if value < least:
            raise UserError(f"--{dest.replace('_', '-')} {value}: must be at least {least}")


def require_in(args: argparse.Namespace, intervals: dict[str, str]) -> None:
    """A one-line error for the first flag (by dest) outside its interval, written "[0, 1]", "(0, inf)"..."""
    for dest, spec in intervals.items():
        value = getattr(args, dest)
        low, high = (float(v) for v in spec[1:-1].split(","))
        above = value > low if spec[0] == "(" else value >= low
        below = value < high if spec[-1] == ")" else value <= high
        if not (above and below):
            raise UserError(f"--{dest.replace('_', '-')} {value}: must be {describe_interval(spec)}")
