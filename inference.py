#!/usr/bin/env python3
"""Top-K classes for an image, a folder or a glob (see `python inference.py --help`)."""

import sys

from edgecls.cli.inference import cli

if __name__ == "__main__":
    sys.exit(cli())
