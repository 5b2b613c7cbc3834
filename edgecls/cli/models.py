"""`edgecls models`: registered backbones with input size, preset and offline weights."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from edgecls.cli.common import run_cli
from edgecls.settings import build_parser, flag_names, setting


@dataclass
class ModelsCommand:
    model_def_path: str | None = setting("./models/", "plugin folder (default: ./models/)")


FLAGS = flag_names(ModelsCommand)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(ModelsCommand, prog="edgecls models", description="List registered backbones.", config=False)
    args = ModelsCommand(**vars(parser.parse_args(argv)))
    from edgecls.models import get_spec, list_models, load_plugins

    load_plugins(args.model_def_path)
    print(f"{'backbone':<20} {'input HxW':<10} {'preset':<9} {'pretrained':<10} description")
    for name in list_models():
        s = get_spec(name)
        size = f"{s.input_size[0]}x{s.input_size[1]}"
        print(f"{name:<20} {size:<10} {s.preprocess:<9} {'yes' if s.has_pretrained else '-':<10} {s.description}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, flags=FLAGS)


if __name__ == "__main__":
    sys.exit(cli())
