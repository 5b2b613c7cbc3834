"""Folder dataset rules: sorted classes, val matched by name, hidden entries ignored, bad files
found before training and reported by path, numeric class names in one order everywhere."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgecls.data.classmap import discover_classes, read_class_map, write_class_map
from edgecls.data.folder import FolderDataset, bad_file_report, scan_dataset
from edgecls.data.presets import Preprocess
from edgecls.errors import UserError


def write_png(path: Path, value: int, size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), value, np.uint8), mode="L").save(path)
    return path


def make_dataset(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """layout = {"train": {"cat": 3, ...}, "val": {...}}; pixel value encodes the class index order given."""
    for split, classes in layout.items():
        for ci, (name, n) in enumerate(classes.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_png(folder / f"{name}_{i}.png", 10 * ci + i)
    return root


# ----------------------------------------------------------------------------- classes


def test_classes_are_sorted_names_and_val_matched_by_name(tmp_path):
    root = make_dataset(
        tmp_path, {"train": {"zebra": 2, "ant": 2, "Moth": 1}, "val": {"ant": 1, "zebra": 1, "Moth": 1}}
    )
    classes, splits = scan_dataset(root, workers=1)
    assert classes == ["Moth", "ant", "zebra"]  # plain string order, case-sensitive
    for split in splits.values():
        for path, label in split.samples:
            assert Path(path).parent.name == classes[label]
    assert splits["val"].counts(3) == [1, 1, 1]
    assert splits["train"].counts(3) == [1, 2, 2]


def test_numeric_class_names_keep_one_order_everywhere(tmp_path):
    root = make_dataset(tmp_path / "d", {"train": {"2": 2, "10": 2, "1": 1}, "val": {"10": 1, "2": 1, "1": 1}})
    classes, splits = scan_dataset(root, workers=1)
    assert classes == ["1", "10", "2"]
    write_class_map(classes, tmp_path / "class_id.json")
    assert json.loads((tmp_path / "class_id.json").read_text()) == {"0": "1", "1": "10", "2": "2"}
    assert read_class_map(tmp_path / "class_id.json") == classes
    # The val split uses the same indices for the same names.
    val_labels = {Path(p).parent.name: label for p, label in splits["val"].samples}
    assert val_labels == {"1": 0, "10": 1, "2": 2}


def test_hidden_files_and_folders_are_ignored(tmp_path):
    root = make_dataset(tmp_path, {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    (root / "train" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "train" / "a" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "train" / "a" / "._a_0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    write_png(root / "train" / ".ipynb_checkpoints" / "x.png", 1)  # not a class
    write_png(root / "train" / "a" / ".ipynb_checkpoints" / "a_0-checkpoint.png", 1)  # not data
    write_png(root / "val" / ".ipynb_checkpoints" / "x.png", 1)  # not an unknown val class
    (root / "val" / "b" / ".hidden.png").write_bytes(b"junk")
    classes, splits = scan_dataset(root, workers=1)
    assert classes == ["a", "b"]
    assert len(splits["train"].samples) == 4 and splits["train"].bad == []
    assert len(splits["val"].samples) == 2 and splits["val"].bad == []


def test_nested_subfolders_inside_a_class_are_included(tmp_path):
    root = make_dataset(tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 1}})
    write_png(root / "train" / "a" / "more" / "deep.png", 3)
    _, splits = scan_dataset(root, workers=1)
    assert any(p.endswith("deep.png") and label == 0 for p, label in splits["train"].samples)


def test_val_class_unknown_to_train_is_an_error(tmp_path):
    root = make_dataset(tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "c": 1}})
    with pytest.raises(UserError, match=r"\['c'\] are not in train"):
        scan_dataset(root, workers=1)


def test_class_empty_in_val_is_a_warning(tmp_path):
    root = make_dataset(tmp_path, {"train": {"a": 2, "b": 2, "c": 1}, "val": {"a": 1, "b": 0}})
    with pytest.warns(UserWarning) as record:
        classes, splits = scan_dataset(root, workers=1)
    messages = " ".join(str(w.message) for w in record)
    assert "'b'" in messages and "'c'" in messages  # empty folder and missing folder both warned
    assert splits["val"].counts(len(classes)) == [1, 0, 0]


def test_complete_val_gives_no_warning(tmp_path):
    root = make_dataset(tmp_path, {"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 1}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scan_dataset(root, workers=1)


@pytest.mark.parametrize("case", ["no_root", "no_train", "train_without_classes", "only_bad_files"])
def test_unusable_datasets_are_user_errors(tmp_path, case):
    root = tmp_path / "data"
    if case != "no_root":
        root.mkdir()
    if case in ("train_without_classes", "only_bad_files"):
        (root / "train").mkdir()
        (root / "train" / "stray.png").write_bytes(b"")
    if case == "only_bad_files":
        (root / "train" / "a").mkdir()
        (root / "train" / "a" / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError) as err:
        scan_dataset(root, workers=1)
    assert str(root) in str(err.value)


def test_discover_classes_ignores_files_and_hidden_folders(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "readme.txt").write_text("hi")
    assert discover_classes(tmp_path) == ["a", "b"]


# ----------------------------------------------------------------------------- bad files


def test_bad_files_are_found_before_training_and_reported_by_path(tmp_path):
    root = make_dataset(tmp_path, {"train": {"a": 3, "b": 3}, "val": {"a": 2, "b": 2}})
    bad = {
        root / "train" / "a" / "zero.jpg": b"",
        root / "train" / "b" / "text.jpg": b"hello",
        root / "train" / "b" / "truncated.png": (root / "train" / "b" / "b_0.png").read_bytes()[:40],
        root / "val" / "a" / "broken.webp": b"RIFF\x00\x00\x00\x00WEBPjunk",
        root / "train" / "a" / "notes.txt": b"labels were checked by hand",
    }
    for path, data in bad.items():
        path.write_bytes(data)
    shutil.copy(root / "train" / "a" / "a_0.png", root / "train" / "a" / "good_but_wrong_ext.gif")
    classes, splits = scan_dataset(root, workers=1)
    reported = {p: r for s in splits.values() for p, r in s.bad}
    assert set(reported) == {str(p) for p in bad} | {str(root / "train" / "a" / "good_but_wrong_ext.gif")}
    assert reported[str(root / "train" / "a" / "zero.jpg")] == "zero-byte file"
    assert reported[str(root / "train" / "a" / "good_but_wrong_ext.gif")].startswith("unsupported file extension")
    good = {p for s in splits.values() for p, _ in s.samples}
    assert not good & set(reported)
    assert len(splits["train"].samples) == 6 and len(splits["val"].samples) == 4
    report = bad_file_report(splits)
    assert len(report.splitlines()) == len(reported)
    for path in reported:
        assert path in report


def test_every_good_sample_loads_through_the_dataset(tmp_path):
    root = make_dataset(tmp_path, {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    (root / "train" / "a" / "bad.jpg").write_bytes(b"xx")
    _, splits = scan_dataset(root, workers=1)
    pre = Preprocess(input_size=(8, 16), preset="unit")
    ds = FolderDataset(splits["train"].samples, pre)
    batch = torch.stack([ds[i][0] for i in range(len(ds))])
    assert batch.shape == (4, 3, 8, 16)
    assert batch.dtype == torch.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    labels = [ds[i][1] for i in range(len(ds))]
    assert labels == [0, 0, 1, 1]
    # The pixel value written is what comes out (unit preset: v / 255).
    assert torch.allclose(ds[1][0], torch.full((3, 8, 16), 1 / 255))


def test_digits_fixture_is_a_real_ten_class_dataset(digits_dir):
    classes, splits = scan_dataset(digits_dir)
    assert classes == [str(d) for d in range(10)]
    assert len(splits["train"].samples) + len(splits["val"].samples) == 1797
    assert not splits["train"].bad and not splits["val"].bad
    assert min(splits["val"].counts(10)) > 20


# ----------------------------------------------------------------------------- class map file


def test_class_map_round_trip_and_errors(tmp_path):
    classes = ["ants", "bees", "10", "2"]
    write_class_map(classes, tmp_path / "c.json")
    assert read_class_map(tmp_path / "c.json") == classes
    (tmp_path / "list.json").write_text('["x", "y"]')
    assert read_class_map(tmp_path / "list.json") == ["x", "y"]
    for name, text in [
        ("gap.json", '{"0": "a", "2": "b"}'),
        ("keys.json", '{"a": "b"}'),
        ("bad.json", "{"),
        ("num.json", "3"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError):
            read_class_map(tmp_path / name)
    with pytest.raises(UserError, match="not found"):
        read_class_map(tmp_path / "missing.json")
