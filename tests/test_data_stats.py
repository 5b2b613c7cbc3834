"""`edgecls data stats`: counts per class and split match the files, and a real PNG histogram."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import run_cmd
from PIL import Image

from edgecls.data.tools.stats import dataset_stats, plot_histogram
from edgecls.errors import UserError


def test_counts_match_the_folders(digits_dir):
    stats = dataset_stats(digits_dir)
    assert stats["splits"] == ["train", "val"] and stats["classes"] == [str(d) for d in range(10)]
    for split in ("train", "val"):
        for cls in stats["classes"]:
            assert stats["counts"][split][cls] == len(list((digits_dir / split / cls).glob("*.png")))
    assert stats["total"] == 1797
    train = stats["counts"]["train"]
    assert stats["imbalance"] == pytest.approx(max(train.values()) / min(train.values()), abs=1e-3)


def test_flat_layout_hidden_files_and_missing_classes(digits_dir, tmp_path):
    root = tmp_path / "flat"
    shutil.copytree(digits_dir / "val" / "1", root / "1")
    (root / "empty").mkdir()
    (root / "1" / ".DS_Store").write_bytes(b"junk")
    (root / "1" / "notes.txt").write_text("not counted")
    stats = dataset_stats(root)
    assert stats["splits"] == ["all"] and stats["counts"]["all"] == {
        "1": len(list((digits_dir / "val" / "1").iterdir())),
        "empty": 0,
    }
    with pytest.raises(UserError, match="no such folder"):
        dataset_stats(tmp_path / "missing")


def test_histogram_png_has_a_bar_per_split(digits_dir, tmp_path):
    png = plot_histogram(dataset_stats(digits_dir), tmp_path / "plots" / "hist.png")
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert img.shape[0] > 300 and img.shape[1] > 500
    blue = (abs(img[..., 0] - 31) < 8) & (abs(img[..., 1] - 119) < 8) & (abs(img[..., 2] - 180) < 8)  # C0: train
    orange = (abs(img[..., 0] - 255) < 8) & (abs(img[..., 1] - 127) < 8) & (abs(img[..., 2] - 14) < 8)  # C1: val
    assert blue.sum() > 4 * orange.sum() > 0  # train bars are ~4x taller than val bars
    assert not list((tmp_path / "plots").glob(".tmp-*"))


def test_cli_table_json_and_default_png(digits_dir, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(digits_dir, root)
    out = tmp_path / "s.json"
    res = run_cmd(["-m", "edgecls.cli.main", "data", "stats", str(root), "--json", str(out)])
    assert res.returncode == 0, res.stderr
    assert (root / "class_histogram.png").is_file() and "total" in res.stdout
    assert json.loads(out.read_text())["total"] == 1797
    res = run_cmd(["-m", "edgecls.cli.main", "data", "stats", str(tmp_path / "nope"), "--no-png"])
    assert res.returncode == 2 and res.stderr.startswith("error:")


def test_existing_output_files_are_refused_before_counting_unless_force(digits_dir, tmp_path, capsys, monkeypatch):
    import edgecls.data.tools.stats as stats_module
    from edgecls.cli.data import cli

    root = tmp_path / "flat"
    shutil.copytree(digits_dir / "val" / "1", root / "1")
    image = sorted((root / "1").iterdir())[0]
    before = image.read_bytes()
    counted = []
    real_stats = stats_module.dataset_stats
    monkeypatch.setattr(stats_module, "dataset_stats", lambda d: counted.append(d) or real_stats(d))
    for flags in (["--png", str(image)], ["--no-png", "--json", str(image)]):
        assert cli(["stats", str(root), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flags[-2]} {image}: already exists") and "--force" in err
        assert image.read_bytes() == before and not counted  # refused before any counting
    assert cli(["stats", str(root)]) == 0 and (root / "class_histogram.png").is_file()
    assert cli(["stats", str(root)]) == 0  # the default chart is the tool's own: replaced
    out = tmp_path / "s.json"
    out.write_text("old")
    assert cli(["stats", str(root), "--json", str(out), "--force"]) == 0
    assert json.loads(out.read_text())["total"] == len(list((root / "1").iterdir()))
    with pytest.raises(SystemExit):
        cli(["stats", "--help"])
    assert "--force" in capsys.readouterr().out
