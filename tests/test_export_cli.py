"""pytorch2onnx.py as a user runs it: every error path is one `error:` line and exit 2; a wrong
export (ONNX differs from PyTorch) exits 1 naming the worst image and writes nothing."""

from __future__ import annotations

import shutil

import torch
from conftest import run_cmd

from edgecls.data.presets import Preprocess
from edgecls.engine.checkpoint import make_checkpoint, save_checkpoint
from edgecls.models import create_model


def _ckpt(tmp_path, name="fp.pth"):
    torch.manual_seed(0)
    model = create_model("FP_classifier", 10)
    path = tmp_path / name
    save_checkpoint(
        make_checkpoint(
            model,
            backbone="FP_classifier",
            model_kwargs={},
            classes=[str(i) for i in range(10)],
            preprocess=Preprocess(input_size=(56, 32), preset="kneron"),
        ),
        path,
    )
    return path


def _user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_help_states_defaults():
    proc = run_cmd(["pytorch2onnx.py", "--help"])
    assert proc.returncode == 0
    for flag in (
        "--snapshot",
        "--backbone",
        "--num_classes",
        "--model-def-path",
        "--save-path",
        "--opset",
        "--input-size",
        "--dynamic-batch",
        "--profile",
        "--verify-dir",
        "--quantize",
        "--calib-dir",
        "--calib-count",
        "--softmax",
        "--no-simplify",
        "--no-bn-fusion",
    ):
        assert flag in proc.stdout
    assert "default: 13" in proc.stdout and "default: kl520" in proc.stdout


def test_missing_snapshot(tmp_path):
    _user_error(run_cmd(["pytorch2onnx.py", "--snapshot", str(tmp_path / "nope.pth")]), "checkpoint not found")


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    _user_error(run_cmd(["pytorch2onnx.py", "--snapshot", str(bad)]), "not a readable PyTorch checkpoint")


def test_refuses_to_overwrite_without_force(tmp_path):
    ckpt = _ckpt(tmp_path)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"user's file")
    _user_error(run_cmd(["pytorch2onnx.py", "--snapshot", str(ckpt), "--save-path", str(out)]), "--force")
    assert out.read_bytes() == b"user's file"
    proc = run_cmd(
        ["pytorch2onnx.py", "--snapshot", str(ckpt), "--save-path", str(out), "--force", "--verify-count", "4"]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.read_bytes()[:4] != b"user"


def test_bare_state_dict_needs_backbone_then_works(tmp_path):
    torch.manual_seed(0)
    sd = tmp_path / "weights.pth"
    torch.save(create_model("FP_classifier", 2).state_dict(), sd)
    _user_error(run_cmd(["pytorch2onnx.py", "--snapshot", str(sd)]), "--backbone and --num_classes")
    _user_error(
        run_cmd(["pytorch2onnx.py", "--snapshot", str(sd), "--backbone", "FP_classifier", "--num_classes", "5"]),
        "do not fit",
    )
    out = tmp_path / "w.onnx"
    proc = run_cmd(
        [
            "pytorch2onnx.py",
            "--snapshot",
            str(sd),
            "--backbone",
            "FP_classifier",
            "--num_classes",
            "2",
            "--save-path",
            str(out),
            "--verify-count",
            "4",
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2. exported fixed 1x3x56x32" in proc.stdout and out.is_file()


def test_backbone_or_class_count_contradicting_checkpoint(tmp_path):
    ckpt = _ckpt(tmp_path)
    _user_error(
        run_cmd(["pytorch2onnx.py", "--snapshot", str(ckpt), "--backbone", "resnet18"]), "holds a FP_classifier"
    )
    _user_error(run_cmd(["pytorch2onnx.py", "--snapshot", str(ckpt), "--num_classes", "3"]), "has 10 classes")


def test_bad_flags(tmp_path):
    ckpt = str(_ckpt(tmp_path))
    _user_error(run_cmd(["pytorch2onnx.py", "--snapshot", ckpt, "--profile", "kl999"]), "kl520, kl720")
    _user_error(run_cmd(["pytorch2onnx.py", "--snapshot", ckpt, "--quantize", "int8"]), "--calib-dir")
    _user_error(
        run_cmd(["pytorch2onnx.py", "--snapshot", ckpt, "--quantize", "int8", "--calib-dir", str(tmp_path / "x")]),
        "folder not found",
    )
    _user_error(
        run_cmd(["pytorch2onnx.py", "--snapshot", ckpt, "--verify-dir", str(tmp_path / "x")]), "folder not found"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    _user_error(run_cmd(["pytorch2onnx.py", "--snapshot", ckpt, "--verify-dir", str(empty)]), "no readable images")
    proc = run_cmd(["pytorch2onnx.py", "--snapshot", ckpt, "--opset", "17"])
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_broken_images_in_verify_dir_are_skipped_and_reported(tmp_path, digits_dir):
    ckpt = _ckpt(tmp_path)
    folder = tmp_path / "imgs" / "3"
    shutil.copytree(digits_dir / "val" / "3", folder)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    proc = run_cmd(
        [
            "pytorch2onnx.py",
            "--snapshot",
            str(ckpt),
            "--save-path",
            str(tmp_path / "m.onnx"),
            "--verify-dir",
            str(tmp_path / "imgs"),
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 unreadable image(s) skipped" in proc.stdout and "broken.png" in proc.stdout


PLUGIN = '''
import torch
import torch.nn as nn
from edgecls.models import register_model


class Branchy(nn.Module):
    """Data-dependent control flow: tracing freezes the branch the all-zero dummy input takes."""
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        y = torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 1), 1)
        if x.mean() > -10:  # zeros take this branch; real normalized images do too...
            y = y * 3.0 if x.std() > 0.01 else -y  # ...but only zero input has std 0
        return self.fc(y)


@register_model("branchy", input_size=(32, 32), preprocess="unit")
def branchy(num_classes=2):
    return Branchy(num_classes)
'''


def test_export_that_differs_from_pytorch_fails_and_names_worst_image(tmp_path, digits_dir):
    plugins = tmp_path / "models"
    plugins.mkdir()
    (plugins / "branchy.py").write_text(PLUGIN)
    script = (
        f"import torch; from edgecls.models import load_plugins, create_model; load_plugins({str(plugins)!r}); "
        "from edgecls.engine.checkpoint import make_checkpoint, save_checkpoint; "
        "from edgecls.data.presets import Preprocess; torch.manual_seed(0); m = create_model('branchy', 10); "
        "save_checkpoint(make_checkpoint(m, backbone='branchy', model_kwargs={}, classes=[str(i) for i in range(10)], "
        f"preprocess=Preprocess(input_size=(32, 32), preset='unit')), {str(tmp_path / 'b.pth')!r})"
    )
    assert run_cmd(["-c", script]).returncode == 0
    out = tmp_path / "b.onnx"
    proc = run_cmd(
        [
            "pytorch2onnx.py",
            "--snapshot",
            str(tmp_path / "b.pth"),
            "--model-def-path",
            str(plugins),
            "--save-path",
            str(out),
            "--verify-dir",
            str(digits_dir / "val"),
            "--verify-count",
            "20",
        ]
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "-> FAIL" in proc.stdout and "worst image: " + str(digits_dir / "val") in proc.stdout
    assert "NOT written" in proc.stdout and not out.exists()


def test_edgecls_export_subcommand(tmp_path):
    ckpt = _ckpt(tmp_path)
    proc = run_cmd(
        [
            "-m",
            "edgecls.cli.main",
            "export",
            "--snapshot",
            str(ckpt),
            "--save-path",
            str(tmp_path / "e.onnx"),
            "--verify-count",
            "4",
            "--input-size",
            "64x32",
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1x3x64x32" in proc.stdout


def test_int8_path_same_as_save_path_refused_up_front(tmp_path, digits_dir):
    ckpt = _ckpt(tmp_path)
    out = tmp_path / "m.onnx"
    for int8 in (str(out), str(tmp_path / "sub" / ".." / "m.onnx")):
        _user_error(
            run_cmd(
                [
                    "pytorch2onnx.py",
                    "--snapshot",
                    str(ckpt),
                    "--save-path",
                    str(out),
                    "--quantize",
                    "int8",
                    "--calib-dir",
                    str(digits_dir / "train"),
                    "--int8-save-path",
                    int8,
                ]
            ),
            "--int8-save-path",
            "same file as --save-path",
        )
        assert not out.exists()
    before = ckpt.read_bytes()
    _user_error(
        run_cmd(["pytorch2onnx.py", "--snapshot", str(ckpt), "--save-path", str(ckpt), "--force"]),
        "--save-path",
        "is the --snapshot checkpoint itself",
    )
    _user_error(
        run_cmd(
            [
                "pytorch2onnx.py",
                "--snapshot",
                str(ckpt),
                "--save-path",
                str(out),
                "--int8-save-path",
                str(tmp_path / "q.onnx"),
            ]
        ),
        "--int8-save-path: only used with --quantize int8",
    )
    assert ckpt.read_bytes() == before and not out.exists()


def test_bad_calibration_folder_refused_before_writing(tmp_path):
    ckpt = _ckpt(tmp_path)
    out = tmp_path / "m.onnx"
    empty = tmp_path / "calib"
    (empty / "3").mkdir(parents=True)
    (empty / "3" / "notes.txt").write_text("not an image")
    (empty / "3" / "broken.png").write_bytes(b"\x89PNG not really")
    args = [
        "pytorch2onnx.py",
        "--snapshot",
        str(ckpt),
        "--save-path",
        str(out),
        "--quantize",
        "int8",
        "--calib-dir",
        str(empty),
    ]
    for _ in range(2):  # the rerun gives the same answer: nothing was written the first time
        _user_error(run_cmd(args), f"--calib-dir {empty}: no readable images")
        assert not out.exists() and not (tmp_path / "m.int8.onnx").exists()


def test_count_flags_must_be_positive(tmp_path):
    ckpt = str(_ckpt(tmp_path))
    _user_error(
        run_cmd(["pytorch2onnx.py", "--snapshot", ckpt, "--verify-count", "-3"]),
        "--verify-count -3: must be at least 1",
    )
    _user_error(
        run_cmd(
            [
                "pytorch2onnx.py",
                "--snapshot",
                ckpt,
                "--quantize",
                "int8",
                "--calib-dir",
                str(tmp_path),
                "--calib-count",
                "0",
            ]
        ),
        "--calib-count 0: must be at least 1",
    )
    assert not (tmp_path / "fp.onnx").exists()
    help_text = " ".join(run_cmd(["pytorch2onnx.py", "--help"]).stdout.split())
    assert "--verify-count VERIFY_COUNT at most this many verification images" in help_text
    assert "--calib-count CALIB_COUNT at most this many calibration images" in help_text
