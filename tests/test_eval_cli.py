"""eval_utils/eval.py in real subprocesses: dataset mode == inference.py + end-to-end mode == sklearn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cmd
from PIL import Image
from sklearn import metrics as skm

from edgecls import evaluation

FIGURES = ("topk", "accuracy", "macro", "micro", "weighted", "per_class", "confusion_matrix", "num_images")


@pytest.fixture(scope="module")
def preds_dir(trained_ckpt, digits_dir, tmp_path_factory) -> Path:
    """inference.py over the whole digits val split: one JSON per image."""
    out = tmp_path_factory.mktemp("infer") / "preds"
    r = run_cmd(
        [
            "inference.py",
            "--snapshot",
            str(trained_ckpt),
            "--img-path",
            str(digits_dir / "val"),
            "--save-path",
            str(out),
            "--topk",
            "5",
            "--no-progress",
        ]
    )
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def gts_by_name(digits_dir, tmp_path_factory) -> Path:
    gts = {str(f): f.parent.name for f in sorted((digits_dir / "val").glob("*/*.png"))}
    path = tmp_path_factory.mktemp("gts") / "gts.json"
    path.write_text(json.dumps(gts))
    return path


@pytest.fixture(scope="module")
def dataset_save(trained_ckpt, digits_dir, tmp_path_factory) -> Path:
    """eval's dataset mode over the digits val split, with --save-misclassified: its --save-dir."""
    save = tmp_path_factory.mktemp("ds_eval")
    r = run_cmd(
        [
            "eval_utils/eval.py",
            "--snapshot",
            str(trained_ckpt),
            "--data-dir",
            str(digits_dir),
            "--save-dir",
            str(save),
            "--save-misclassified",
            str(save / "wrong"),
            "--no-progress",
        ]
    )
    assert r.returncode == 0, r.stderr
    assert "top1" in r.stdout and "macro" in r.stdout
    assert (save / "confusion_matrix.png").stat().st_size > 1000
    assert "confusion matrix" in (save / "eval_results.txt").read_text()
    return save


@pytest.fixture(scope="module")
def dataset_result(dataset_save) -> dict:
    return json.loads((dataset_save / "eval_results.json").read_text())


def run_e2e(preds, gts, save, *extra):
    r = run_cmd(["eval_utils/eval.py", "--preds", str(preds), "--gts", str(gts), "--save-dir", str(save), *extra])
    return r, (json.loads((Path(save) / "eval_results.json").read_text()) if r.returncode == 0 else None)


def test_round_trip_end_to_end_equals_dataset_mode(preds_dir, gts_by_name, dataset_result, trained_run, tmp_path):
    assert dataset_result["num_images"] > 300 and dataset_result["topk"]["top1"] > 0.9
    r, e2e = run_e2e(preds_dir, gts_by_name, tmp_path, "--class_id_path", str(trained_run / "class_id.json"))
    assert r.returncode == 0, r.stderr
    for key in FIGURES:
        assert e2e[key] == dataset_result[key], key
    assert list(e2e["topk"]) == ["top1", "top2", "top3", "top4", "top5"]
    # without a class map the labels found (digit names) give the same classes and figures
    r, inferred = run_e2e(preds_dir, gts_by_name, tmp_path / "b")
    assert r.returncode == 0, r.stderr
    assert inferred["classes"] == dataset_result["classes"] and inferred["macro"] == dataset_result["macro"]


def test_end_to_end_figures_equal_sklearn(preds_dir, gts_by_name, tmp_path):
    r, rep = run_e2e(preds_dir, gts_by_name, tmp_path)
    assert r.returncode == 0, r.stderr
    gts = json.loads(gts_by_name.read_text())
    y_true, y_pred = [], []
    for f in preds_dir.glob("*.json"):
        rec = json.loads(f.read_text())
        y_true.append(int(gts[rec["img_path"]]))
        y_pred.append(int(rec["0_0"][0][1]))
    labels = list(range(10))
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    np.testing.assert_array_equal(rep["confusion_matrix"], skm.confusion_matrix(y_true, y_pred, labels=labels))
    for avg in ("macro", "micro", "weighted"):
        p, rc, f1, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        assert (rep[avg]["precision"], rep[avg]["recall"], rep[avg]["f1"]) == pytest.approx((p, rc, f1))


def test_ids_as_labels_and_absent_classes_match_sklearn(preds_dir, gts_by_name, trained_run, tmp_path):
    gts = json.loads(gts_by_name.read_text())
    subset = {p: int(lab) for p, lab in gts.items() if lab not in ("4", "9")}  # ids, classes 4 and 9 absent
    gts_ids = tmp_path / "gts_ids.json"
    gts_ids.write_text(json.dumps(subset))
    r, rep = run_e2e(preds_dir, gts_ids, tmp_path, "--class_id_path", str(trained_run / "class_id.json"))
    assert r.returncode == 0, r.stderr
    assert rep["problems"]["missing_ground_truth"] and len(rep["problems"]["missing_ground_truth"]) == len(gts) - len(
        subset
    )
    assert rep["per_class"]["support"][4] == 0 and rep["per_class"]["support"][9] == 0
    y_true, y_pred = [], []
    for f in preds_dir.glob("*.json"):
        rec = json.loads(f.read_text())
        if rec["img_path"] in subset:
            y_true.append(subset[rec["img_path"]])
            y_pred.append(int(rec["0_0"][0][1]))
    p, rc, f1, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=list(range(10)), zero_division=0)
    np.testing.assert_allclose(rep["per_class"]["precision"], p)
    np.testing.assert_allclose(rep["per_class"]["f1"], f1)
    mp, mr, mf, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(10)), average="macro", zero_division=0
    )
    assert (rep["macro"]["precision"], rep["macro"]["recall"], rep["macro"]["f1"]) == pytest.approx((mp, mr, mf))


def test_missing_images_on_either_side_are_counted_and_listed(preds_dir, gts_by_name, tmp_path):
    import shutil

    preds = tmp_path / "preds"
    shutil.copytree(preds_dir, preds)
    removed = sorted(preds.glob("*.json"))[:3]
    removed_paths = {json.loads(f.read_text())["img_path"] for f in removed}
    for f in removed:
        f.unlink()
    gts = json.loads(gts_by_name.read_text())
    gts["/nowhere/ghost.png"] = "3"
    (tmp_path / "gts.json").write_text(json.dumps(gts))
    r, rep = run_e2e(preds, tmp_path / "gts.json", tmp_path)
    assert r.returncode == 0, r.stderr
    assert set(rep["problems"]["missing_prediction"]) == removed_paths | {"/nowhere/ghost.png"}
    assert rep["num_images"] == len(gts) - 4
    assert "missing prediction: 4" in (tmp_path / "eval_results.txt").read_text()
    assert "ghost.png" in r.stderr


def test_results_txt_is_appended(preds_dir, gts_by_name, tmp_path):
    for _ in range(2):
        r, _ = run_e2e(preds_dir, gts_by_name, tmp_path)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "eval_results.txt").read_text().count("=== edgecls eval") == 2


@pytest.mark.parametrize(
    "case",
    [
        "malformed_json",
        "wrong_shape",
        "missing_class_map",
        "no_overlap",
        "mixed_modes",
        "missing_gts",
        "save_dir_is_a_file",
    ],
)
def test_end_to_end_errors_name_the_problem(case, preds_dir, gts_by_name, tmp_path):
    import shutil

    preds = tmp_path / "preds"
    shutil.copytree(preds_dir, preds)
    gts = gts_by_name
    args = []
    if case == "malformed_json":
        (preds / "zz_bad.json").write_text('{"img_path": "x.png", "0_0": [[0.9, "1"]')
        expect = "zz_bad.json: not valid JSON"
    elif case == "wrong_shape":
        (preds / "zz_shape.json").write_text(json.dumps({"img_path": "x.png", "0_0": [0.9, "1"]}))
        expect = "zz_shape.json"
    elif case == "missing_class_map":
        data = json.loads(gts.read_text())
        data[next(iter(data))] = "zebra"
        gts = tmp_path / "g.json"
        gts.write_text(json.dumps(data))
        args = ["--class_id_path", str(Path(__file__).parent / "nonexistent.json")]
        expect = "class map file not found"
    elif case == "no_overlap":
        gts = tmp_path / "g.json"
        gts.write_text(json.dumps({"elsewhere/a.png": "1"}))
        expect = "no image in --preds"
    elif case == "mixed_modes":
        args = ["--data-dir", str(tmp_path)]
        expect = "choose one mode"
    elif case == "missing_gts":
        gts = tmp_path / "none.json"
        expect = "file not found"
    elif case == "save_dir_is_a_file":
        (tmp_path / "results").write_text("mine")
        args = ["--save-dir", str(tmp_path / "results")]
        expect = "results: is a file; give a folder"
    r = run_cmd(["eval_utils/eval.py", "--preds", str(preds), "--gts", str(gts), "--save-dir", str(tmp_path), *args])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expect in r.stderr and "Traceback" not in r.stderr


def test_unknown_label_with_class_map(preds_dir, gts_by_name, trained_run, tmp_path):
    data = json.loads(gts_by_name.read_text())
    data[next(iter(data))] = "zebra"
    (tmp_path / "g.json").write_text(json.dumps(data))
    r, _ = run_e2e(preds_dir, tmp_path / "g.json", tmp_path, "--class_id_path", str(trained_run / "class_id.json"))
    assert r.returncode == 2 and "'zebra' is neither a class name nor an id 0..9" in r.stderr


def test_dataset_mode_onnx_matches_checkpoint(trained_ckpt, digits_dir, dataset_result, tmp_path):
    from test_predict import export_onnx

    onnx_path = export_onnx(trained_ckpt, tmp_path / "m.onnx")
    r = run_cmd(
        [
            "eval_utils/eval.py",
            "--onnx",
            str(onnx_path),
            "--data-dir",
            str(digits_dir),
            "--save-dir",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "eval_results.json").read_text())
    assert rep["confusion_matrix"] == dataset_result["confusion_matrix"]


def test_dataset_mode_reports_unreadable_images(trained_ckpt, digits_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    for cls in ("0", "1"):
        shutil.copytree(digits_dir / "val" / cls, data / "val" / cls)
    (data / "val" / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    r = run_cmd(
        [
            "eval_utils/eval.py",
            "--snapshot",
            str(trained_ckpt),
            "--data-dir",
            str(data),
            "--save-dir",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "eval_results.json").read_text())
    assert [u["path"].endswith("broken.png") for u in rep["problems"]["unreadable"]] == [True]
    assert rep["per_class"]["support"][2:] == [0] * 8  # classes without a folder still have a row
    bad = run_cmd(["eval_utils/eval.py", "--snapshot", str(trained_ckpt), "--data-dir", str(tmp_path / "nope")])
    assert bad.returncode == 2 and "no such folder" in bad.stderr


@pytest.mark.parametrize("listed", [1, 2])
def test_end_to_end_topk_capped_at_labels_listed(listed, preds_dir, gts_by_name, tmp_path):
    short = tmp_path / "short"
    short.mkdir()
    for f in preds_dir.glob("*.json"):  # what inference.py --topk LISTED writes
        rec = json.loads(f.read_text())
        (short / f.name).write_text(json.dumps({"img_path": rec["img_path"], "0_0": rec["0_0"][:listed]}))
    r, rep = run_e2e(short, gts_by_name, tmp_path, "--topk", "5")
    assert r.returncode == 0, r.stderr
    assert list(rep["topk"]) == [f"top{k}" for k in range(1, listed + 1)]
    warnings = [line for line in r.stderr.splitlines() if "--topk" in line]
    assert len(warnings) == 1 and f"only {listed} label(s)" in warnings[0] and warnings[0].startswith("warning: ")
    _, full = run_e2e(preds_dir, gts_by_name, tmp_path / "full")
    assert rep["topk"] == {k: v for k, v in full["topk"].items() if int(k[3:]) <= listed}
    r, _ = run_e2e(short, gts_by_name, tmp_path / "asked", "--topk", str(listed))
    assert r.returncode == 0 and "--topk" not in r.stderr  # asked for no more than listed: no warning


def test_dataset_mode_input_size_other_than_fixed_onnx(trained_ckpt, digits_dir, tmp_path):
    from test_predict import export_onnx

    onnx_path = export_onnx(trained_ckpt, tmp_path / "m.onnx")
    r = run_cmd(
        [
            "eval_utils/eval.py",
            "--onnx",
            str(onnx_path),
            "--data-dir",
            str(digits_dir),
            "--input-size",
            "64",
            "--save-dir",
            str(tmp_path),
        ]
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == (
        f"error: --input-size 64x64: {onnx_path} takes a fixed 32x32 input; drop --input-size "
        "or pass --input-size 32x32"
    )


def test_dataset_mode_zero_byte_reason_and_no_progress_bar_when_piped(trained_ckpt, digits_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digits_dir / "val" / "2", data / "val" / "2")
    (data / "val" / "2" / "empty.png").write_bytes(b"")
    r = run_cmd(
        ["eval_utils/eval.py", "--snapshot", str(trained_ckpt), "--data-dir", str(data), "--save-dir", str(tmp_path)]
    )  # stderr is a pipe: no bar even without --no-progress
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    rep = json.loads((tmp_path / "eval_results.json").read_text())
    assert rep["problems"]["unreadable"] == [
        {"path": str(data / "val" / "2" / "empty.png"), "reason": "zero-byte file"}
    ]


def top1_of_records(preds_dir: Path) -> dict[str, list]:
    """normalized image path -> [score, label] of the record inference.py wrote for it."""
    out = {}
    for f in preds_dir.glob("*.json"):
        rec = json.loads(f.read_text())
        out[evaluation.normalize_path(rec["img_path"])] = rec["0_0"][0]
    return out


def test_per_image_predictions_equal_inference_records(preds_dir, dataset_result, gts_by_name, tmp_path):
    records = top1_of_records(preds_dir)
    rows = dataset_result["predictions"]
    assert len(rows) == len(records) == dataset_result["num_images"]
    for row in rows:
        score, label = records[evaluation.normalize_path(row["path"])]
        assert (row["predicted"], row["score"]) == (label, score), row["path"]
        assert row["true"] == Path(row["path"]).parent.name
    assert sum(r["true"] == r["predicted"] for r in rows) / len(rows) == dataset_result["accuracy"]
    # end-to-end mode lists the records' own top-1 for the images of the ground truth
    r, e2e = run_e2e(preds_dir, gts_by_name, tmp_path)
    assert r.returncode == 0, r.stderr
    assert {evaluation.normalize_path(p["path"]): [p["score"], p["predicted"]] for p in e2e["predictions"]} == records


def test_save_misclassified_writes_the_grid_and_eval_writes_both_confusion_views(dataset_save, dataset_result):
    wrong = sum(p["true"] != p["predicted"] for p in dataset_result["predictions"])
    assert wrong > 0  # the trained model is ~97%: some of the 360 val images are wrong
    with Image.open(dataset_save / "wrong" / "misclassified.png") as img:
        shown = min(wrong, evaluation.MISCLASSIFIED_LIMIT)
        assert img.size == tuple(round(v * 100) for v in evaluation.misclassified_figsize(shown))
    for name in ("confusion_matrix.png", "confusion_matrix_normalized.png", "per_class.png"):
        with Image.open(dataset_save / name) as img:
            assert img.format == "PNG" and img.width >= 500, name


def test_default_outputs_go_to_a_new_run_folder_and_an_explicit_folder_still_works(preds_dir, gts_by_name, tmp_path):
    command = [str(REPO / "eval_utils" / "eval.py"), "--preds", str(preds_dir), "--gts", str(gts_by_name)]
    for _ in range(2):
        r = run_cmd(command, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    runs = sorted((tmp_path / "runs" / "eval").iterdir())
    assert len(runs) == 2  # the second never writes into the first
    for run in runs:
        assert (run / "eval_results.txt").read_text().count("=== edgecls eval") == 1
        assert (run / "confusion_matrix_normalized.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing in the current folder
    r = run_cmd([*command, "--save-dir", "."], cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "eval_results.json").is_file(), r.stderr
    assert f"wrote {Path('.') / 'eval_results.json'}" in r.stdout


def test_topk_is_kept_below_the_class_count_with_one_warning(trained_ckpt, digits_dir, tmp_path):
    import shutil

    shutil.copytree(digits_dir / "val" / "2", tmp_path / "data" / "val" / "2")
    command = ["eval_utils/eval.py", "--snapshot", str(trained_ckpt), "--data-dir", str(tmp_path / "data")]
    r = run_cmd([*command, "--topk", "12", "--save-dir", str(tmp_path / "out")])
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["warning: --topk 12: with 10 classes top-12 would always be 1.0; reporting top-9"]
    rep = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert list(rep["topk"]) == [f"top{k}" for k in range(1, 10)]
