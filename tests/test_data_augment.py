"""`edgecls data augment`: balanced, seeded, originals copied and untouched, refusals."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cmd
from PIL import Image

from edgecls.data.tools.augment import (
    OPERATIONS,
    augment_dataset,
    augment_image,
    distort,
    format_augment_report,
    random_crop,
    random_erase,
    rotate,
)
from edgecls.errors import UserError


def digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def unbalanced(digits_dir, tmp_path) -> Path:
    root = tmp_path / "src"
    for cls, n in (("0", 9), ("1", 3), ("2", 14)):
        (root / "train" / cls).mkdir(parents=True)
        for f in sorted((digits_dir / "train" / cls).iterdir())[:n]:
            shutil.copy(f, root / "train" / cls / f.name)
        shutil.copytree(digits_dir / "val" / cls, root / "val" / cls)
    (root / "train" / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def photo() -> Image.Image:
    """A real-looking RGB test image: a gradient with a bright square (asymmetric on purpose)."""
    y, x = np.mgrid[0:40, 0:60]
    arr = np.stack([x * 4, y * 6, (x + y) * 2], -1).astype(np.uint8)
    arr[5:15, 5:20] = 255
    return Image.fromarray(arr)


def test_each_operation_changes_the_image_and_keeps_its_size():
    img = photo()
    rng = np.random.default_rng(0)
    for op in (
        lambda i: distort(i, rng),
        lambda i: rotate(i, rng, 20),
        lambda i: random_crop(i, rng, 0.6),
        lambda i: random_erase(i, rng, 0.3),
    ):
        out = op(img)
        assert out.size == img.size and out.mode == img.mode
        assert not np.array_equal(np.asarray(out), np.asarray(img))
    for op in OPERATIONS:
        out, used = augment_image(img, np.random.default_rng(1), operations=(op,), probability=0.0)
        assert used == [op] and out.size == img.size
    flipped, _ = augment_image(img, np.random.default_rng(1), operations=("hflip",), probability=1.0)
    assert np.array_equal(np.asarray(flipped), np.asarray(img)[:, ::-1])


def test_rotation_leaves_no_empty_corners():
    white = Image.new("L", (50, 30), 255)
    out = rotate(white, np.random.default_rng(3), max_degrees=30)
    assert np.asarray(out).min() > 200  # the black fill of the rotation was cropped away


def test_balances_classes_copies_originals_and_keeps_val(unbalanced, tmp_path):
    before = digests(unbalanced)
    out = tmp_path / "out"
    result = augment_dataset(unbalanced, out, target_per_class=10, seed=5)
    assert digests(unbalanced) == before  # source untouched
    assert result["counts"] == {
        "0": {"original": 9, "augmented": 1},
        "1": {"original": 3, "augmented": 7},
        "2": {"original": 14, "augmented": 0},
    }
    assert [Path(p).name for p, _ in result["skipped"]] == ["broken.png"]
    for cls, n in (("0", 10), ("1", 10), ("2", 14)):
        files = sorted((out / "train" / cls).iterdir())
        assert len(files) == n
        for f in files:
            Image.open(f).load()  # every written image decodes
    after = digests(out)
    for rel, digest in before.items():
        if not rel.endswith("broken.png"):
            assert after[rel] == digest  # originals copied byte for byte, val/ included
    assert not any("aug" in rel for rel in after if rel.startswith("val/"))


def test_same_seed_same_bytes_other_seed_differs(unbalanced, tmp_path):
    runs = [
        digests(Path(augment_dataset(unbalanced, tmp_path / f"o{i}", 6, seed=s)["out"]) / "train")
        for i, s in enumerate([1, 1, 2])
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_resize_applies_to_every_written_image(unbalanced, tmp_path):
    out = tmp_path / "r"
    augment_dataset(unbalanced, out, 4, resize=(20, 24), operations=("crop", "erase"))
    sizes = {Image.open(p).size for p in out.rglob("*.png")}
    assert sizes == {(24, 20)}


def test_refusals(unbalanced, tmp_path):
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(UserError, match="not empty"):
        augment_dataset(unbalanced, out, 5)
    with pytest.raises(UserError, match="outside the source"):
        augment_dataset(unbalanced, unbalanced / "augmented", 5)
    with pytest.raises(UserError, match="`ops`"):
        augment_dataset(unbalanced, tmp_path / "x", 5, operations=("twirl",))
    augment_dataset(unbalanced, out, 5, force=True)
    assert (out / "keep.txt").read_text() == "user file"


def test_cli_flat_layout(digits_dir, tmp_path):
    src = tmp_path / "flat"
    shutil.copytree(digits_dir / "val" / "4", src / "4")
    out = tmp_path / "bal"
    n = len(list((src / "4").iterdir()))
    res = run_cmd(
        [
            "-m",
            "edgecls.cli.main",
            "data",
            "augment",
            str(src),
            "--target-per-class",
            str(n + 5),
            "--out",
            str(out),
            "--ops",
            "rotate,distort",
            "--seed",
            "9",
        ]
    )
    assert res.returncode == 0, res.stderr
    assert len(list((out / "4").iterdir())) == n + 5 and "the source folder was not changed" in res.stdout
    res = run_cmd(["-m", "edgecls.cli.main", "data", "augment", str(src), "--target-per-class", "3", "--out", str(out)])
    assert res.returncode == 2 and res.stderr.startswith("error: --out") and "--force" in res.stderr
    help_text = " ".join(run_cmd(["-m", "edgecls.cli.main", "data", "augment", "--help"]).stdout.split())
    assert "copy of the originals" in help_text


def test_force_replaces_the_augmented_files_of_an_earlier_run(unbalanced, tmp_path):
    one = unbalanced / "train" / "1"
    first = sorted(one.glob("digits_*.png"))[0]
    lookalike = one / f"{first.stem}_aug00000.png"  # an original named like a new image of `first`
    shutil.copy(sorted((unbalanced / "val" / "1").iterdir())[0], lookalike)
    out = tmp_path / "out"
    augment_dataset(unbalanced, out, target_per_class=12, seed=3)
    assert (out / "train" / "1" / f"x{first.stem}_aug00000.png").is_file()  # renamed around the original
    (out / "train" / "0" / "mine_aug00001.png").write_bytes(b"a user's file, not from a source image")
    result = augment_dataset(unbalanced, out, target_per_class=10, seed=3, force=True)
    assert result["replaced"] == 3 + 8  # class 0: 9 + 3, class 1: 4 + 8, class 2 had none
    for cls, row in result["counts"].items():
        written = {p.name for p in (out / "train" / cls).iterdir()} - {"mine_aug00001.png"}
        assert len(written) == row["original"] + row["augmented"] == max(10, row["original"])
    assert (out / "train" / "1" / lookalike.name).read_bytes() == lookalike.read_bytes()  # the original is kept
    assert (out / "train" / "0" / "mine_aug00001.png").is_file()
    assert "replaced 11 augmented file(s) of an earlier run" in format_augment_report(result)


def test_cli_numeric_flags_are_checked(unbalanced, tmp_path, capsys):
    from edgecls.cli.data import cli

    out = tmp_path / "o"
    for flags, message in (
        (["--probability", "2"], "--probability 2.0: must be between 0 and 1"),
        (["--probability", "-0.1"], "--probability -0.1: must be between 0 and 1"),
        (["--max-rotation", "-5"], "--max-rotation -5.0: must be between 0 and 180"),
        (["--crop-scale", "0"], "--crop-scale 0.0: must be greater than 0"),
        (["--erase-area", "1.5"], "--erase-area 1.5: must be greater than 0.02 and less than 1"),
        (["--target-per-class", "-4"], "--target-per-class -4: must be at least 1"),
        (["--seed", "-1"], "--seed -1: must be at least 0"),
    ):
        assert cli(["augment", str(unbalanced), "--target-per-class", "5", "--out", str(out), *flags]) == 2
        assert capsys.readouterr().err.startswith("error: " + message)
    assert not out.exists()
    with pytest.raises(UserError, match="`probability`"):
        augment_dataset(unbalanced, out, 5, probability=1.5)
