"""Training loop on real digit images: it learns, early stopping fires, bad files are skipped
and reported, the run folder holds what it promises, and the saved best model reproduces the
validation accuracy written in summary.csv."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from PIL import Image

from edgecls.data.folder import scan_dataset
from edgecls.data.presets import Preprocess
from edgecls.engine.checkpoint import load_checkpoint, model_from_checkpoint
from edgecls.engine.config import TrainConfig
from edgecls.engine.early_stopping import EarlyStopping
from edgecls.engine.optim import class_weight_tensor, freeze_backbone, make_optimizer, make_scheduler
from edgecls.engine.recipes import resolve_recipe
from edgecls.engine.recorder import SUMMARY_FIELDS
from edgecls.engine.trainer import fit
from edgecls.errors import UserError
from edgecls.models import create_model


def copy_subset(digits_dir: Path, dest: Path, digits=("0", "1", "2"), n_train=20, n_val=6, rename=None) -> Path:
    """A few real digit images per class copied from the shared read-only fixture."""
    for split, n in (("train", n_train), ("val", n_val)):
        for digit in digits:
            out = dest / split / (rename or {}).get(digit, digit)
            out.mkdir(parents=True)
            for src in sorted((digits_dir / split / digit).iterdir())[:n]:
                shutil.copy(src, out / src.name)
    return dest


@pytest.fixture(scope="module")
def tiny_data(digits_dir, tmp_path_factory) -> Path:
    return copy_subset(digits_dir, tmp_path_factory.mktemp("tiny") / "data")


def tiny_config(data: Path, run: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        backbone="FP_classifier",
        input_size=(32, 32),
        epochs=1,
        batch_size=16,
        workers=0,
        hflip=0.0,
        crop_scale=0.8,
        optimizer="ADAMW",
        lr=3e-3,
        snapshot_path=str(run) if run else None,
        model_def_path=None,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


def read_rows(run: Path) -> list[dict]:
    with (run / "summary.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- a real run


def test_short_training_run_beats_chance_by_a_wide_margin(trained_run):
    rows = read_rows(trained_run)
    assert list(rows[0]) == SUMMARY_FIELDS
    assert {"epoch", "train_loss", "val_loss", "val_top1", "val_topk", "lr", "images_per_s", "seconds"} <= set(rows[0])
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    best = max(float(r["val_top1"]) for r in rows)
    assert best >= 0.85, f"val top-1 {best:.3f} on 10 classes (chance 0.10)"
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    for r in rows:
        assert float(r["val_topk"]) >= float(r["val_top1"])
        assert float(r["images_per_s"]) > 0 and float(r["seconds"]) > 0 and float(r["lr"]) > 0


def test_run_folder_contents(trained_run, digits_dir):
    for name in ("best.pth", "last.pth", "class_id.json", "summary.csv", "args.yaml", "curves.png"):
        assert (trained_run / name).is_file(), name
    assert not (trained_run / "bad_files.txt").exists()  # nothing was bad
    assert json.loads((trained_run / "class_id.json").read_text()) == {str(i): str(i) for i in range(10)}
    args = yaml.safe_load((trained_run / "args.yaml").read_text())
    assert args["backbone"] == "FP_classifier" and args["input_size"] == [32, 32] and args["data"] == str(digits_dir)
    with Image.open(trained_run / "curves.png") as img:
        assert img.format == "PNG" and img.width > 300
    timings = json.loads((trained_run / "timings.json").read_text())
    assert (
        timings["train_images"] == sum(1 for _ in (digits_dir / "train").rglob("*.png"))
        and not timings["train_cache_streamed"]
    )
    first_row = read_rows(trained_run)[0]
    assert (
        0 < timings["first_step_s"] < timings["first_epoch_s"] == pytest.approx(float(first_row["seconds"]), abs=0.01)
    )
    last = load_checkpoint(trained_run / "last.pth")
    assert last["train"]["epoch"] == len(read_rows(trained_run)) - 1
    assert {"optimizer", "scheduler", "rng", "early_stopping", "config"} <= set(last["train"])


def test_best_checkpoint_reproduces_the_recorded_val_accuracy(trained_run, digits_dir):
    ckpt = load_checkpoint(trained_run / "best.pth")
    assert "train" not in ckpt  # best.pth is a deployable model, not a resume point
    rows = read_rows(trained_run)
    best_row = max(rows, key=lambda r: float(r["val_top1"]))
    assert ckpt["metrics"]["epoch"] == int(best_row["epoch"])
    assert ckpt["classes"] == [str(i) for i in range(10)]
    model = model_from_checkpoint(ckpt)
    pre = Preprocess.from_dict(ckpt["preprocess"])
    assert pre.input_size == (32, 32) and pre.preset == "kneron"
    _, splits = scan_dataset(digits_dir)
    from edgecls.data.images import load_rgb

    correct = 0
    samples = splits["val"].samples
    with torch.no_grad():
        for i in range(0, len(samples), 64):
            chunk = samples[i : i + 64]
            x = torch.stack([pre(load_rgb(p)) for p, _ in chunk])
            correct += (model(x).argmax(1) == torch.tensor([label for _, label in chunk])).sum().item()
    assert abs(correct / len(samples) - float(best_row["val_top1"])) <= 1 / len(samples) + 1e-9


# ----------------------------------------------------------------------------- early stopping


def test_early_stopping_rule():
    stop = EarlyStopping(patience=2)
    history = [(0.5, True), (0.6, True), (0.6, False), (0.55, False)]
    for epoch, (value, is_best) in enumerate(history, 1):
        assert stop.step(value, epoch) is is_best
    assert stop.should_stop and stop.best == 0.6 and stop.best_epoch == 2
    again = EarlyStopping(patience=2)
    again.load_state_dict(stop.state_dict())
    assert again == stop


def test_early_stopping_fires_during_training(tiny_data, tmp_path):
    """lr 0: the weights never move, so val top-1 stalls and training stops after `patience` epochs."""
    result = fit(tiny_config(tiny_data, tmp_path / "run", optimizer="SGD", lr=0.0, epochs=30, patience=2, early_stop=1))
    assert result.stopped_early
    assert result.epochs_run == result.best_epoch + 2 < 30
    rows = read_rows(tmp_path / "run")
    assert len(rows) == result.epochs_run
    best = float(rows[result.best_epoch - 1]["val_top1"])
    assert all(float(r["val_top1"]) <= best for r in rows[result.best_epoch :])


def test_early_stop_0_runs_every_epoch(tiny_data, tmp_path):
    result = fit(tiny_config(tiny_data, tmp_path / "run", optimizer="SGD", lr=0.0, epochs=3, patience=1, early_stop=0))
    assert result.epochs_run == 3 and not result.stopped_early


# ----------------------------------------------------------------------------- data problems during training


def test_bad_files_are_skipped_and_listed_in_the_run_folder(digits_dir, tmp_path, capsys):
    data = copy_subset(digits_dir, tmp_path / "data", n_train=10, n_val=4)
    good = sorted((data / "train" / "0").iterdir())[0]
    bad = [
        data / "train" / "0" / "empty.png",
        data / "train" / "1" / "truncated.png",
        data / "val" / "2" / "text.jpg",
        data / "train" / "2" / "readme.txt",
    ]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(good.read_bytes()[:50])
    bad[2].write_bytes(b"not an image at all")
    bad[3].write_text("notes")
    result = fit(tiny_config(data, tmp_path / "run", epochs=2))
    assert result.epochs_run == 2
    listed = (tmp_path / "run" / "bad_files.txt").read_text().splitlines()
    assert sorted(line.split(": ")[0] for line in listed) == sorted(str(p) for p in bad)
    out = capsys.readouterr().out
    assert "skipped 4 unreadable file(s)" in out
    assert "training FP_classifier on 30 images" in out and "validating on 12" in out
    for path in bad:  # fixed: a new run into the same folder leaves no stale list behind
        path.unlink()
    fit(tiny_config(data, tmp_path / "run", epochs=1, exist_ok=True))
    assert not (tmp_path / "run" / "bad_files.txt").exists()


def test_numeric_class_names_keep_one_order_in_run_outputs(digits_dir, tmp_path):
    data = copy_subset(digits_dir, tmp_path / "data", digits=("1", "2"), n_train=10, n_val=4, rename={"1": "10"})
    fit(tiny_config(data, tmp_path / "run"))
    order = ["10", "2"]
    assert json.loads((tmp_path / "run" / "class_id.json").read_text()) == {"0": "10", "1": "2"}
    assert load_checkpoint(tmp_path / "run" / "best.pth")["classes"] == order
    assert load_checkpoint(tmp_path / "run" / "last.pth")["classes"] == order


def test_amp_and_label_smoothing_and_class_weights_run_on_cpu(tiny_data, tmp_path):
    result = fit(
        tiny_config(
            tiny_data,
            tmp_path / "run",
            amp=True,
            label_smoothing=0.1,
            class_weights="balanced",
            optimizer="SGD",
            lr=0.05,
            scheduler="step",
            warmup_epochs=1,
        )
    )
    assert result.epochs_run == 1
    row = read_rows(tmp_path / "run")[0]
    assert math.isfinite(float(row["train_loss"])) and math.isfinite(float(row["val_loss"]))


def test_freeze_backbone_trains_only_the_head(tiny_data, tmp_path, trained_ckpt):
    source = load_checkpoint(trained_ckpt)["state_dict"]
    fit(tiny_config(tiny_data, tmp_path / "run", freeze_backbone=1, snapshot=str(trained_ckpt), epochs=1, lr=0.01))
    after = load_checkpoint(tmp_path / "run" / "last.pth")["state_dict"]
    model = create_model("FP_classifier", num_classes=3)
    params = dict(model.named_parameters())
    for key, value in after.items():
        if key in params and not key.startswith("classifier."):
            assert torch.equal(value, source[key]), f"{key} changed while frozen"
    assert after["classifier.1.weight"].shape == (3, 960)


def test_freeze_backbone_keeps_only_the_last_linear_trainable():
    model = create_model("resnet18", num_classes=4)
    freeze_backbone(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]


# ----------------------------------------------------------------------------- pieces


def test_class_weights():
    assert class_weight_tensor("none", [5, 5]) is None
    assert torch.allclose(class_weight_tensor("balanced", [30, 10]), torch.tensor([40 / 60, 40 / 20]))
    assert torch.equal(class_weight_tensor("1,2.5,1", [3, 3, 3]), torch.tensor([1.0, 2.5, 1.0]))
    with pytest.raises(UserError, match="has 2 values but the dataset has 3 classes"):
        class_weight_tensor("1,2", [1, 1, 1])
    with pytest.raises(UserError, match="balanced"):
        class_weight_tensor("heavy", [1, 1])


@pytest.mark.parametrize(
    "name,cls",
    [("SGD", torch.optim.SGD), ("ASGD", torch.optim.ASGD), ("ADAM", torch.optim.Adam), ("ADAMW", torch.optim.AdamW)],
)
def test_every_optimizer_takes_a_step(name, cls, tmp_path):
    model = nn.Linear(4, 2)
    cfg, _ = resolve_recipe(TrainConfig(data=str(tmp_path), optimizer=name, lr=0.1))
    opt = make_optimizer(cfg, model.parameters())
    assert isinstance(opt, cls)
    before = model.weight.detach().clone()
    nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,))).backward()
    opt.step()
    assert not torch.equal(before, model.weight)


def test_cosine_schedule_with_warmup(tmp_path):
    model = nn.Linear(2, 2)
    cfg = TrainConfig(data=str(tmp_path), optimizer="SGD", lr=1.0, epochs=10, warmup_epochs=1, scheduler="cosine")
    cfg, _ = resolve_recipe(cfg)
    opt = make_optimizer(cfg, model.parameters())
    sched = make_scheduler(cfg, opt, steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[10] == pytest.approx(1.0)  # linear warmup over epoch 1
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then never increases
    assert lrs[-1] == pytest.approx(0.01, abs=0.01)  # ends near 1 % of the base rate


def test_default_run_folder_is_snapshots_date(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = fit(tiny_config(tiny_data, None, model_name="digits-fp"))
    run = Path(result.run_dir)
    assert run.parent == Path("snapshots") and len(run.name) == len("20250101-120000")
    assert (tmp_path / run / "best.pth").is_file()
    assert yaml.safe_load((tmp_path / run / "args.yaml").read_text())["model_name"] == "digits-fp"


def test_plugin_backbone_trains_and_reloads(tiny_data, tmp_path):
    models_dir = str(Path(__file__).resolve().parents[1] / "models")
    result = fit(
        tiny_config(
            tiny_data,
            tmp_path / "run",
            backbone="tinynet",
            input_size=None,
            model_def_path=models_dir,
            epochs=2,
            lr=1e-2,
        )
    )
    assert result.epochs_run == 2
    ckpt = load_checkpoint(tmp_path / "run" / "best.pth")
    assert ckpt["model"]["name"] == "tinynet" and ckpt["preprocess"]["input_size"] == [32, 32]
    model = model_from_checkpoint(ckpt, model_def_path=models_dir)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
