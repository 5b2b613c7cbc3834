"""The progress bar of the commands that work through many images (inference, eval)."""

from __future__ import annotations

import sys


def progress_bar(total: int, enabled: bool, desc: str = "classify"):
    """A tqdm bar on stderr, shown only when asked for and stderr is a terminal (not a pipe or a file)."""
    from tqdm import tqdm

    shown = enabled and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", disable=not shown, file=sys.stderr, dynamic_ncols=True)
