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


def threads_setting(group: str, workers: str = "", note: str = ""):
    """The `threads` setting of every command that runs a model (one text, one rule: edgecls.threads)."""
    from edgecls.settings import setting

    return setting(
        0,
        "CPU threads for the model (torch intra-op); 0: auto, the cores this process may use less those other "
        f"processes are busy with{workers}, or OMP_NUM_THREADS when set{note}",
        group=group,
        parse=int,
        at_least=0,
    )


def progress_setting(group: str):
    """The `progress` setting (`--no-progress`) of the commands that work through many images."""
    from edgecls.settings import NEGATED, setting

    return setting(
        True,
        "hide the progress bar (shown only when stderr is a terminal)",
        group=group,
        kind=NEGATED,
        flags=("--no-progress",),
    )


def print_table(all_rows: list[dict], count: int, out=None) -> None:
    """The first `count` images' top-1 as a table: file (below the folder all images share), class, score;
    on `out` (default: sys.stdout as it is when called)."""
    out = out or sys.stdout
    rows, total = all_rows[:count], len(all_rows)
    if not rows:
        return
    names = short_names([r["img_path"] for r in all_rows])[:count]
    width = min(max(4, *(len(n) for n in names)), 60)
    label_width = min(max(5, *(len(r["top1_label"]) for r in rows)), 30)
    print(f"first {len(rows)} of {total} images:" if len(rows) < total else f"{total} images:", file=out)
    print(f"  {'file':<{width}}  {'top-1':<{label_width}}  score", file=out)
    for name, row in zip(names, rows):
        name = name if len(name) <= width else "..." + name[-(width - 3) :]
        if row.get("error"):
            print(f"  {name:<{width}}  (unreadable: {row['error']})", file=out)
        else:
            print(f"  {name:<{width}}  {row['top1_label']:<{label_width}}  {float(row['top1_score']):.4f}", file=out)


def short_names(paths: list[str]) -> list[str]:
    """Paths below the deepest folder that holds them all (as given when they share none)."""
    try:
        root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    except ValueError:
        return list(paths)
    return [os.path.relpath(os.path.abspath(p), root) for p in paths]
