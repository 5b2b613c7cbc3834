"""`edgecls data verify`: every bad-image kind, duplicates and leakage, counts, sizes, quarantine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cmd
from PIL import Image

from edgecls.data.tools.verify_report import quarantine, verify_dataset
from edgecls.errors import UserError


@pytest.fixture()
def messy(digits_dir, tmp_path) -> Path:
    """Real digits (3 classes, train + val) plus one file of every bad kind."""
    root = tmp_path / "messy"
    for split, n in (("train", 12), ("val", 3)):
        for cls in ("0", "1", "2"):
            (root / split / cls).mkdir(parents=True)
            for f in sorted((digits_dir / split / cls).iterdir())[:n]:
                shutil.copy(f, root / split / cls / f.name)
    t = root / "train"
    (t / "0" / "empty.png").write_bytes(b"")
    (t / "0" / "notes.jpg").write_text("this is not a picture")
    good = sorted((t / "1").iterdir())[0]
    (t / "1" / "cut.png").write_bytes(good.read_bytes()[:120])
    Image.new("RGB", (5, 40), (200, 10, 10)).save(t / "1" / "thin.png")
    Image.new("RGB", (24, 24), (10, 200, 10)).save(t / "2" / "anim.gif")
    shutil.copy(good, t / "1" / "z_copy.png")  # duplicate in the same class
    shutil.copy(sorted((t / "2").glob("digits_*"))[0], root / "val" / "2" / "leaked.png")  # train/val leakage
    shutil.copy(sorted((t / "0").glob("digits_*"))[0], t / "2" / "mislabelled.png")  # same image in two classes
    (t / "README.md").write_text("stray")
    big = Image.effect_noise((64, 48), 30).convert("RGB")
    big.save(t / "0" / "big.jpg", quality=90)
    return root


def kinds_of(report: dict) -> dict[str, str]:
    return {Path(p["path"]).name: p["kind"] for p in report["problems"]}


def test_every_bad_kind_is_found(messy):
    report = verify_dataset(messy, min_size=8)
    assert kinds_of(report) == {
        "empty.png": "zero-byte",
        "notes.jpg": "corrupt",
        "cut.png": "corrupt",
        "thin.png": "tiny",
        "anim.gif": "unsupported",
        "z_copy.png": "duplicate",
        "leaked.png": "leakage",
        "mislabelled.png": "label-conflict",
        "README.md": "stray",
    }
    reasons = {Path(p["path"]).name: p["reason"] for p in report["problems"]}
    assert "truncated" in reasons["cut.png"] and "not an image" in reasons["notes.jpg"]
    assert "5x40" in reasons["thin.png"] and "GIF" in reasons["anim.gif"]
    leak = next(g for g in report["duplicates"] if g["kind"] == "leakage")
    assert [f["split"] for f in leak["files"]] == ["train", "val"]  # the train copy is the one kept
    assert report["counts"] == {"train": {"0": 13, "1": 12, "2": 12}, "val": {"0": 3, "1": 3, "2": 3}}
    assert report["imbalance"]["ratio"] == pytest.approx(13 / 12, abs=1e-3)
    assert report["sizes"]["width"]["max"] == 64 and report["sizes"]["formats"] == {"PNG": 36 + 9, "JPEG": 1}


def test_min_size_is_a_threshold(messy):
    assert "thin.png" not in kinds_of(verify_dataset(messy, min_size=5))
    big = verify_dataset(messy, min_size=33)
    assert "big.jpg" not in kinds_of(big) and big["sizes"]["width"] == {"min": 64, "max": 64, "mean": 64, "median": 64}
    # every 32x32 digit (45, plus the 3 copies) and thin.png; only the 64x48 JPEG is left usable
    assert sum(k == "tiny" for k in kinds_of(big).values()) == 45 + 3 + 1


def test_pixel_hash_finds_reencoded_copies(messy):
    src = sorted((messy / "train" / "1").glob("digits_*.png"))[1]
    Image.open(src).save(messy / "train" / "1" / "same_pixels.bmp")
    assert "same_pixels.bmp" not in kinds_of(verify_dataset(messy, use_cache=False))
    assert kinds_of(verify_dataset(messy, pixel_hash=True, use_cache=False))["same_pixels.bmp"] == "duplicate"


def test_quarantine_moves_keeps_paths_and_never_overwrites(messy, tmp_path):
    qdir = tmp_path / "q"
    (qdir / "train" / "0").mkdir(parents=True)
    (qdir / "train" / "0" / "empty.png").write_text("already here")
    report = verify_dataset(messy)
    moved = quarantine(report, qdir, kinds=("zero-byte", "corrupt", "tiny", "unsupported", "leakage"))
    assert {Path(m["to"]).relative_to(qdir).as_posix() for m in moved} == {
        "train/0/empty_1.png",
        "train/0/notes.jpg",
        "train/1/cut.png",
        "train/1/thin.png",
        "train/2/anim.gif",
        "val/2/leaked.png",
    }
    assert (qdir / "train" / "0" / "empty.png").read_text() == "already here"
    after = verify_dataset(messy)
    assert set(kinds_of(after).values()) == {"duplicate", "label-conflict", "stray"}
    with pytest.raises(UserError, match="inside"):
        quarantine(after, messy / "val" / "q")


def test_flat_layout_and_quarantine_inside_refused(digits_dir, tmp_path):
    root = tmp_path / "flat"
    shutil.copytree(digits_dir / "val" / "3", root / "3")
    (root / "3" / "zero.png").write_bytes(b"")
    report = verify_dataset(root)
    assert report["layout"] == "classes" and list(report["counts"]) == ["all"]
    assert kinds_of(report) == {"zero.png": "zero-byte"}
    with pytest.raises(UserError, match="read as a class"):
        quarantine(report, root / "bad")


def test_cli_text_json_and_strict(messy, tmp_path):
    out = tmp_path / "report.json"
    res = run_cmd(
        ["-m", "edgecls.cli.main", "data", "verify", str(messy), "--json", str(out), "--strict", "--workers", "2"]
    )
    assert res.returncode == 1, res.stderr
    assert "leakage (1):" in res.stdout and "imbalance (train)" in res.stdout and "image sizes:" in res.stdout
    data = json.loads(out.read_text())
    assert data["summary"]["corrupt"] == 2 and data["summary"]["zero-byte"] == 1
    res = run_cmd(
        [
            "-m",
            "edgecls.cli.main",
            "data",
            "verify",
            str(messy),
            "--quarantine",
            str(tmp_path / "q"),
            "--quarantine-kinds",
            "zero-byte,corrupt,tiny,unsupported,duplicate,leakage,label-conflict,stray",
            "--strict",
        ]
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "quarantined 9 file(s)" in res.stdout
    res = run_cmd(["-m", "edgecls.cli.main", "data", "verify", str(messy), "--strict"])
    assert res.returncode == 0 and "0 problem(s)" in res.stdout
    res = run_cmd(["-m", "edgecls.cli.main", "data", "verify", str(messy), "--quarantine-kinds", "broken"])
    assert res.returncode == 2 and res.stderr.startswith("error: --quarantine-kinds")


def test_parallel_path_matches_serial(digits_dir):
    """Over 200 files the work goes to a process pool; the verdicts must be the same as in-process."""
    serial = verify_dataset(digits_dir, workers=1, use_cache=False)
    parallel = verify_dataset(digits_dir, workers=2, use_cache=False)
    assert serial["files"] == parallel["files"] == 1797
    assert serial["counts"] == parallel["counts"] and serial["duplicates"] == parallel["duplicates"]


def test_each_copy_gets_its_own_kind_against_the_kept_file(digits_dir, tmp_path):
    root = tmp_path / "copies"
    for split, cls in (("train", "3"), ("train", "5"), ("val", "3"), ("val", "5")):
        (root / split / cls).mkdir(parents=True)
        for f in sorted((digits_dir / split / cls).iterdir())[:3]:
            shutil.copy(f, root / split / cls / f.name)
    kept = sorted((root / "train" / "3").iterdir())[0]
    shutil.copy(kept, root / "train" / "3" / "z_twice.png")
    shutil.copy(kept, root / "val" / "3" / "z_leak.png")
    assert kinds_of(verify_dataset(root)) == {"z_twice.png": "duplicate", "z_leak.png": "leakage"}
    shutil.copy(kept, root / "train" / "5" / "z_other_class.png")
    shutil.copy(kept, root / "val" / "5" / "z_both.png")  # another class and another split: label-conflict wins
    report = verify_dataset(root)
    assert kinds_of(report) == {
        "z_twice.png": "duplicate",
        "z_leak.png": "leakage",
        "z_other_class.png": "label-conflict",
        "z_both.png": "label-conflict",
    }
    (group,) = report["duplicates"]
    assert group["kind"] == "label-conflict" and [f["kind"] for f in group["files"]] == [
        None,
        "duplicate",
        "label-conflict",
        "leakage",
        "label-conflict",
    ]
    moved = quarantine(report, tmp_path / "q", kinds=("duplicate",))
    assert [Path(m["from"]).name for m in moved] == ["z_twice.png"] and kept.is_file()


def test_cli_numeric_flags_are_checked(messy, capsys):
    from edgecls.cli.data import cli

    for flags, message in (
        (["--workers", "0"], "error: --workers 0: must be at least 1"),
        (["--limit", "-1"], "error: --limit -1: must be at least 0"),
        (["--min-size", "0"], "error: --min-size 0: must be at least 1"),
    ):
        assert cli(["verify", str(messy), *flags]) == 2
        assert capsys.readouterr().err.startswith(message)
