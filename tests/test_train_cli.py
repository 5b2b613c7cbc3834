"""`python train.py`: Kneron's flag names and defaults, --help, YAML --config, and every user
error path printing one `error: ...` line with exit code 2 (no traceback, no run folder left)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cmd

from edgecls.cli.train import get_args_parser, parse
from edgecls.errors import UserError

# A tiny, fast run: a few real digit images, FP_classifier at 32x32, one epoch, CPU.
FAST = [
    "--backbone",
    "FP_classifier",
    "--input-size",
    "32",
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--workers",
    "0",
    "--hflip",
    "0",
]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def small_data(digits_dir, tmp_path_factory) -> Path:
    """Digits 0-2, 8 train and 3 val images per class, copied from the shared (read-only) fixture."""
    root = tmp_path_factory.mktemp("small") / "data"
    for split, n in (("train", 8), ("val", 3)):
        for digit in ("0", "1", "2"):
            dst = root / split / digit
            dst.mkdir(parents=True)
            for src in sorted((digits_dir / split / digit).iterdir())[:n]:
                shutil.copy(src, dst / src.name)
    return root


# ----------------------------------------------------------------------------- flags and help


KNERON_DEFAULTS = {
    "gpu": -1,
    "freeze_backbone": 0,
    "early_stop": 1,
    "patience": 7,
    "model_name": None,
    "lr": None,  # the recipe's: 1e-3 under --recipe kneron
    "model_def_path": "./models/",
    "snapshot": None,
    "epochs": 100,
    "batch_size": 64,
    "snapshot_path": None,
    "optimizer": None,  # the recipe's: SGD under --recipe kneron (test below)
    "loss": "cross_entropy",
    # additions users of such scripts expect
    "resume": None,
    "seed": 0,
    "input_size": None,
    "pretrained": False,
    "preprocess": None,
    "label_smoothing": None,
    "class_weights": "none",
    "amp": False,
    "config": None,
}


def test_flag_defaults_match_kneron():
    args = get_args_parser().parse_args(["DATA"])
    assert args.data == "DATA"
    for dest, value in KNERON_DEFAULTS.items():
        assert getattr(args, dest) == value, dest
    assert isinstance(args.workers, int) and args.workers >= 0


def test_recipe_kneron_keeps_kneron_training_defaults():
    from edgecls.engine.config import TrainConfig
    from edgecls.engine.recipes import resolve_recipe

    cfg, sources = resolve_recipe(TrainConfig(data="DATA", recipe="kneron"))
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.label_smoothing) == ("SGD", 1e-3, 0.9, 0.0)
    assert (cfg.scheduler, cfg.head_epochs, cfg.model_ema, cfg.augment) == ("cosine", 0, False, "none")
    assert sources["lr"] == "recipe" and sources["recipe"] == "given"


@pytest.mark.parametrize("name", ["sgd", "ASGD", "adam", "AdamW"])
def test_optimizer_names_are_case_insensitive(name):
    assert get_args_parser().parse_args(["D", "--optimizer", name]).optimizer == name.upper()


@pytest.mark.parametrize("text,size", [("224", (224, 224)), ("56x32", (56, 32)), ("56,32", (56, 32))])
def test_input_size_forms(text, size):
    assert get_args_parser().parse_args(["D", "--input-size", text]).input_size == size


def test_help_documents_every_flag_with_its_default():
    proc = run_cmd(["train.py", "--help"])
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())  # undo argparse's line wrapping
    for flag in [
        "--gpu",
        "--workers",
        "--backbone",
        "--freeze-backbone",
        "--early-stop",
        "--patience",
        "--model-name",
        "--lr",
        "--model-def-path",
        "--snapshot",
        "--epochs",
        "--batch-size",
        "--snapshot-path",
        "--optimizer",
        "--loss",
        "--resume",
        "--seed",
        "--input-size",
        "--pretrained",
        "--preprocess",
        "--label-smoothing",
        "--class-weights",
        "--amp",
        "--config",
        "DATASET_DIR",
    ]:
        assert flag in out, flag
    for default in [
        "(default: -1)",
        "(default: 7)",
        "kneron 0.001",
        "(default: ./models/)",
        "(default: 100)",
        "(default: 64)",
        "kneron SGD",
        "(default: cross_entropy)",
    ]:
        assert default in out, default
    assert "ADAMW" in out and "kneron" in out and "imagenet" in out and "unit" in out
    assert "snapshots/<date" in out  # where runs go by default


def test_config_file_sets_defaults_and_command_line_wins(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "epochs": 3,
                "batch-size": 16,
                "optimizer": "ADAMW",
                "input_size": "56x32",
                "label-smoothing": 0.1,
                "hflip": 0.0,
            }
        )
    )
    argv = ["DATA", "--config", str(cfg), "--epochs", "5"]
    args = parse(argv)[0]
    assert args.epochs == 5  # the flag wins
    assert args.batch_size == 16 and args.optimizer == "ADAMW" and args.label_smoothing == 0.1 and args.hflip == 0.0
    train_cfg = args
    assert train_cfg.epochs == 5 and train_cfg.batch_size == 16
    assert tuple(train_cfg.input_size) == (56, 32)


def test_config_values_are_converted_like_command_line_values(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text("input-size: 32\noptimizer: adamw\namp: true\nno-channels-last: true\nlr: 1e-2\n")
    args = parse(["DATA", "--config", str(cfg)])[0]
    assert args.input_size == (32, 32) and args.optimizer == "ADAMW" and args.amp is True
    assert args.channels_last is False and args.lr == 0.01
    cfg.write_text("class-weights: [1, 2.5, 1]\nsnapshot:\nmodel-name: 123\ninput-size: [56, 32]\nmodel-def-path:\n")
    args = parse(["DATA", "--config", str(cfg)])[0]
    assert args.class_weights == "1,2.5,1" and args.snapshot is None and args.model_name == "123"
    assert args.model_def_path == ""  # no value: like --model-def-path "" (no plugin folder), not the default
    assert args.input_size == (56, 32)


@pytest.mark.parametrize(
    "text,match",
    [
        ("epochs: [", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("epohcs: 3\n", "unknown key 'epohcs'"),
        ("freeze-backbone: 2\n", "is not one of 0, 1"),
        ("epochs: many\n", "'epochs': 'many' is not valid"),
        ("amp: 1\n", "on/off flag"),
        ("data: somewhere\n", "give DATASET_DIR on the command line"),
        ("epochs:\n", "'epochs' has no value; give one \\(default: 100\\)"),
        ("lr: [0.1, 0.2]\n", "'lr': '0.1,0.2' is not valid"),
        ("lr: {a: 1}\n", "not a mapping"),
    ],
)
def test_bad_config_files_are_user_errors(tmp_path, text, match):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(UserError, match=match):
        parse(["DATA", "--config", str(tmp_path / "c.yaml")])[0]


# ----------------------------------------------------------------------------- error paths


def assert_user_error(proc, *needles: str):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.stderr.startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def train(args: list[str], cwd: Path):
    return run_cmd([str(Path(__file__).resolve().parents[1] / "train.py"), *args], cwd=cwd, env=ONE_THREAD, timeout=300)


def _layout(root: Path, small_data: Path, case: str) -> Path:
    """Write a broken dataset for one case; return the DATASET_DIR to pass."""
    data = root / "data"
    if case == "missing_dir":
        return data
    data.mkdir()
    if case == "no_train":
        shutil.copytree(small_data / "val", data / "val")
    elif case == "empty_train":
        (data / "train").mkdir()
        shutil.copytree(small_data / "val", data / "val")
    elif case == "unreadable_train":
        for digit in ("0", "1"):
            (data / "train" / digit).mkdir(parents=True)
            (data / "train" / digit / "x.png").write_bytes(b"not a png")
    elif case == "unknown_val_class":
        shutil.copytree(small_data / "train", data / "train")
        shutil.copytree(small_data / "val", data / "val")
        shutil.copytree(small_data / "val" / "2", data / "val" / "7")
    elif case == "no_val":
        shutil.copytree(small_data / "train", data / "train")
    elif case == "one_class":
        shutil.copytree(small_data / "train" / "0", data / "train" / "0")
        shutil.copytree(small_data / "val" / "0", data / "val" / "0")
    return data


DATA_ERRORS = [
    ("missing_dir", "dataset folder not found"),
    ("no_train", "no train/ folder"),
    ("empty_train", "no class folders"),
    ("unreadable_train", "no readable images"),
    ("unknown_val_class", "['7'] are not in train"),
    ("no_val", "no val/ images"),
    ("one_class", "only one class ('0'); a classifier needs at least 2 class folders under train/"),
]


@pytest.mark.parametrize("case,message", DATA_ERRORS, ids=[c for c, _ in DATA_ERRORS])
def test_dataset_errors(tmp_path, small_data, case, message):
    data = _layout(tmp_path, small_data, case)
    proc = train([str(data), *FAST, "--snapshot-path", str(tmp_path / "run")], cwd=tmp_path)
    assert_user_error(proc, message)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, small_data) -> dict[str, Path]:
    """Files the error cases point at: a pickled full model, a broken plugin, configs, a best-only ckpt."""
    from edgecls.data.presets import Preprocess
    from edgecls.engine.checkpoint import make_checkpoint, save_checkpoint
    from edgecls.models import create_model

    root = tmp_path_factory.mktemp("bad_inputs")
    model = create_model("FP_classifier", num_classes=3)
    torch.save(model, root / "kneron_full_model.pth")  # what Kneron's train.py saves
    save_checkpoint(
        make_checkpoint(
            model,
            backbone="FP_classifier",
            model_kwargs={},
            classes=["0", "1", "2"],
            preprocess=Preprocess((32, 32), "kneron"),
        ),
        root / "best_only.pth",
    )
    (root / "plugins").mkdir()
    (root / "plugins" / "typo_net_for_cli_test.py").write_text(
        "from edgecls.models import register_model\nimport torch.nn as\n"
    )
    (root / "bad_key.yaml").write_text("epochs: 2\nlearning_rate: 0.1\n")
    (root / "taken").mkdir()
    (root / "a_file").write_text("not a folder")
    (root / "taken" / "best.pth").write_bytes((root / "best_only.pth").read_bytes())
    return {"root": root}


FLAG_ERRORS = [
    ("bad_backbone", ["--backbone", "resnet181"], "'resnet181' is not registered"),
    ("bad_config_key", ["--config", "{root}/bad_key.yaml"], "unknown key 'learning_rate'"),
    ("missing_config", ["--config", "{root}/nope.yaml"], "file not found"),
    ("resume_missing", ["--resume", "{root}/no_such_run"], "no checkpoint found"),
    ("resume_best_only", ["--resume", "{root}/best_only.pth"], "holds no training state"),
    ("snapshot_pickle", ["--snapshot", "{root}/kneron_full_model.pth"], "arbitrary code"),
    ("snapshot_missing", ["--snapshot", "{root}/none.pth"], "checkpoint not found"),
    ("snapshot_path_taken", ["--snapshot-path", "{root}/taken"], "already holds checkpoints"),
    ("class_weights_count", ["--class-weights", "1,2"], "has 2 values but the dataset has 3 classes"),
    ("class_weights_text", ["--class-weights", "heavy"], "--class-weights 'heavy'"),
    ("pretrained_without_weights", ["--backbone", "resnet18", "--pretrained"], "not in the torch hub cache"),
    ("broken_plugin", ["--model-def-path", "{root}/plugins"], "typo_net_for_cli_test.py"),
    ("label_smoothing", ["--label-smoothing", "1.5"], "--label-smoothing"),
    ("zero_epochs", ["--epochs", "0"], "--epochs 0: must be at least 1"),
    ("zero_batch", ["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    ("negative_workers", ["--workers", "-1"], "--workers -1: must be at least 0"),
    ("batch_of_one", ["--batch-size", "1"], "--batch-size 1: FP_classifier has BatchNorm layers"),
    ("negative_lr", ["--lr", "-1"], "--lr -1.0: must be at least 0"),
    ("momentum_one", ["--momentum", "1"], "--momentum 1.0: must be at least 0 and less than 1"),
    ("negative_weight_decay", ["--weight-decay", "-0.5"], "--weight-decay -0.5: must be at least 0"),
    ("hflip_above_one", ["--hflip", "5"], "--hflip 5.0: must be between 0 and 1"),
    ("crop_scale_zero", ["--crop-scale", "0"], "--crop-scale 0.0: must be greater than 0 and at most 1"),
    ("snapshot_path_is_a_file", ["--snapshot-path", "{root}/a_file"], "a_file: is a file; give a folder for the run"),
]


@pytest.mark.parametrize("case,flags,message", FLAG_ERRORS, ids=[c for c, _, _ in FLAG_ERRORS])
def test_flag_errors(tmp_path, small_data, bad_inputs, case, flags, message):
    flags = [f.format(root=bad_inputs["root"]) for f in flags]
    run = tmp_path / "run"
    if "--snapshot-path" not in flags:
        flags += ["--snapshot-path", str(run)]
    before = sorted(p.name for p in (bad_inputs["root"] / "taken").iterdir())
    proc = train([str(small_data), *FAST, *flags], cwd=tmp_path)
    assert_user_error(proc, message)
    assert not run.exists(), f"a failed run left {sorted(p.name for p in run.iterdir())}"
    assert sorted(p.name for p in (bad_inputs["root"] / "taken").iterdir()) == before
    assert not (tmp_path / "snapshots").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_image_cache_without_cuda_writes_nothing(tmp_path, small_data):
    proc = train(
        [str(small_data), *FAST, "--cache-images", "gpu", "--snapshot-path", str(tmp_path / "run")], cwd=tmp_path
    )
    assert_user_error(proc, "--cache-images gpu needs a CUDA device")
    assert not (tmp_path / "run").exists() and not (tmp_path / "snapshots").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_without_cuda(tmp_path, small_data):
    proc = train([str(small_data), *FAST, "--gpu", "0", "--snapshot-path", str(tmp_path / "run")], cwd=tmp_path)
    assert_user_error(proc, "--gpu 0: CUDA is not available", "--gpu -1")


def test_edgecls_train_subcommand_reports_errors_the_same_way(tmp_path):
    proc = run_cmd(["-m", "edgecls.cli.main", "train", str(tmp_path / "absent")], cwd=tmp_path, env=ONE_THREAD)
    assert_user_error(proc, "dataset folder not found")


def test_successful_cli_run_writes_the_run_folder(tmp_path, small_data):
    """The happy path of the same script: exit 0, a run folder with every promised file."""
    run = tmp_path / "run"
    proc = train(
        [
            str(small_data),
            *FAST,
            "--epochs",
            "2",
            "--optimizer",
            "adamw",
            "--lr",
            "3e-3",
            "--seed",
            "3",
            "--snapshot-path",
            str(run),
            "--class-weights",
            "balanced",
            "--label-smoothing",
            "0.1",
            "--workers",
            "2",
        ],
        cwd=tmp_path,
    )  # real DataLoader worker processes
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("best.pth", "last.pth", "class_id.json", "summary.csv", "args.yaml", "curves.png"):
        assert (run / name).is_file(), name
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*"))  # atomic writes leave no temp files
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["optimizer"] == "ADAMW" and args["seed"] == 3 and args["label_smoothing"] == 0.1
    assert "best model" in proc.stdout and "epoch 2/2" in proc.stdout
    assert "\r" not in proc.stderr  # no progress-bar redraws when stderr is not a terminal
    # A second run into the same folder is refused; --exist-ok allows it.
    again = train([str(small_data), *FAST, "--snapshot-path", str(run)], cwd=tmp_path)
    assert_user_error(again, "already holds checkpoints", "--resume")
    forced = train([str(small_data), *FAST, "--snapshot-path", str(run), "--exist-ok"], cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]


def test_snapshot_accepts_a_checkpoint_and_a_bare_state_dict(tmp_path, small_data, trained_ckpt):
    """--snapshot from a 10-class digits checkpoint into a 3-class run: body loaded, head skipped."""
    from edgecls.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(trained_ckpt)
    torch.save(ckpt["state_dict"], tmp_path / "bare.pth")
    for i, snap in enumerate([trained_ckpt, tmp_path / "bare.pth"]):
        run = tmp_path / f"run{i}"
        proc = train(
            [
                str(small_data),
                *FAST,
                "--snapshot",
                str(snap),
                "--snapshot-path",
                str(run),
                "--lr",
                "0",
                "--optimizer",
                "SGD",
                "--freeze-backbone",
                "1",
            ],
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "classifier.1.weight" in proc.stdout  # the head of another size is reported as skipped
        new = load_checkpoint(run / "last.pth")["state_dict"]
        assert torch.equal(new["features.0.0.weight"], ckpt["state_dict"]["features.0.0.weight"])


def test_one_progress_bar_per_epoch_on_a_terminal(tmp_path, small_data):
    """Under a pseudo-terminal the script draws a tqdm bar for each epoch (and none when piped)."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import subprocess
    import sys
    import termios

    from conftest import REPO

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a real terminal's size
    env = dict(os.environ, PYTHONPATH=str(REPO), **ONE_THREAD)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "train.py"),
            str(small_data),
            *FAST,
            "--epochs",
            "2",
            "--snapshot-path",
            str(tmp_path / "run"),
        ],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=300)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    text = b"".join(chunks).decode(errors="replace")
    for epoch in ("epoch 1/2", "epoch 2/2"):
        assert epoch in text and "100%" in text.split(epoch, 1)[1], text[-2000:]


def test_cudnn_autotuning_is_off_unless_asked_for(tmp_path):
    """Off by default (measured: seconds more in epoch 1, the same later epochs); the flag or a config file
    turns it on, and --no-cudnn-benchmark wins over the file."""
    assert parse(["D"])[0].cudnn_benchmark is False
    assert parse(["D", "--cudnn-benchmark"])[0].cudnn_benchmark is True
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"cudnn-benchmark": True}))
    assert parse(["D", "--config", str(cfg)])[0].cudnn_benchmark is True
    argv = ["D", "--config", str(cfg), "--no-cudnn-benchmark"]
    assert parse(argv)[0].cudnn_benchmark is False
    for key, value, expected in (
        ("no-cudnn-benchmark", True, False),
        ("no_cudnn_benchmark", False, True),
        ("cudnn_benchmark", False, False),
    ):
        cfg.write_text(yaml.safe_dump({key: value}))
        assert parse(["D", "--config", str(cfg)])[0].cudnn_benchmark is expected, key


ABBREVIATED = [  # a shortened flag that argparse's default would silently take for a longer one
    ("edgecls.cli.train", "get_args_parser", ["DATA", "--epoch", "3"]),
    ("edgecls.cli.inference", "get_args_parser", ["--img-path", "x.jpg", "--model", "m.pth"]),
    ("edgecls.cli.eval", "get_args_parser", ["--pred", "p"]),
    ("edgecls.cli.export", "build_parser", ["--snapshot", "x.pth", "--save", "x.onnx"]),
    ("edgecls.cli.serve", "get_args_parser", ["--model", "x.pth", "--max-up", "5"]),
    ("edgecls.cli.data", "build_parser", ["split", "src", "--val", "0.2"]),
]


@pytest.mark.parametrize("module,builder,argv", ABBREVIATED, ids=[m.rsplit(".", 1)[1] for m, _, _ in ABBREVIATED])
def test_abbreviated_flags_are_refused(module, builder, argv, capsys):
    import importlib

    parser = getattr(importlib.import_module(module), builder)()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(argv)
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_a_class_without_training_images_is_warned_about(tmp_path, small_data):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    shutil.rmtree(data / "train" / "2")
    (data / "train" / "2").mkdir()
    proc = train([str(data), *FAST, "--snapshot-path", str(tmp_path / "run")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "warning: train/ has no readable images for class(es) 2; the model cannot learn them"
        in proc.stdout + proc.stderr
    )


def test_a_closed_pipe_ends_a_command_quietly(tmp_path):
    """`edgecls ... | head`: no BrokenPipeError traceback once the reader has gone."""
    import os
    import subprocess
    import sys

    script = tmp_path / "many_lines.py"
    script.write_text(
        "import sys\nfrom edgecls.cli.common import run_cli\n"
        "sys.exit(run_cli(lambda argv: [print(f'line {i}') for i in range(200000)] and 0, []))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        f"'{sys.executable}' '{script}' | head -n 2", shell=True, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.stdout == "line 0\nline 1\n" and proc.stderr == ""
    other = tmp_path / "other_pipe.py"  # a broken pipe that is not stdout is a bug to show, not to hide
    other.write_text(
        "import os, sys\nfrom edgecls.cli.common import run_cli\n"
        "def main(argv):\n    r, w = os.pipe()\n    os.close(r)\n    os.write(w, b'x')\n"
        "sys.exit(run_cli(main, []))\n"
    )
    proc = subprocess.run([sys.executable, str(other)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "BrokenPipeError" in proc.stderr


def test_resuming_an_early_stopped_run_is_refused(tmp_path, small_data):
    run = tmp_path / "run"
    flags = [*FAST, "--epochs", "5", "--lr", "0", "--patience", "1", "--snapshot-path", str(run)]  # lr 0: no gain
    proc = train([str(small_data), *flags], cwd=tmp_path)
    assert proc.returncode == 0 and "early stopping" in proc.stdout, proc.stderr[-2000:]
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    proc = train([str(small_data), "--resume", str(run), "--workers", "0"], cwd=tmp_path)
    assert_user_error(proc, "the run stopped early at epoch 2", f"--snapshot {run / 'best.pth'}")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_last_batch_of_one_image_is_left_out_rather_than_crashing_batchnorm(tmp_path, small_data):
    """24 training images in batches of 23: the single leftover image would make BatchNorm raise."""
    proc = train([str(small_data), *FAST, "--batch-size", "23", "--snapshot-path", str(tmp_path / "run")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "best.pth").is_file()


def test_dropout_goes_to_the_backbone_and_its_checkpoint_and_is_refused_where_there_is_none(tmp_path, small_data):
    run = tmp_path / "run"
    proc = train([str(small_data), *FAST, "--dropout", "0.35", "--snapshot-path", str(run)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(run / "best.pth", weights_only=True)
    assert ckpt["model"]["kwargs"] == {"dropout": 0.35}  # the predictor and export rebuild it the same way
    assert yaml.safe_load((run / "args.yaml").read_text())["dropout"] == 0.35
    bad = train([str(small_data), *FAST, "--backbone", "resnet18", "--dropout", "0.2", "--snapshot-path",
                 str(tmp_path / "r2")], cwd=tmp_path)  # fmt: skip
    assert_user_error(bad, "--dropout 0.2: resnet18 has no dropout layer")
    assert not (tmp_path / "r2").exists()
    assert_user_error(train([str(small_data), *FAST, "--dropout", "1"], cwd=tmp_path), "--dropout 1.0: must be")
