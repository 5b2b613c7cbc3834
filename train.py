#!/usr/bin/env python3
"""Train an image classifier on a folder dataset (see `python train.py --help`)."""

import sys

from edgecls.cli.train import cli

if __name__ == "__main__":
    sys.exit(cli())
