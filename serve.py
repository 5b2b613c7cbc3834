#!/usr/bin/env python3
"""Serve a model over HTTP with a web page (see `python serve.py --help`)."""

import sys

from edgecls.cli.serve import cli

if __name__ == "__main__":
    sys.exit(cli())
