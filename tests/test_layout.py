"""edgecls.data.layout: the one walker and the one class-folder rule, and the tools that now share them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgecls.classify import collect_images
from edgecls.data.classmap import discover_classes
from edgecls.data.folder import list_split_files
from edgecls.data.layout import class_folders, is_hidden, walk_files, walk_paths
from edgecls.evaluation import dataset_samples
from edgecls.export.verify import load_samples


def make_tree(root: Path, digits_dir: Path) -> Path:
    """root/{b,a,10,2}/ with real digit PNGs, a nested folder, hidden files and folders, and a note."""
    src = sorted((digits_dir / "train" / "3").iterdir())
    for i, name in enumerate(["b/x.png", "b/sub/y.png", "a/z.png", "10/q.png", "2/r.png", "a/.hidden/h.png"]):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src[i], root / name)
    (root / "a" / "._z.png").write_bytes(b"resource fork")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "__MACOSX").mkdir()
    (root / ".ipynb_checkpoints").mkdir()
    return root


def test_walker_order_hidden_entries_and_paths_as_given(digits_dir, tmp_path, monkeypatch):
    root = make_tree(tmp_path / "d", digits_dir)
    rel = [os.path.relpath(p, root) for p in walk_files(root)]
    assert rel == ["10/q.png", "2/r.png", "a/notes.txt", "a/z.png", "b/x.png", "b/sub/y.png"]
    assert [os.path.relpath(p, root) for p in walk_files(root, images_only=True)] == [
        r for r in rel if r.endswith(".png")
    ]
    monkeypatch.chdir(tmp_path)
    assert walk_files("./d/b") == ["./d/b/x.png", "./d/b/sub/y.png"]  # joined onto the folder as given
    assert walk_paths("./d/b")[0] == Path("d/b/x.png")
    assert all(is_hidden(n) for n in (".DS_Store", "._x.jpg", "__MACOSX")) and not is_hidden("a.png")


def test_class_rule_is_plain_string_order_of_visible_folders(digits_dir, tmp_path):
    root = make_tree(tmp_path / "d", digits_dir)
    assert class_folders(root) == ["10", "2", "a", "b"] == discover_classes(root)
    assert class_folders(tmp_path / "missing") == []


def test_training_eval_inference_and_export_list_the_same_files(digits_dir, tmp_path):
    root = make_tree(tmp_path / "d", digits_dir)
    classes = class_folders(root)
    training = [p for p, _ in list_split_files(root, classes)]
    samples, skipped = dataset_samples(root, classes)
    assert [p for p, _ in samples] == [p for p in training if p.endswith(".png")]
    assert skipped == [(str(root / "a" / "notes.txt"), "unsupported file extension")]
    found, many = collect_images(str(root))
    assert many and sorted(found) == sorted(p for p, _ in samples)
    export, bad = load_samples(root, classes, 100)
    assert not bad and sorted(s.name for s in export) == sorted(found)
    assert {s.name: s.label for s in export}[str(root / "b" / "sub" / "y.png")] is None  # parent "sub": no class
