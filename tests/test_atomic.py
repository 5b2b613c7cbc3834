"""edgecls.atomic: whole files or none, the usual file mode, one-line errors for impossible targets."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from edgecls.atomic import atomic_copy, atomic_path, atomic_write_bytes
from edgecls.engine.checkpoint import save_checkpoint
from edgecls.errors import UserError


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_the_umask_mode_not_owner_only(tmp_path, umask_022):
    atomic_write_bytes(b"abc", tmp_path / "sub" / "a.json")
    save_checkpoint({"format": "edgecls-checkpoint/1"}, tmp_path / "best.pth")
    assert (tmp_path / "sub" / "a.json").read_bytes() == b"abc"
    assert mode(tmp_path / "sub" / "a.json") == 0o644 and mode(tmp_path / "best.pth") == 0o644
    assert torch.load(tmp_path / "best.pth", weights_only=True)["format"] == "edgecls-checkpoint/1"


def test_a_copy_keeps_the_source_mode(tmp_path, umask_022):
    src = tmp_path / "src.png"
    src.write_bytes(b"png")
    os.chmod(src, 0o600)
    atomic_copy(src, tmp_path / "out" / "dst.png")
    assert mode(tmp_path / "out" / "dst.png") == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_a_folder_or_a_file_in_the_path_is_a_one_line_error(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="folder: is a folder; give a file path"):
        atomic_write_bytes(b"x", tmp_path / "folder")
    with pytest.raises(UserError, match="a part of this path is a file"):
        atomic_write_bytes(b"x", tmp_path / "file" / "a.json")
    assert (tmp_path / "file").read_text() == "x" and os.listdir(tmp_path / "folder") == []
