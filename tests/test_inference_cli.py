"""inference.py in real subprocesses: one image, a folder, a glob, ONNX, error paths."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cmd

from edgecls.classify import collect_images, json_name_for


@pytest.fixture(scope="module")
def small_val(digits_dir, tmp_path_factory) -> Path:
    """A copy of 3 images per class of the digits val split (so tests may add broken files)."""
    out = tmp_path_factory.mktemp("small") / "val"
    for cls_dir in sorted((digits_dir / "val").iterdir()):
        (out / cls_dir.name).mkdir(parents=True)
        for f in sorted(cls_dir.iterdir())[:3]:
            shutil.copy(f, out / cls_dir.name / f.name)
    return out


def test_single_image_prints_and_writes_topk(trained_ckpt, small_val, tmp_path):
    img = sorted((small_val / "7").iterdir())[0]
    save = tmp_path / "inference_result.json"
    r = run_cmd(
        [
            "inference.py",
            "--snapshot",
            str(trained_ckpt),
            "--img-path",
            str(img),
            "--save-path",
            str(save),
            "--topk",
            "3",
        ]
    )
    assert r.returncode == 0, r.stderr
    rec = json.loads(save.read_text())
    assert rec["img_path"] == str(img) and len(rec["0_0"]) == 3
    scores = [s for s, _ in rec["0_0"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
    assert rec["0_0"][0][1] in r.stdout


def test_folder_writes_one_json_per_image_and_summary(trained_ckpt, small_val, tmp_path):
    save = tmp_path / "preds.json"
    r = run_cmd(
        [
            "inference.py",
            "--snapshot",
            str(trained_ckpt),
            "--img-path",
            str(small_val),
            "--save-path",
            str(save),
            "--topk",
            "10",
            "--batch-size",
            "8",
        ]
    )
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "preds"
    files = sorted(folder.glob("*.json"))
    assert len(files) == 30
    correct = 0
    for f in files:
        rec = json.loads(f.read_text())
        assert sum(s for s, _ in rec["0_0"]) == pytest.approx(1.0, abs=1e-5)  # all 10 classes listed
        correct += rec["0_0"][0][1] == Path(rec["img_path"]).parent.name
    assert correct >= 24
    rows = list(csv.DictReader((folder / "summary.csv").open()))
    assert len(rows) == 30 and all(r_["error"] == "" for r_ in rows)
    assert {r_["json_file"] for r_ in rows} == {f.name for f in files}
    # a second run refuses to mix with the first unless --force
    again = run_cmd(
        ["inference.py", "--snapshot", str(trained_ckpt), "--img-path", str(small_val), "--save-path", str(save)]
    )
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
    forced = run_cmd(
        [
            "inference.py",
            "--snapshot",
            str(trained_ckpt),
            "--img-path",
            str(small_val),
            "--save-path",
            str(save),
            "--force",
            "--topk",
            "2",
        ]
    )
    assert forced.returncode == 0, forced.stderr
    assert len(list(folder.glob("*.json"))) == 30
    assert len(json.loads(files[0].read_text())["0_0"]) == 2


def test_onnx_and_glob_agree_with_checkpoint(trained_ckpt, small_val, tmp_path):
    from test_predict import export_onnx

    onnx_path = export_onnx(trained_ckpt, tmp_path / "m.onnx")
    pattern = str(small_val / "*" / "*.png")
    outs = {}
    for flag, model in (("--snapshot", trained_ckpt), ("--onnx", onnx_path)):
        save = tmp_path / f"out_{flag.strip('-')}"
        r = run_cmd(["inference.py", flag, str(model), "--img-path", pattern, "--save-path", str(save)])
        assert r.returncode == 0, r.stderr
        outs[flag] = {
            json.loads(f.read_text())["img_path"]: json.loads(f.read_text())["0_0"][0][1] for f in save.glob("*.json")
        }
    assert len(outs["--snapshot"]) == 30 and outs["--snapshot"] == outs["--onnx"]


def test_corrupt_image_reported_others_classified(trained_ckpt, small_val, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(small_val / "1", folder)
    good = sorted(folder.iterdir())
    (folder / "broken.png").write_bytes(good[0].read_bytes()[:50])
    (folder / "readme.txt").write_text("ignored: not an image extension")
    r = run_cmd(
        [
            "inference.py",
            "--snapshot",
            str(trained_ckpt),
            "--img-path",
            str(folder),
            "--save-path",
            str(tmp_path / "out"),
        ]
    )
    assert r.returncode == 0, r.stderr
    assert "broken.png" in r.stderr and "Traceback" not in r.stderr
    assert len(list((tmp_path / "out").glob("*.json"))) == len(good)
    rows = {Path(x["img_path"]).name: x for x in csv.DictReader((tmp_path / "out" / "summary.csv").open())}
    assert rows["broken.png"]["error"] and rows["broken.png"]["json_file"] == ""
    assert "readme.txt" not in rows


@pytest.mark.parametrize(
    "case",
    ["missing_file", "empty_folder", "glob_no_match", "corrupt_single", "no_model", "class_count", "bad_class_map"],
)
def test_error_paths_exit_2_with_one_line(case, trained_ckpt, small_val, tmp_path):
    img = str(sorted((small_val / "0").iterdir())[0])
    args = ["--snapshot", str(trained_ckpt), "--img-path", img, "--save-path", str(tmp_path / "r.json")]
    expect = {
        "missing_file": "no such file",
        "empty_folder": "no image files",
        "glob_no_match": "matches no image",
        "corrupt_single": "corrupt",
        "no_model": "exactly one model",
        "class_count": "10 outputs",
        "bad_class_map": "not valid JSON",
    }[case]
    if case == "missing_file":
        args[3] = str(tmp_path / "nope.png")
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / ".DS_Store").write_text("x")
        args[3] = str(tmp_path / "empty")
    elif case == "glob_no_match":
        args[3] = str(tmp_path / "*.jpg")
    elif case == "corrupt_single":
        from PIL import Image  # a real JPEG cut short: the header decodes, the pixels do not

        bad = tmp_path / "bad.jpg"
        Image.open(img).convert("RGB").resize((64, 64)).save(bad, quality=95)
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
        args[3] = str(bad)
    elif case == "no_model":
        args = args[2:]
    elif case == "class_count":
        (tmp_path / "cls.json").write_text(json.dumps({"0": "cat", "1": "dog"}))
        args += ["--class_id_path", str(tmp_path / "cls.json")]
    elif case == "bad_class_map":
        (tmp_path / "cls.json").write_text("{oops")
        args += ["--class_id_path", str(tmp_path / "cls.json")]
    r = run_cmd(["inference.py", *args])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expect in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_collect_images_and_unique_json_names(tmp_path):
    for sub in ("a", "b", ".hidden"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "x.png").write_bytes(b"")
    found, many = collect_images(str(tmp_path))
    assert many and [Path(p).parent.name for p in found] == ["a", "b"]
    used: set[str] = set()
    names = [json_name_for(p, str(tmp_path), used) for p in found]
    assert names == ["a__x.png.json", "b__x.png.json"]


def test_single_image_refuses_existing_output_unless_force_and_never_the_input(trained_ckpt, small_val, tmp_path):
    img = tmp_path / "x.png"
    shutil.copy(sorted((small_val / "2").iterdir())[0], img)
    original = img.read_bytes()
    base = ["inference.py", "--snapshot", str(trained_ckpt), "--img-path", str(img)]
    for extra in ([], ["--force"]):  # the input image is never an output, not even with --force
        r = run_cmd([*base, "--save-path", str(img), *extra])
        assert r.returncode == 2 and "input image" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert img.read_bytes() == original
    save = tmp_path / "result.json"
    save.write_text("user's notes")
    r = run_cmd([*base, "--save-path", str(save)])
    assert r.returncode == 2 and "already exists" in r.stderr and "--force" in r.stderr, r.stderr
    assert r.stderr.startswith("error: ") and save.read_text() == "user's notes"
    r = run_cmd([*base, "--save-path", str(save), "--force"])
    assert r.returncode == 0, r.stderr
    assert json.loads(save.read_text())["img_path"] == str(img)
    r = run_cmd([*base, "--save-path", str(save)])  # a rerun replaces its own earlier record without --force
    assert r.returncode == 0 and json.loads(save.read_text())["img_path"] == str(img), r.stderr


def test_force_replaces_only_prediction_files(trained_ckpt, small_val, tmp_path):
    out = tmp_path / "preds"
    args = [
        "inference.py",
        "--snapshot",
        str(trained_ckpt),
        "--img-path",
        str(small_val / "5"),
        "--save-path",
        str(out),
    ]
    assert run_cmd(args).returncode == 0
    stale = out / "old__image.png.json"  # an earlier run's record for an image no longer in the input
    stale.write_text(json.dumps({"img_path": "old/image.png", "0_0": [[0.9, "5"]]}))
    keep = {"gts.json": '{"a.png": "5"}', "config.json": "not even JSON", "notes.txt": "mine"}
    for name, text in keep.items():
        (out / name).write_text(text)
    r = run_cmd([*args, "--force"])
    assert r.returncode == 0, r.stderr
    for name, text in keep.items():
        assert (out / name).read_text() == text
    assert not stale.exists() and "2 other JSON file(s)" in r.stderr  # warned: eval --preds reads every .json
    assert len([f for f in out.glob("*.json") if f.name not in keep]) == 3
    # unrelated files alone are not "an earlier run": no --force needed
    for f in out.glob("*.png.json"):
        f.unlink()
    (out / "summary.csv").unlink()
    assert run_cmd(args).returncode == 0
    # a training run folder: its summary.csv is not ours to replace, not even with --force
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.csv").write_text("epoch,train_loss,val_top1\n1,0.5,0.9\n")
    for extra in ([], ["--force"]):
        r = run_cmd([*args[:-1], str(run), *extra])
        assert r.returncode == 2 and "is not an inference summary" in r.stderr, r.stderr
    assert (run / "summary.csv").read_text() == "epoch,train_loss,val_top1\n1,0.5,0.9\n"


def test_input_size_other_than_a_fixed_onnx_graph_is_refused(trained_ckpt, small_val, tmp_path):
    import onnx
    from test_predict import export_onnx

    fixed = export_onnx(trained_ckpt, tmp_path / "fixed.onnx")  # fixed 32x32, dynamic batch
    img = str(sorted((small_val / "4").iterdir())[0])
    for path in (img, str(small_val)):
        r = run_cmd(
            [
                "inference.py",
                "--onnx",
                str(fixed),
                "--img-path",
                path,
                "--save-path",
                str(tmp_path / "o.json"),
                "--input-size",
                "64",
            ]
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "fixed 32x32" in r.stderr and "drop --input-size" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = run_cmd(
        [
            "inference.py",
            "--onnx",
            str(fixed),
            "--img-path",
            img,
            "--save-path",
            str(tmp_path / "ok.json"),
            "--input-size",
            "32x32",
        ]
    )
    assert r.returncode == 0, r.stderr
    # symbolic H and W: any --input-size is accepted
    proto = onnx.load(str(fixed))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    onnx.save(proto, str(tmp_path / "dyn.onnx"))
    r = run_cmd(
        [
            "inference.py",
            "--onnx",
            str(tmp_path / "dyn.onnx"),
            "--img-path",
            img,
            "--save-path",
            str(tmp_path / "dyn.json"),
            "--input-size",
            "32",
        ]
    )
    assert r.returncode == 0, r.stderr
    # no edgecls metadata (a graph from elsewhere): the class map and --preprocess, the size from the graph
    bare = onnx.load(str(fixed))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    r = run_cmd(
        [
            "inference.py",
            "--onnx",
            str(tmp_path / "bare.onnx"),
            "--img-path",
            img,
            "--save-path",
            str(tmp_path / "bare.json"),
            "--class_id_path",
            str(trained_ckpt.parent / "class_id.json"),
            "--preprocess",
            "kneron",
        ]
    )
    assert r.returncode == 0, r.stderr


def test_zero_byte_image_named_as_such_and_no_progress_bar_when_piped(trained_ckpt, small_val, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    r = run_cmd(
        [
            "inference.py",
            "--snapshot",
            str(trained_ckpt),
            "--img-path",
            str(empty),
            "--save-path",
            str(tmp_path / "e.json"),
        ]
    )
    assert r.returncode == 2 and r.stderr.strip() == f"error: {empty}: zero-byte file", r.stderr
    folder = tmp_path / "imgs"
    shutil.copytree(small_val / "6", folder)
    (folder / "empty.png").write_bytes(b"")
    r = run_cmd(
        [
            "inference.py",
            "--snapshot",
            str(trained_ckpt),
            "--img-path",
            str(folder),
            "--save-path",
            str(tmp_path / "out"),
        ]
    )  # stderr is a pipe here: no bar even without --no-progress
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == f"warning: {folder / 'empty.png'}: zero-byte file (skipped)"


def test_folder_prints_a_table_and_defaults_to_a_new_run_folder(trained_ckpt, small_val, tmp_path):
    from conftest import REPO

    args = [str(REPO / "inference.py"), "--snapshot", str(trained_ckpt), "--img-path", str(small_val), "--show", "4"]
    r = run_cmd(args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    folder = tmp_path / "runs" / "inference" / "val"
    rows = list(csv.DictReader((folder / "summary.csv").open()))
    assert len(rows) == 30 and len(list(folder.glob("*.json"))) == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"], "nothing written into the current folder"
    lines = r.stdout.splitlines()
    start = lines.index("first 4 of 30 images:")
    assert lines[start + 1].split() == ["file", "top-1", "score"]
    for line, row in zip(lines[start + 2 : start + 6], rows):
        name, label, score = line.split()
        assert name == str(Path(row["img_path"]).relative_to(small_val))  # below the folder they share
        assert label == row["top1_label"] and score == f"{float(row['top1_score']):.4f}"
    assert f"-> {Path('runs') / 'inference' / 'val'}/" in r.stdout
    again = run_cmd([*args, "--show", "0"], cwd=tmp_path)  # a second run never reuses the first one's folder
    assert again.returncode == 0, again.stderr
    assert "images:" not in again.stdout and (tmp_path / "runs" / "inference" / "val-2" / "summary.csv").is_file()
    assert len(list(folder.glob("*.json"))) == 30


def test_single_image_defaults_to_a_named_run_folder(trained_ckpt, small_val, tmp_path):
    from conftest import REPO

    img = sorted((small_val / "4").iterdir())[0]
    args = [str(REPO / "inference.py"), "--snapshot", str(trained_ckpt), "--img-path", str(img), "--name", "one"]
    r = run_cmd(args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    saved = tmp_path / "runs" / "inference" / "one" / "inference_result.json"
    assert json.loads(saved.read_text())["img_path"] == str(img)
    assert f"saved {Path('runs') / 'inference' / 'one' / 'inference_result.json'}" in r.stdout
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad = run_cmd([*args[:3], "--img-path", str(broken)], cwd=tmp_path)
    assert bad.returncode == 2
    assert not (tmp_path / "runs" / "inference" / "broken").exists(), "a failed start writes nothing"
    assert run_cmd([*args[:-1], "../x"], cwd=tmp_path).returncode == 2  # a name, not a path
