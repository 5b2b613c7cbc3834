"""The end of training on real digit images: best.pth evaluated on val (and test/), its figures in the run
folder at their expected pixel sizes, the honest-metrics lines of the final table, and the top-K cap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import copy_digits
from PIL import Image

from edgecls import evaluation
from edgecls.engine.config import TrainConfig
from edgecls.engine.recorder import CURVES_SIZE
from edgecls.engine.trainer import fit

FIGURES = ("confusion_matrix.png", "per_class.png", "misclassified.png")


def add_test_split(digits_dir: Path, data: Path, digits: str, n: int = 5) -> None:
    """data/test/<digit>/: real val images of the fixture that data's val/ does not hold (copy_digits takes the
    first ones)."""
    for digit in digits:
        out = data / "test" / digit
        out.mkdir(parents=True)
        for src in sorted((digits_dir / "val" / digit).iterdir())[-n:]:
            shutil.copy(src, out / src.name)


@pytest.fixture(scope="module")
def with_test(digits_dir, tmp_path_factory) -> Path:
    data = copy_digits(digits_dir, tmp_path_factory.mktemp("final") / "data", digits="012", n_train=16, n_val=6)
    add_test_split(digits_dir, data, "012")
    return data


def train(data: Path, run: Path, **kw):
    base = dict(data=str(data), backbone="FP_classifier", input_size=(32, 32), epochs=2, batch_size=16, workers=0,
                hflip=0.0, optimizer="ADAMW", lr=3e-3, snapshot_path=str(run), model_def_path=None, seed=0)  # fmt: skip
    base.update(kw)
    lines: list[str] = []
    return fit(TrainConfig(**base), log=lines.append), lines


def pixels(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 1000, path
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def inches_to_pixels(size: tuple[float, float]) -> tuple[int, int]:
    return round(size[0] * 100), round(size[1] * 100)


@pytest.fixture(scope="module")
def finished(with_test, tmp_path_factory):
    """A 2-epoch run on 3 classes with a test/ split: (run folder, its log lines, what it printed)."""
    import contextlib
    import io

    run = tmp_path_factory.mktemp("final_run") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        _, lines = train(with_test, run)
    return run, lines, printed.getvalue()


def test_best_checkpoint_is_evaluated_on_val_and_test_with_figures_of_the_expected_size(finished, with_test):
    run, _, _ = finished
    for split, n_images in (("val", 18), ("test", 15)):
        rep = json.loads((run / f"{split}_results.json").read_text())
        assert rep["num_images"] == n_images and rep["classes"] == ["0", "1", "2"]
        assert list(rep["topk"]) == ["top1", "top2"]  # 3 classes: K kept below the class count
        assert len(rep["predictions"]) == n_images
        assert {Path(p["path"]).parent.parent.name for p in rep["predictions"]} == {split}
        wrong = sum(p["true"] != p["predicted"] for p in rep["predictions"])
        assert rep["accuracy"] == pytest.approx(1 - wrong / n_images)
        sizes = {name: pixels(run / f"{split}_{name}") for name in FIGURES}
        assert sizes["confusion_matrix.png"] == inches_to_pixels(evaluation.confusion_figsize(3))
        assert sizes["per_class.png"] == inches_to_pixels(evaluation.per_class_figsize(3))
        shown = min(wrong, evaluation.MISCLASSIFIED_LIMIT)
        assert sizes["misclassified.png"] == inches_to_pixels(evaluation.misclassified_figsize(shown))
    assert pixels(run / "curves.png") == inches_to_pixels(CURVES_SIZE)
    assert json.loads((run / "timings.json").read_text())["final_eval_s"] > 0


def test_val_figures_are_those_of_best_pth_as_eval_computes_them(finished):
    run, _, _ = finished
    from edgecls.predict import Predictor

    rep = json.loads((run / "val_results.json").read_text())
    args = yaml.safe_load((run / "args.yaml").read_text())
    # the run's batch size: the same batches give bit-identical scores
    result = evaluation.run_dataset_mode(Predictor.from_path(run / "best.pth"), args["data"], "val", args["batch_size"])
    again = evaluation.classification_report(result["y_true"], result["scores"], 3, topk=2)
    assert rep["accuracy"] == again["accuracy"] and rep["confusion_matrix"] == again["confusion_matrix"]
    assert rep["predictions"] == evaluation.prediction_rows(result)


def test_final_table_reports_the_test_figures_of_the_checkpoint_val_chose_and_lists_the_files(finished):
    run, lines, printed = finished
    test = json.loads((run / "test_results.json").read_text())
    assert f"test top-1      {test['accuracy']:.4f}  (best.pth, chosen on val; 15 test images)" in printed
    assert f"test top-2      {test['topk']['top2']:.4f}" in printed
    assert "val files       val_results.json, val_confusion_matrix.png, val_per_class.png" in printed
    assert "test files      test_results.json, test_confusion_matrix.png" in printed
    assert "--test-fraction" not in printed
    # the top-K cap: said once, K = 2 everywhere
    assert [line for line in lines if "would always be 1.0" in line] == [
        "topk 5: with 3 classes top-5 would always be 1.0; reporting top-2"
    ]
    epochs = [line for line in lines if line.startswith(("epoch 1/", "epoch 2/"))]
    assert len(epochs) == 2 and all(" top-2 " in line and "top-5" not in line for line in epochs)
    assert "val top-2 " in printed and "top-5" not in printed
    assert "val_top2" in torch.load(run / "best.pth", weights_only=True)["metrics"]


def test_without_test_split_the_table_says_val_is_the_selection_split(digits_dir, tmp_path, capsys):
    data = copy_digits(digits_dir, tmp_path / "data", digits="01", n_train=12, n_val=4)
    _, lines = train(data, tmp_path / "run", epochs=1)
    printed = capsys.readouterr().out
    assert "val chose best.pth (it is the selection split)" in printed
    assert "edgecls data split --test-fraction" in printed
    assert not list((tmp_path / "run").glob("test_*"))
    for name in FIGURES:
        pixels(tmp_path / "run" / f"val_{name}")
    # 2 classes: top-K would repeat top-1, so there is no top-K column at all
    assert "topk 5: with 2 classes top-5 would always be 1.0; reporting top-1 only" in lines
    epoch = next(line for line in lines if line.startswith("epoch 1/1"))
    assert " top-1 " in epoch and "top-2" not in epoch and "top-5" not in epoch
    assert "val top-" not in printed.replace("val top-1 ", "")


def test_final_eval_can_be_turned_off(with_test, tmp_path, capsys):
    train(with_test, tmp_path / "run", epochs=1, final_eval=False)
    printed = capsys.readouterr().out
    assert not list((tmp_path / "run").glob("val_*")) and not list((tmp_path / "run").glob("test_*"))
    assert "test            not evaluated (final_eval is off" in printed
    assert "final_eval_s" not in json.loads((tmp_path / "run" / "timings.json").read_text())


def test_a_test_split_with_a_class_the_model_lacks_is_skipped_with_a_warning(with_test, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(with_test, data)
    shutil.copytree(data / "test" / "2", data / "test" / "9")
    _, lines = train(data, tmp_path / "run", epochs=1)
    assert any(line.startswith("warning: final evaluation of test/ skipped:") and "'9'" in line for line in lines)
    assert (tmp_path / "run" / "val_confusion_matrix.png").is_file()
    assert not (tmp_path / "run" / "test_results.json").exists()
    assert "test            not evaluated" in capsys.readouterr().out
