"""Recipes and what they switch on: resolution (a given flag wins), per-stage parameter groups and layer decay,
gradual unfreezing (exactly which parameters train each epoch), the schedulers, EMA, augmentation, the LR
range test, pretrained weights from a TORCH_HOME, TensorBoard, resume exactness with all of them, and the
error for every new flag."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from conftest import copy_digits, run_cmd

from edgecls.engine.callbacks import Callback
from edgecls.engine.checkpoint import load_checkpoint
from edgecls.engine.config import TrainConfig
from edgecls.engine.optim import make_optimizer, make_scheduler, param_groups
from edgecls.engine.recipes import RECIPES, resolve_recipe
from edgecls.engine.trainer import fit, resume
from edgecls.errors import UserError
from edgecls.models import create_model, get_spec
from edgecls.models.stages import parameter_stages


@pytest.fixture(scope="module")
def data(digits_dir, tmp_path_factory) -> Path:
    return copy_digits(digits_dir, tmp_path_factory.mktemp("recipes") / "data", n_train=16, n_val=6)


def config(data: Path, run: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), backbone="FP_classifier", input_size=(32, 32), epochs=2, batch_size=16, workers=0,
                hflip=0.0, snapshot_path=str(run), model_def_path=None, seed=0, cache_images="ram")  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def summary(run: Path) -> list[dict]:
    with (run / "summary.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------- resolution


def test_the_default_recipe_follows_the_starting_weights_and_a_given_flag_wins(tmp_path):
    scratch, sources = resolve_recipe(TrainConfig(data="d"))
    assert scratch.recipe == "scratch" and sources["lr"] == "recipe" and sources["recipe"] == "default"
    assert resolve_recipe(TrainConfig(data="d", pretrained=True))[0].recipe == "finetune"
    assert resolve_recipe(TrainConfig(data="d", snapshot="w.pth"))[0].recipe == "finetune"
    kneron, _ = resolve_recipe(TrainConfig(data="d", recipe="kneron"))
    assert (kneron.optimizer, kneron.lr, kneron.momentum, kneron.weight_decay, kneron.scheduler) == (
        "SGD", 1e-3, 0.9, 1e-4, "cosine")  # fmt: skip
    assert (kneron.label_smoothing, kneron.crop_scale, kneron.augment, kneron.model_ema) == (0.0, 0.6, "none", False)
    given, sources = resolve_recipe(TrainConfig(data="d", recipe="finetune", lr=0.02, model_ema=False))
    assert given.lr == 0.02 and sources["lr"] == "given" and given.model_ema is False
    assert given.optimizer == RECIPES["finetune"]["optimizer"] and sources["optimizer"] == "recipe"


def test_the_recipe_is_printed_recorded_in_args_yaml_and_the_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    proc = run_cmd(["train.py", str(data), "--backbone", "FP_classifier", "--input-size", "32", "--epochs", "1",
                    "--batch-size", "16", "--workers", "0", "--lr", "0.002", "--snapshot-path", str(run)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("recipe "))
    assert line.startswith("recipe scratch (random initialisation); from the recipe: optimizer=ADAMW")
    assert "given: lr=0.002" in line
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["recipe"] == "scratch" and args["lr"] == 0.002 and args["recipe_sources"]["lr"] == "given"
    ckpt = load_checkpoint(run / "best.pth")
    assert ckpt["recipe"]["name"] == "scratch" and ckpt["recipe"]["sources"]["optimizer"] == "recipe"


# ----------------------------------------------------------------------------- stages and layer decay


@pytest.mark.parametrize(
    "name,size,stages",
    [("FP_classifier", (32, 32), 6), ("mobilenetv2", (64, 64), 6), ("resnet18", (64, 64), 6),
     ("efficientnet-lite0", (64, 64), 6), ("efficientnet-b0", (64, 64), 6)],
)  # fmt: skip
def test_every_builtin_backbone_has_stages_covering_each_parameter_once(name, size, stages):
    model = create_model(name, num_classes=3)
    groups = parameter_stages(model, get_spec(name), size)
    names = [n for g in groups for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters()) and len(set(names)) == len(names)
    assert len(groups) == stages
    head = groups[-1]
    assert all(model.get_parameter(n).dim() <= 2 for n in head)  # the classifier, after the last feature map


def test_layer_decay_gives_each_stage_below_the_head_a_smaller_rate():
    model = create_model("resnet18", num_classes=3)
    stages = parameter_stages(model, get_spec("resnet18"), (64, 64))
    groups = param_groups(model, stages, lr=0.1, layer_decay=0.5)
    assert [g["lr"] for g in groups] == pytest.approx([0.1 * 0.5**k for k in range(len(stages) - 1, -1, -1)])
    assert any("fc." in n for n in stages[-1]) and any(n.startswith("conv1") for n in stages[0])


def test_a_plugin_declares_its_own_stages(tmp_path):
    from edgecls.models import load_plugins

    (tmp_path / "staged.py").write_text(
        "import torch.nn as nn\nfrom edgecls.models import register_model\n\n"
        "def _stages(m):\n    return [['0.weight', '0.bias'], ['2.weight', '2.bias']]\n\n"
        "@register_model('staged-net', input_size=(8, 8), stages=_stages)\n"
        "def build(num_classes):\n"
        "    return nn.Sequential(nn.Linear(192, 8), nn.ReLU(), nn.Linear(8, num_classes))\n"
    )  # fmt: skip
    load_plugins(tmp_path)
    model = create_model("staged-net", num_classes=2)
    assert parameter_stages(model, get_spec("staged-net"), (8, 8)) == [["0.weight", "0.bias"], ["2.weight", "2.bias"]]


class Snapshots(Callback):
    """The parameters each epoch changed (a frozen parameter never changes: no gradient, no decay)."""

    def __init__(self):
        self.before, self.changed = None, []

    def on_train_start(self, run):
        self.before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
        self.stages = run.stages

    def on_epoch_end(self, run, metrics):
        now = {n: p.detach().clone() for n, p in run.model.named_parameters()}
        self.changed.append({n for n in now if not torch.equal(now[n], self.before[n])})
        self.before = now


def test_gradual_unfreezing_trains_exactly_one_more_stage_each_epoch(data, tmp_path):
    hooks = Snapshots()
    fit(config(data, tmp_path / "run", epochs=3, gradual_unfreeze=True, head_epochs=0, lr=0.01), callbacks=[hooks])
    stages = hooks.stages
    for epoch, changed in enumerate(hooks.changed):
        expected = {n for g in stages[len(stages) - 1 - epoch :] for n in g}
        assert changed == expected, f"epoch {epoch + 1}"


def test_lp_ft_trains_the_head_alone_first_then_everything(data, tmp_path):
    hooks = Snapshots()
    fit(config(data, tmp_path / "run", epochs=2, head_epochs=1, lr=0.01), callbacks=[hooks])
    assert hooks.changed[0] == set(hooks.stages[-1])
    assert hooks.changed[1] == {n for g in hooks.stages for n in g}


class BatchNormStats(Callback):
    """Each BatchNorm's running statistics at the start and after every epoch."""

    def __init__(self):
        self.seen = []

    def stats(self, run):
        return {n: b.detach().clone() for n, b in run.model.named_buffers() if "running_" in n}

    def on_train_start(self, run):
        self.seen.append(self.stats(run))

    def on_epoch_end(self, run, metrics):
        self.seen.append(self.stats(run))


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_frozen_batchnorms_keep_their_statistics_through_training_and_recalibration(data, tmp_path, freeze_bn):
    hooks = BatchNormStats()
    fit(config(data, tmp_path / "run", backbone="mobilenetv2", epochs=1, recipe="scratch", freeze_bn=freeze_bn),
        callbacks=[hooks])  # fmt: skip
    start, end = hooks.seen
    unchanged = [n for n in start if torch.equal(start[n], end[n])]
    assert (len(unchanged) == len(start)) if freeze_bn else not unchanged


def test_the_batchnorms_of_frozen_stages_keep_their_statistics(data, tmp_path):
    hooks = BatchNormStats()
    fit(config(data, tmp_path / "run", backbone="mobilenetv2", epochs=1, recipe="scratch", freeze_bn=False,
               gradual_unfreeze=True), callbacks=[hooks])  # fmt: skip
    start, end = hooks.seen
    head = [n for n in start if n.startswith("classifier") or n.startswith("features.18")]  # the top stage
    below = [n for n in start if n not in head]
    assert below and all(torch.equal(start[n], end[n]) for n in below)


# ----------------------------------------------------------------------------- schedulers


def schedule(scheduler: str, warmup: float = 0.0, epochs: int = 10, steps: int = 10, layer_decay: float = 1.0):
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    cfg, _ = resolve_recipe(TrainConfig(data="d", scheduler=scheduler, warmup_epochs=warmup, epochs=epochs, lr=1.0,
                                        optimizer="SGD"))  # fmt: skip
    opt = make_optimizer(cfg, param_groups(model, [["0.weight", "0.bias"], ["1.weight", "1.bias"]], 1.0, layer_decay))
    sched = make_scheduler(cfg, opt, steps_per_epoch=steps)
    lrs = []
    for _ in range(epochs * steps):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return lrs


def test_each_scheduler_has_its_shape_and_keeps_the_stage_ratios():
    head = lambda lrs: [r[-1] for r in lrs]  # noqa: E731
    cos = head(schedule("cosine"))
    assert cos[0] == pytest.approx(1.0) and cos[-1] == pytest.approx(0.01, abs=0.01)
    assert all(a >= b for a, b in zip(cos, cos[1:]))
    warm = head(schedule("cosine", warmup=2))
    assert warm[0] == pytest.approx(0.01) and warm[20] == pytest.approx(1.0) and max(warm) == pytest.approx(1.0)
    st = head(schedule("slanted-triangular"))
    peak = st.index(max(st))
    assert peak == 10 and st[0] == pytest.approx(1 / 32) and st[-1] < 0.05  # up over 10%, down to 1/32
    assert all(a <= b for a, b in zip(st[:10], st[1:11])) and all(a >= b for a, b in zip(st[10:], st[11:]))
    one = head(schedule("onecycle"))
    assert 25 <= one.index(max(one)) <= 35 and one[-1] < 0.01 and max(one) == pytest.approx(1.0)
    step = head(schedule("step", epochs=40, steps=2))
    assert step[0] == 1.0 and step[59] == 1.0 and step[60] == pytest.approx(0.1)
    assert set(head(schedule("none"))) == {1.0}
    ratios = schedule("slanted-triangular", layer_decay=0.5)
    assert all(r[0] == pytest.approx(0.5 * r[1]) for r in ratios)


# ----------------------------------------------------------------------------- EMA, augmentation, TensorBoard


def test_ema_is_validated_beside_the_raw_weights_and_the_better_is_saved(data, tmp_path):
    run = tmp_path / "run"
    fit(config(data, run, epochs=2, model_ema=True, tensorboard=True))
    rows = summary(run)
    for r in rows:
        raw, ema = float(r["val_top1_raw"]), float(r["val_top1_ema"])
        assert float(r["val_top1"]) == max(raw, ema) and r["weights"] == ("ema" if ema > raw else "raw")
    best = load_checkpoint(run / "best.pth")
    best_row = max(rows, key=lambda r: float(r["val_top1"]))
    assert best["metrics"]["weights"] == best_row["weights"]
    assert load_checkpoint(run / "last.pth")["train"]["ema"] is not None
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("cache", ["ram", "none"])
@pytest.mark.parametrize("augment", ["light", "trivial", "randaugment"])
def test_each_augmentation_policy_trains_on_both_input_paths(data, tmp_path, augment, cache):
    result = fit(config(data, tmp_path / "run", epochs=1, augment=augment, cache_images=cache, random_erasing=0.5,
                        mixup=0.2, cutmix=1.0 if augment == "trivial" else 0.0))  # fmt: skip
    rows = summary(Path(result.run_dir))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))


# ----------------------------------------------------------------------------- resume


class StopAfter(Callback):
    def __init__(self, epochs):
        self.epochs = epochs

    def on_epoch_end(self, run, metrics):
        if metrics["epoch"] >= self.epochs:
            run.stop("stopped by the test")


METRICS = ["epoch", "train_loss", "train_acc", "val_loss", "val_top1", "val_top1_raw", "val_top1_ema", "lr"]


def test_resume_is_exact_with_ema_gradual_unfreezing_and_the_new_schedulers(data, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-for-bit repeatable CPU math
    try:
        for scheduler in ("slanted-triangular", "onecycle"):
            kw = dict(epochs=3, model_ema=True, gradual_unfreeze=True, scheduler=scheduler, augment="trivial",
                      random_erasing=0.25, mixup=0.2, warmup_epochs=0.5)  # fmt: skip
            whole = tmp_path / f"whole-{scheduler}"
            fit(config(data, whole, **kw))
            split = tmp_path / f"split-{scheduler}"
            fit(config(data, split, **kw), callbacks=[StopAfter(2)])
            resume(split)
            pick = lambda run: [{k: r[k] for k in METRICS} for r in summary(run)]  # noqa: E731
            assert pick(split) == pick(whole), scheduler
            a, b = load_checkpoint(whole / "last.pth"), load_checkpoint(split / "last.pth")
            assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
            assert all(torch.equal(a["train"]["ema"][k], b["train"]["ema"][k]) for k in a["train"]["ema"])
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- LR range test


def test_the_range_test_leaves_the_weights_unchanged_and_suggests_a_rate(data, tmp_path):
    from edgecls.engine.lr_find import range_test
    from edgecls.engine.run import Run

    run = Run.setup(config(data, tmp_path / "unused", lr=1.0), record=False)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    result = range_test(run.model, run.optimizer, run.loaders.train(0), run.criterion, run.device, steps=40)
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert result.steps >= 5 and 1e-7 <= result.suggestion <= 10
    assert result.lrs == sorted(result.lrs)
    assert not (tmp_path / "unused").exists()


def test_lr_find_command_and_train_lr_auto(data, tmp_path):
    png = tmp_path / "lr.png"
    proc = run_cmd(["-m", "edgecls.cli.main", "lr-find", str(data), "--backbone", "FP_classifier", "--input-size", "32",
                    "--batch-size", "16", "--workers", "0", "--steps", "30", "--out", str(png)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "suggested lr:" in proc.stdout and png.stat().st_size > 0
    proc = run_cmd(["-m", "edgecls.cli.main", "lr-find", str(data), "--out", str(png), "--steps", "30"])
    assert proc.returncode == 2 and f"--out {png}: already exists; pass --force" in proc.stderr
    run = tmp_path / "run"
    result = fit(config(data, run, epochs=1, lr="auto"))
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert isinstance(args["lr"], float) and args["recipe_sources"]["lr"] == "lr-find"
    assert (run / "lr_find.png").stat().st_size > 0 and result.epochs_run == 1


# ----------------------------------------------------------------------------- pretrained weights


def test_torchvision_weights_load_from_a_torch_home_and_are_named_when_missing(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError, match=r"resnet18-f37072fd\.pth .* in .*torch/hub/checkpoints"):
        create_model("resnet18", num_classes=2, pretrained=True)
    reference = torchvision.models.resnet18(weights=None)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / "resnet18-f37072fd.pth")
    model = create_model("resnet18", num_classes=2, pretrained=True)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 2


@pytest.mark.parametrize("variant,size", [("efficientnet-lite1", 240), ("efficientnet-lite2", 260)])
def test_lite1_and_lite2_load_their_packaged_weights(variant, size):
    from edgecls.models.efficientnet import _lite_weights_file

    model = create_model(variant, num_classes=3, pretrained=True)
    state = torch.load(_lite_weights_file(variant), map_location="cpu", weights_only=True)
    assert torch.equal(model._conv_stem.weight, state["_conv_stem.weight"])
    assert get_spec(variant).input_size == (size, size) and get_spec(variant).preprocess == "lite"


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "flags,message",
    [(["--recipe", "fast"], "--recipe: invalid choice: 'fast'"),
     (["--layer-decay", "0"], "--layer-decay 0.0: must be greater than 0 and at most 1"),
     (["--layer-decay", "1.5"], "--layer-decay 1.5: must be greater than 0 and at most 1"),
     (["--head-epochs", "-1"], "--head-epochs -1: must be at least 0"),
     (["--scheduler", "linear"], "--scheduler: invalid choice: 'linear'"),
     (["--warmup-epochs", "-1"], "--warmup-epochs -1.0: must be at least 0"),
     (["--augment", "heavy"], "--augment: invalid choice: 'heavy'"),
     (["--random-erasing", "2"], "--random-erasing 2.0: must be between 0 and 1"),
     (["--mixup", "-1"], "--mixup -1.0: must be at least 0"),
     (["--lr", "fast"], "--lr: 'fast': use a number such as 0.001, or auto")],
)  # fmt: skip
def test_every_new_flag_has_a_one_line_error(data, tmp_path, flags, message):
    proc = run_cmd(["train.py", str(data), "--snapshot-path", str(tmp_path / "run"), *flags])
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- BatchNorm statistics


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """256 + 64 real photo crops in 8 classes (benchmarks/photos.py: scikit-learn's and scikit-image's photos)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from photos import write_photo_dataset

    return write_photo_dataset(tmp_path_factory.mktemp("photos") / "p", 256, 64, size=(128, 96), workers=1)


def train_and_eval_mode_accuracy(run: Path, data: Path) -> tuple[float, float]:
    """Top-1 of the saved model on its own training images (eval preprocessing): eval mode, train mode."""
    import copy

    from edgecls.data.folder import scan_dataset
    from edgecls.data.images import load_rgb
    from edgecls.data.presets import Preprocess
    from edgecls.engine.checkpoint import model_from_checkpoint

    ckpt = load_checkpoint(run / "last.pth")
    model, pre = model_from_checkpoint(ckpt), Preprocess.from_dict(ckpt["preprocess"])
    samples = scan_dataset(data)[1]["train"].samples[::2]
    x, y = torch.stack([pre(load_rgb(p)) for p, _ in samples]), torch.tensor([label for _, label in samples])
    with torch.no_grad():
        eval_mode = (model.eval()(x).argmax(1) == y).float().mean().item()
        train_mode = (copy.deepcopy(model).train()(x).argmax(1) == y).float().mean().item()
    return eval_mode, train_mode


def test_eval_mode_accuracy_on_the_training_images_stays_close_to_train_mode(photos, tmp_path):
    """Issue 14: mobilenetv2 from scratch, 24 steps at lr 0.01. The BatchNorm running averages still hold
    their initial values and early weights' statistics, so eval mode collapsed to one class while train mode
    (batch statistics) was right; recomputing them after each epoch (the default) keeps the two together."""
    kw = dict(backbone="mobilenetv2", input_size=(64, 64), epochs=3, batch_size=32, recipe="kneron", lr=0.01,
              optimizer="SGD", hflip=0.5)  # fmt: skip
    fit(config(photos, tmp_path / "fixed", **kw))
    eval_mode, train_mode = train_and_eval_mode_accuracy(tmp_path / "fixed", photos)
    assert train_mode > 0.6 and abs(eval_mode - train_mode) <= 0.1, (eval_mode, train_mode)
    # the same run keeping the running averages shows the defect this guards against
    fit(config(photos, tmp_path / "stale", bn_recalibrate=0, **kw))
    stale_eval, stale_train = train_and_eval_mode_accuracy(tmp_path / "stale", photos)
    assert stale_eval < stale_train - 0.3, (stale_eval, stale_train)
