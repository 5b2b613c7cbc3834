"""Files written whole or not at all: a hidden temp file beside the target, renamed over it.

The files edgecls writes (checkpoints, ONNX models, run-folder files, JSON, images, caches) go
through `atomic_path`, so a crash never leaves a half-written file under the real name, and the
file gets the usual mode (0666 less the umask) rather than mkstemp's owner-only 0600.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgecls.errors import UserError


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread writes files
    os.umask(mask)
    return mask


UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike, *, fsync: bool = False, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path to write; on success it gets `mode` (default: 0666 less the umask) and replaces `dst`
    (fsync'd first if asked); on failure it is removed."""
    dst = Path(dst)
    if dst.is_dir():
        raise UserError(f"{dst}: is a folder; give a file path to write")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{dst}: a part of this path is a file, not a folder; choose another path") from None
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".tmp-", suffix=dst.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~UMASK if mode is None else mode)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(data: bytes, dst: str | os.PathLike, *, fsync: bool = False) -> None:
    with atomic_path(dst, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(text: str, dst: str | os.PathLike) -> None:
    atomic_write_bytes(text.encode("utf-8"), dst)


def atomic_savefig(fig, dst: str | os.PathLike, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG through atomic_path, then close it (also when saving fails)."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(dst) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy (with timestamps and mode) through a temp file in dst's folder, then rename."""
    with atomic_path(dst, mode=stat.S_IMODE(os.stat(src).st_mode)) as tmp:
        shutil.copy2(src, tmp)
