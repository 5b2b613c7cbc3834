"""train.py's dataset rules, shared with `edgecls data verify`: wherever training refuses a folder, verify
`--strict` fails; loose images are named by both; the class folders a copy-mode split leaves are pointed out."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import pytest
from conftest import copy_digits

from edgecls.cli.data import cli as data_cli
from edgecls.data.folder import scan_dataset
from edgecls.data.tools.verify_report import verify_dataset
from edgecls.engine.config import TrainConfig
from edgecls.engine.trainer import fit
from edgecls.errors import UserError


@pytest.fixture()
def good(digits_dir, tmp_path) -> Path:
    """Real digits: train/ and val/ with classes 0, 1, 2 (6 and 2 images each)."""
    return copy_digits(digits_dir, tmp_path / "good", digits="012", n_train=6, n_val=2)


def _break(root: Path, case: str) -> Path:
    """Turn the good dataset into one train.py refuses, one way per case."""
    if case == "unknown_val_class":
        shutil.copytree(root / "val" / "2", root / "val" / "7")
    elif case == "only_in_val":  # the case: a class folder that only val/ has
        shutil.rmtree(root / "train" / "2")
    elif case == "no_val":
        shutil.rmtree(root / "val")
    elif case == "val_unreadable":
        for f in (root / "val").rglob("*.png"):
            f.write_bytes(b"not a png")
    elif case == "train_unreadable":
        for f in (root / "train").rglob("*.png"):
            f.write_bytes(b"")
    elif case == "one_class":
        for split in ("train", "val"):
            for digit in ("1", "2"):
                shutil.rmtree(root / split / digit)
    elif case == "train_without_classes":
        shutil.rmtree(root / "train")
        (root / "train").mkdir()
    return root


REFUSED = [
    ("unknown_val_class", "['7'] are not in train"),
    ("only_in_val", "['2'] are not in train"),
    ("no_val", "no val/ images"),
    ("val_unreadable", "no val/ images"),
    ("train_unreadable", "no readable images in any class folder"),
    ("one_class", "only one class ('0')"),
    ("train_without_classes", "no class folders"),
]


def _train(root: Path, run: Path) -> None:
    fit(TrainConfig(data=str(root), backbone="FP_classifier", input_size=(32, 32), epochs=1, workers=0,
                    snapshot_path=str(run), model_def_path=None))  # fmt: skip


@pytest.mark.parametrize("case,message", REFUSED, ids=[c for c, _ in REFUSED])
def test_verify_strict_fails_wherever_train_refuses(good, tmp_path, case, message, capsys):
    root = _break(good, case)
    with pytest.raises(UserError, match=re.escape(message)):
        _train(root, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert data_cli(["verify", str(root), "--strict", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "train.py refuses this dataset" in out and message in out
    assert message in " ".join(verify_dataset(root, workers=1)["dataset_problems"])


def test_a_dataset_train_accepts_passes_strict(good, capsys):
    assert data_cli(["verify", str(good), "--strict", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "0 problem(s)" in out and "refuses" not in out


def test_verify_refuses_what_train_refuses_before_any_report(good, capsys):
    shutil.rmtree(good / "train")  # val/ alone: both stop with a one-line error
    with pytest.raises(UserError, match="no train/ folder"):
        scan_dataset(good)
    assert data_cli(["verify", str(good), "--strict"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_loose_images_are_named_by_train_and_verify(good):
    some = sorted((good / "train" / "0").iterdir())
    for i, src in enumerate(some[:4]):
        shutil.copy(src, good / f"loose_{i}.png")  # in the dataset's root
    shutil.copy(some[0], good / "train" / "in_train_root.png")
    shutil.copy(some[1], good / "val" / "in_val_root.png")
    shutil.copy(some[2], good / "class_histogram.png")  # `edgecls data stats`' own chart
    (good / "README.txt").write_text("not an image")
    with pytest.warns(UserWarning) as record:
        scan_dataset(good, workers=1)
    (message,) = [str(w.message) for w in record if "outside any class folder" in str(w.message)]
    assert message.startswith("6 image(s) outside any class folder are not used: ")
    assert str(good / "loose_0.png") in message and "and 3 more" in message
    assert "class_histogram" not in message and "README" not in message
    stray = {Path(p["path"]).name for p in verify_dataset(good, workers=1)["problems"] if p["kind"] == "stray"}
    assert stray == {"loose_0.png", "loose_1.png", "loose_2.png", "loose_3.png", "in_train_root.png", "in_val_root.png"}


def test_a_clean_dataset_gives_train_no_warning(good):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scan_dataset(good, workers=1)


def test_copy_split_says_the_originals_stay_and_verify_warns(digits_dir, tmp_path, capsys):
    root = tmp_path / "photos"
    for digit in ("3", "5"):
        shutil.copytree(digits_dir / "val" / digit, root / digit)
    assert data_cli(["split", str(root), "--val-fraction", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "the originals were copied, not moved" in out and "second copy of the data" in out
    assert f"cd {root} && rm -r 3 5" in out
    assert data_cli(["verify", str(root), "--strict", "--workers", "1"]) == 0  # a warning, not a problem
    out = capsys.readouterr().out
    assert "warning: " in out and "2 class folder(s) beside train/ (3/, 5/)" in out
    assert data_cli(["stats", str(root), "--no-png"]) == 0
    assert "2 class folder(s) beside train/ (3/, 5/) are a second copy" in capsys.readouterr().out
    for digit in ("3", "5"):
        shutil.rmtree(root / digit)
    assert verify_dataset(root, workers=1)["warnings"] == []


def test_move_split_leaves_nothing_to_warn_about(digits_dir, tmp_path, capsys):
    root = tmp_path / "photos"
    for digit in ("3", "5"):
        shutil.copytree(digits_dir / "val" / digit, root / digit)
    assert data_cli(["split", str(root), "--move"]) == 0
    assert "second copy" not in capsys.readouterr().out
