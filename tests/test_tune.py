"""`edgecls tune`: the search space, one-line errors for bad --space files and storage URLs, a whole study
in a subprocess (outputs, continuing it, extending it), pruning, and best.yaml through train.py --config.

Real Optuna on a real journal file; trials are FP_classifier at 32x32 on a few real digit images, 2 epochs.
Killed and concurrent workers (journal and PostgreSQL) are in test_tune_workers.py.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import REPO, copy_digits, run_cmd

from edgecls.cli.train import parse as parse_train
from edgecls.cli.tune import cli
from edgecls.engine.config import TrainConfig
from edgecls.errors import UserError
from edgecls.tune.settings import TuneConfig
from edgecls.tune.space import CONDITIONS, default_space, field_value, load_space, searchable
from edgecls.tune.storage import JOURNAL, open_storage, quiet_optuna
from edgecls.tune.study import claim
from edgecls.tune.trial import run_trial

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TINY_SPACE = """\
replace: true
lr: {low: 1e-3, high: 1e-2, log: true}
batch-size: [16, 32]
"""
TRAIN = ["--backbone", "FP_classifier", "--input-size", "32", "--hflip", "0", "--workers", "0"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """In-process trials on one thread, like the subprocesses (OMP_NUM_THREADS=1): on a shared 2-core machine
    two spinning OpenMP threads make these tiny trainings ten times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(digits_dir, tmp_path_factory) -> Path:
    return copy_digits(digits_dir, tmp_path_factory.mktemp("tune") / "data", digits="0123", n_train=24, n_val=8)


@pytest.fixture()
def space_file(tmp_path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(TINY_SPACE)
    return path


def tune_cmd(args: list[str], cwd: Path, timeout: float = 600):
    return run_cmd(["-m", "edgecls.cli.main", "tune", *args], cwd=cwd, env=ONE_THREAD, timeout=timeout)


def load(study_dir: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(study_dir / JOURNAL)))
    return optuna.load_study(study_name=name, storage=storage)


# ----------------------------------------------------------------------------- the space


def test_the_default_space_is_made_of_train_settings_and_every_value_passes_their_checks():
    space = default_space(epochs_max=12)
    names = searchable()
    for name, param in space.items():
        assert name in names and name in TrainConfig.__dataclass_fields__, name
        ends = list(param.choices) if param.choices else [param.low, param.high]
        for value in ends:
            field_value(name, value)  # raises on a value train.py would refuse
    assert {"lr", "epochs", "dropout", "freeze_backbone", "class_weights", "label_smoothing", "optimizer",
            "weight_decay", "hflip", "crop_scale", "batch_size"} <= set(space)  # fmt: skip
    assert space["lr"].log and space["epochs"].high == 12


@pytest.mark.parametrize("backbone, pretrained", [("FP_classifier", False), ("resnet18", False)])
def test_sampled_configs_pass_train_checks_and_follow_the_conditions(tmp_path, backbone, pretrained):
    quiet_optuna()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    space = load_space(None, epochs_max=8)
    base = vars(TrainConfig(data="x", backbone=backbone, pretrained=pretrained))
    seen_sgd = seen_adamw = False
    for _ in range(12):
        trial = study.ask()
        values = space.sample(trial, base)
        cfg = dataclasses.replace(TrainConfig(**base), **values)
        cfg.check()
        study.tell(trial, 0.5)
        assert ("momentum" in values) == (values["optimizer"] == "SGD")
        assert ("dropout" in values) == (backbone == "FP_classifier")  # resnet18 has no dropout layer
        assert "freeze_backbone" not in values  # from-scratch weights: fine-tuning is the only choice
        assert 2 <= values["epochs"] <= 8
        seen_sgd |= values["optimizer"] == "SGD"
        seen_adamw |= values["optimizer"] == "ADAMW"
    assert seen_sgd and seen_adamw
    assert CONDITIONS["freeze_backbone"]({"pretrained": True, "snapshot": None})


def test_a_space_file_narrows_the_default_or_replaces_it(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("lr: {high: 1e-2}\nbatch-size: [32, 64]\nhflip: null\nbackbone: [FP_classifier, mobilenetv2]\n")
    space = load_space(str(path), epochs_max=10)
    assert space.params["lr"].low == 1e-4 and space.params["lr"].high == 1e-2 and space.params["lr"].log
    assert space.params["batch_size"].choices == (32, 64)
    assert "hflip" not in space.params and "crop_scale" in space.params
    assert list(space.params)[0] == "backbone"  # sampled first: dropout's condition reads it
    path.write_text("replace: true\nlr: {low: 0.001, high: 0.1, log: true}\nepochs: {low: 2, high: 4}\n")
    assert list(load_space(str(path), epochs_max=10).params) == ["lr", "epochs"]


# ----------------------------------------------------------------------------- one-line errors


BAD_SPACES = {
    "not_yaml": ("lr: [1, 2", "not valid YAML"),
    "not_a_mapping": ("- lr\n", "expected a mapping"),
    "unknown_parameter": ("lrate: {low: 0.1, high: 1}\n", "'lrate' cannot be searched"),
    "not_searchable": ("gpu: [0, 1]\n", "'gpu' cannot be searched"),
    "low_above_high": ("lr: {low: 0.1, high: 0.01}\n", "low 0.1 is above high 0.01"),
    "log_from_zero": ("weight_decay: {low: 0, high: 0.1, log: true}\n", "a log range needs low > 0"),
    "negative_lr": ("lr: {low: -1, high: 0.1, log: false}\n", "--lr -1.0: must be at least 0"),
    "bad_choice": ("optimizer: [SGD, LION]\n", "--optimizer 'LION': choose one of SGD, ASGD, ADAM, ADAMW"),
    "float_for_int": ("batch-size: {low: 8.5, high: 64}\n", "'batch_size': low 8.5 must be a whole number"),
    "range_for_choices": ("optimizer: {low: 1, high: 2}\n", "'optimizer': takes a list of choices, not a range"),
    "unknown_key": ("lr: {low: 0.001, high: 0.1, lo: 1}\n", "unknown key 'lo'"),
    "not_a_number": ("lr: {low: small, high: 0.1}\n", "low 'small' is not a number"),
    "epochs_above_max": ("epochs: {low: 2, high: 50}\n", "'epochs' goes up to 50, above --epochs-max 20"),
    "bad_class_weights": ("class-weights: ['1,2']\n", "--class-weights has 2 values but the dataset has 4 classes"),
    "nothing_left": ("replace: true\nlr: null\n", "no parameter is left to search"),
    "missing": (None, "file not found"),
}


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_files_are_one_line_errors_and_write_nothing(case, data, tmp_path, capsys):
    text, message = BAD_SPACES[case]
    path = tmp_path / "space.yaml"
    if text is not None:
        path.write_text(text)
    out = tmp_path / "study"
    one_line_error(capsys, [str(data), "--trials", "2", "--out", str(out), "--space", str(path)], "--space", message)
    assert not out.exists()


BAD_STORAGE = {
    "sqlite:///study.db": "--storage takes postgresql:// or mysql:// (SQLite locks up under parallel workers)",
    "redis://localhost:6379": "--storage takes postgresql:// or mysql://",
    "a study on my server": "not a database URL",
    "postgresql:///optuna": "no host",
    "postgresql://edgecls:secret@127.0.0.1:1/optuna": "cannot open the database",
}


@pytest.mark.parametrize("url", sorted(BAD_STORAGE))
def test_bad_storage_urls_are_one_line_errors_and_write_nothing(url, data, tmp_path, capsys):
    out = tmp_path / "study"
    err = one_line_error(capsys, [str(data), "--trials", "2", "--out", str(out), "--storage", url], BAD_STORAGE[url])
    assert "secret" not in err  # a password is never printed
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--trials", "0"], "--trials 0: must be at least 1"),
        ([], "--trials: give the number of trials the study ends with, e.g. --trials 16"),
        (["--trials", "2", "--timeout", "0"], "--timeout 0.0: must be greater than 0"),
        (["--trials", "2", "--backbone", "nonet"], "--backbone 'nonet' is not registered"),
        (["--trials", "2", "--backbone", "resnet18", "--dropout", "0.2"], "resnet18 has no dropout layer"),
    ],
)
def test_bad_settings_are_one_line_errors(argv, message, data, tmp_path, capsys):
    out = tmp_path / "study"
    one_line_error(capsys, [str(data), *argv, "--out", str(out)], message)
    assert not out.exists()


def test_a_config_file_takes_tune_flag_names(tmp_path):
    from edgecls.cli.tune import get_args_parser
    from edgecls.settings import parse_command_line

    path = tmp_path / "tune.yaml"
    path.write_text("trials: 12\nepochs-max: 6\nno-prune: true\nbackbone: FP_classifier\ninput-size: 32\n")
    values, _ = parse_command_line(TuneConfig, get_args_parser(), ["--config", str(path), "DATA", "--trials", "5"])
    cfg = TuneConfig(**values)
    assert (cfg.trials, cfg.epochs_max, cfg.prune, cfg.backbone, cfg.input_size) == (5, 6, False, "FP_classifier",
                                                                                    (32, 32))  # fmt: skip
    path.write_text("epochs: 3\n")  # the search sets epochs: not a tune key
    with pytest.raises(UserError, match="unknown key 'epochs'"):
        parse_command_line(TuneConfig, get_args_parser(), ["--config", str(path), "DATA"])


def test_an_out_folder_that_is_not_a_study_is_refused(data, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    one_line_error(capsys, [str(data), "--trials", "2", "--out", str(out)], "not empty and not a study folder")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ----------------------------------------------------------------------------- a whole study


def test_a_study_writes_its_outputs_continues_and_extends_to_exact_counts(data, space_file, tmp_path):
    out = tmp_path / "study"
    argv = [str(data), "--out", str(out), "--study", "digits", "--space", str(space_file), "--epochs-max", "2", *TRAIN]
    first = tune_cmd([*argv, "--trials", "3"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = [line for line in first.stdout.splitlines() if line.startswith("trial ")]
    assert [line.split()[1] for line in lines] == ["0", "1", "2"], first.stdout  # one progress line per trial
    assert "[3/3]" in lines[-1] and "val_top1" in lines[-1] and "best" in lines[-1] and "lr=" in lines[-1]
    for name in ("study.json", "journal.log", "trials.csv", "best.yaml", "best.pth", "history.png", "parallel.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert {"lr", "batch_size", "val_top1", "seconds", "state"} <= set(rows[0])
    assert all(r["state"] in ("COMPLETE", "PRUNED") for r in rows)
    for r in rows:  # a complete trial keeps its best.pth only; a pruned one's folder is gone
        folder = out / "trials" / f"{int(r['number']):04d}"
        assert (folder / "best.pth").is_file() == (r["state"] == "COMPLETE") and not (folder / "last.pth").exists()

    again = tune_cmd([*argv, "--trials", "3"], cwd=tmp_path)  # nothing left to do: nothing re-run
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 of 3 trials finished" in again.stdout and "trial 0 [" not in again.stdout
    more = tune_cmd([*argv, "--trials", "4"], cwd=tmp_path)  # a larger N adds exactly the difference
    assert more.returncode == 0, more.stderr[-3000:]
    assert [line.split()[1] for line in more.stdout.splitlines() if line.startswith("trial ")] == ["3"]
    study = load(out, "digits")
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)

    changed = tune_cmd([*argv, "--trials", "4", "--metric", "val_loss"], cwd=tmp_path)
    assert changed.returncode == 2 and changed.stderr.startswith("error: --study digits: started with --metric")
    assert changed.stderr.count("\n") == 1


def test_best_yaml_retrains_the_best_trial_through_train_py(data, space_file, tmp_path):
    out = tmp_path / "study"
    argv = [str(data), "--out", str(out), "--space", str(space_file), "--epochs-max", "1", "--trials", "2", *TRAIN]
    proc = tune_cmd(argv, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = load(out, "data").best_trial
    tuned = TrainConfig.from_dict(best.user_attrs["config"])
    assert tuned.lr == best.params["lr"] and tuned.batch_size == best.params["batch_size"]

    cfg, _, _, _ = parse_train(["--config", str(out / "best.yaml"), str(data)])
    keep = {"data", "snapshot_path", "exist_ok"}
    assert {k: v for k, v in cfg.to_dict().items() if k not in keep} == {
        k: v for k, v in tuned.to_dict().items() if k not in keep
    }
    run = tmp_path / "retrained"
    retrain = run_cmd([str(REPO / "train.py"), "--config", str(out / "best.yaml"), str(data), "--snapshot-path",
                       str(run)], cwd=tmp_path, env=ONE_THREAD)  # fmt: skip
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    recorded = yaml.safe_load((run / "args.yaml").read_text())
    assert recorded["lr"] == best.params["lr"] and recorded["batch_size"] == best.params["batch_size"]
    assert recorded["epochs"] == 1 and recorded["backbone"] == "FP_classifier" and recorded["input_size"] == [32, 32]


# ----------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("keep_pruned", [False, True])
def test_a_pruned_trial_stops_and_its_folder_is_removed_unless_kept(data, tmp_path, keep_pruned):
    """A trial that cannot learn (lr 0) against a study whose finished trial scored 1.0 at every epoch: the
    median rule prunes it after its first epoch."""
    quiet_optuna()
    path = tmp_path / "space.yaml"
    path.write_text("replace: true\nlr: [0.0]\n")
    cfg = TuneConfig(data=str(data), trials=2, out=str(tmp_path / "study"), space=str(path), epochs_max=3,
                     keep_pruned=keep_pruned, heartbeat=1, backbone="FP_classifier", input_size=(32, 32),
                     hflip=0.0, workers=0, batch_size=16)  # fmt: skip
    storage = open_storage(None, cfg.study_dir, "s", cfg.heartbeat, cfg.grace)
    study = optuna.create_study(study_name="s", storage=storage.storage, direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))  # fmt: skip
    study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={1: 1.0, 2: 1.0, 3: 1.0}))
    with storage.lock():
        trial, _ = claim(study, storage, cfg.trials)
    outcome = run_trial(study, trial, cfg, load_space(cfg.space, cfg.epochs_max), storage)
    assert outcome.state == "PRUNED" and outcome.pruned_at == 1
    frozen = study.trials[trial.number]
    assert frozen.state == optuna.trial.TrialState.PRUNED and list(frozen.intermediate_values) == [1]
    assert (cfg.study_dir / "trials" / f"{trial.number:04d}").is_dir() == keep_pruned


def test_a_bad_value_reaching_a_trial_is_refused_by_train_checks(data, tmp_path):
    """trial_config applies train.py's own checks to whatever the space produced."""
    from edgecls.tune.trial import trial_config

    cfg = TuneConfig(data=str(data), trials=1, out=str(tmp_path / "s"), epochs_max=9)
    with pytest.raises(UserError, match="`momentum` 1.5: must be at least 0 and less than 1"):
        trial_config(cfg, {"momentum": 1.5}, tmp_path / "run")
    assert trial_config(cfg, {"lr": 0.01}, tmp_path / "run").epochs == 9  # epochs not searched: epochs_max
    sampled = trial_config(cfg, {"lr": 0.01, "epochs": 3}, tmp_path / "run")
    assert (sampled.epochs, sampled.lr, sampled.snapshot_path) == (3, 0.01, str(tmp_path / "run"))
