"""`edgecls data split`: stratified, seeded, never loses an image, refuses to touch val/ test/."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from conftest import run_cmd

from edgecls.data.tools.split import split_dataset, split_sizes
from edgecls.errors import UserError


def make_flat(digits_dir: Path, out: Path, per_class: dict[str, int]) -> Path:
    """DIR/<class>/ with real digit PNGs copied from the shared fixture."""
    for cls, n in per_class.items():
        files = sorted((digits_dir / "train" / cls).iterdir())[:n]
        assert len(files) == n
        (out / cls).mkdir(parents=True)
        for f in files:
            shutil.copy(f, out / cls / f.name)
    return out


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha1 of every file under root."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def contents(root: Path, split: str) -> dict[str, set[str]]:
    return (
        {
            c.name: {hashlib.sha1(f.read_bytes()).hexdigest() for f in c.iterdir()}
            for c in sorted((root / split).iterdir())
        }
        if (root / split).is_dir()
        else {}
    )


def test_split_sizes_keep_one_in_train_and_fill_val():
    assert split_sizes(100, 0.2, 0.1) == (70, 20, 10)
    assert split_sizes(1, 0.5, 0.0) == (1, 0, 0)
    assert split_sizes(2, 0.2, 0.0) == (1, 1, 0)
    assert split_sizes(2, 0.3, 0.3) == (1, 1, 0)
    assert split_sizes(3, 0.1, 0.1) == (1, 1, 1)
    for n in range(1, 30):
        train, val, test = split_sizes(n, 0.45, 0.45)
        assert train >= 1 and train + val + test == n


def test_copy_split_of_class_folders_is_stratified_and_keeps_originals(digits_dir, tmp_path):
    root = make_flat(digits_dir, tmp_path / "d", {"0": 20, "1": 10, "2": 1})
    originals = tree(root)
    result = split_dataset(root, val_fraction=0.2, test_fraction=0.1, seed=0)
    assert result["mode"] == "copy" and result["total"] == 31
    assert result["counts"] == {
        "0": {"train": 14, "val": 4, "test": 2},
        "1": {"train": 7, "val": 2, "test": 1},
        "2": {"train": 1, "val": 0, "test": 0},
    }
    # originals untouched, byte for byte
    assert {k: v for k, v in tree(root).items() if k.split("/")[0] in ("0", "1", "2")} == originals
    # every original is in exactly one split, in its own class
    for cls in ("0", "1", "2"):
        orig = {v for k, v in originals.items() if k.startswith(cls + "/")}
        parts = [contents(root, s).get(cls, set()) for s in ("train", "val", "test")]
        assert set().union(*parts) == orig and sum(len(p) for p in parts) == len(orig)


def test_same_seed_same_split_other_seed_differs(digits_dir, tmp_path):
    picks = []
    for i, seed in enumerate([7, 7, 8]):
        root = make_flat(digits_dir, tmp_path / f"d{i}", {"3": 30, "4": 30})
        split_dataset(root, val_fraction=0.3, seed=seed, move=True)
        picks.append(sorted(p.relative_to(root).as_posix() for p in (root / "val").rglob("*.png")))
    assert picks[0] == picks[1]
    assert picks[0] != picks[2]


def test_move_leaves_no_class_folders_behind(digits_dir, tmp_path):
    root = make_flat(digits_dir, tmp_path / "d", {"5": 10, "6": 10})
    (root / "5" / "README.txt").write_text("not an image")
    before = sorted(tree(root).values())
    result = split_dataset(root, val_fraction=0.2, seed=1, move=True)
    assert result["mode"] == "move"
    assert not (root / "6").exists()
    assert (root / "5" / "README.txt").is_file()  # non-image files are left where they were
    assert result["left"] == [str(root / "5" / "README.txt")]
    assert sorted(tree(root).values()) == before


def test_train_folder_is_split_into_val_by_moving(digits_dir, tmp_path):
    root = tmp_path / "d"
    make_flat(digits_dir, root / "train", {"7": 10, "8": 5})
    before = sorted(tree(root).values())
    result = split_dataset(root, val_fraction=0.2, seed=0)
    assert result["layout"] == "splits" and result["mode"] == "move"
    assert result["counts"] == {"7": {"train": 8, "val": 2}, "8": {"train": 4, "val": 1}}
    assert sorted(tree(root).values()) == before  # nothing lost, nothing duplicated (no leakage)


def test_existing_val_is_refused_then_resplit_with_force(digits_dir, tmp_path):
    root = tmp_path / "d"
    make_flat(digits_dir, root / "train", {"0": 10, "1": 10})
    split_dataset(root, val_fraction=0.2, seed=0)
    snapshot = tree(root)
    with pytest.raises(UserError, match="val/ already exists; pass `force`"):
        split_dataset(root, val_fraction=0.3, seed=0)
    assert tree(root) == snapshot
    result = split_dataset(root, val_fraction=0.3, test_fraction=0.2, seed=4, force=True)
    assert result["counts"]["0"] == {"train": 5, "val": 3, "test": 2}
    assert sorted(tree(root).values()) == sorted(snapshot.values())


def test_force_resplit_keeps_same_named_files_from_two_splits(digits_dir, tmp_path):
    root = tmp_path / "d"
    make_flat(digits_dir, root / "train", {"2": 6})
    (root / "val" / "2").mkdir(parents=True)
    other = sorted((digits_dir / "train" / "2").iterdir())[10]
    shutil.copy(other, root / "val" / "2" / sorted((root / "train" / "2").iterdir())[0].name)  # same name, other image
    before = sorted(tree(root).values())
    split_dataset(root, val_fraction=0.5, seed=0, force=True)
    assert sorted(tree(root).values()) == before


def test_cli_errors_are_one_line(digits_dir, tmp_path):
    root = make_flat(digits_dir, tmp_path / "d", {"0": 4})
    bad = run_cmd(["-m", "edgecls.cli.main", "data", "split", str(root), "--val-fraction", "1.5"])
    assert bad.returncode == 2 and bad.stderr.startswith("error: --val-fraction 1.5") and "Traceback" not in bad.stderr
    missing = run_cmd(["-m", "edgecls.cli.main", "data", "split", str(tmp_path / "nope")])
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    (tmp_path / "half" / "val" / "a").mkdir(parents=True)
    half = run_cmd(["-m", "edgecls.cli.main", "data", "split", str(tmp_path / "half")])
    assert half.returncode == 2 and "no train/" in half.stderr
    ok = run_cmd(["-m", "edgecls.cli.main", "data", "split", str(root), "--seed", "3"])
    assert ok.returncode == 0, ok.stderr
    assert "counts checked before = after" in ok.stdout
    again = run_cmd(["-m", "edgecls.cli.main", "data", "split", str(root)])
    assert again.returncode == 2 and "--force" in again.stderr


def test_cli_fractions_use_one_rule_for_split_and_demo_data(digits_dir, tmp_path, capsys):
    from edgecls.cli.data import cli
    from edgecls.cli.demo import cli as demo_cli

    root = make_flat(digits_dir, tmp_path / "d", {"0": 4})
    assert cli(["split", str(root), "--test-fraction", "-0.1"]) == 2
    assert capsys.readouterr().err.startswith("error: --test-fraction -0.1: must be at least 0 and less than 1")
    out = tmp_path / "demo"
    for flags, message in (
        (["--limit", "0"], "--limit 0: must be at least 1"),
        (["--limit", "-5"], "--limit -5: must be at least 1"),
        (["--val-fraction", "1.0"], "--val-fraction 1.0: must be greater than 0 and less than 1"),
        (["--val-fraction", "1.5"], "--val-fraction 1.5: must be greater than 0 and less than 1"),
        (["--val-fraction", "-0.5"], "--val-fraction -0.5: must be greater than 0 and less than 1"),
        (["--seed", "-1"], "--seed -1: must be at least 0"),
    ):
        assert demo_cli(["--out", str(out), "--source", "digits", *flags]) == 2
        assert capsys.readouterr().err.startswith("error: " + message)
    assert not out.exists()
    # a high fraction of a tiny set still leaves every class a train/ image, as `data split` does
    assert demo_cli(["--out", str(out), "--source", "digits", "--limit", "12", "--val-fraction", "0.95"]) == 0
    classes = {p.name for p in out.glob("*/*")}
    assert {p.name for p in (out / "train").iterdir()} == classes
    assert len(list(out.rglob("*.png"))) == 12
