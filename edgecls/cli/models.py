"""`edgecls models`: registered backbones with input size, preset and offline weights."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="edgecls models", description="List registered backbones."
    )
    parser.add_argument("--model-def-path", default="./models/", help="plugin folder (default: ./models/)")
    args = parser.parse_args(argv)
    from edgecls.models import get_spec, list_models, load_plugins

    load_plugins(args.model_def_path)
    print(f"{'backbone':<20} {'input HxW':<10} {'preset':<9} {'pretrained':<10} description")
    for name in list_models():
        s = get_spec(name)
        size = f"{s.input_size[0]}x{s.input_size[1]}"
        print(f"{name:<20} {size:<10} {s.preprocess:<9} {'yes' if s.has_pretrained else '-':<10} {s.description}")
    return 0
