#!/usr/bin/env python3
"""Accuracy, precision/recall/F1 and confusion matrix (see `python eval_utils/eval.py --help`)."""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edgecls.cli.eval import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
