"""Shared CLI plumbing: a user error becomes one `error: ...` line and exit 2, with the library's field names
(`lr`) printed as the command's flags (--lr); warnings print as one `warning: ...` line the same way."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping

from edgecls.errors import UserError
from edgecls.settings import render_fields

__all__ = ["run_cli"]


def run_cli(
    main: Callable[[list[str] | None], int], argv: list[str] | None = None, flags: Mapping[str, str] | None = None
) -> int:
    """Call main; a UserError prints one line and exits 2 (tracebacks are for bugs only). The library names
    settings as `field`; `flags` (field -> flag) turns them into the command's flag spellings."""
    flags = flags or {}

    def short_warning(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {render_fields(str(message), flags)}", file=sys.stderr)

    warnings.showwarning = short_warning
    try:
        return main(argv) or 0
    except UserError as exc:
        print(f"error: {render_fields(str(exc), flags)}", file=sys.stderr)
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
