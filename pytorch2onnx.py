"""Kneron-compatible entry point: checkpoint -> verified, NPU-ready ONNX (+ INT8). See docs/export.md."""

import sys

from edgecls.cli.export import cli

if __name__ == "__main__":
    sys.exit(cli())
