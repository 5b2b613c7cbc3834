"""tutorial/tutorial.ipynb runs top to bottom (nbclient, a kernel on this interpreter) in a temporary
copy of the repository, in its quick mode (600 demo digits, 96x96, 2 epochs), and its real outputs hold:
checkpoint, eval figures, a verified FP32 and an INT8 ONNX file, and an ONNX-only classification."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "tutorial" / "tutorial.ipynb"
COPIED = ["train.py", "inference.py", "pytorch2onnx.py", "eval_utils", "edgecls", "models", "tutorial"]


def test_committed_notebook_has_no_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def _repo_copy(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        else:
            shutil.copy2(src, root / name)
    return root


def _kernelspec(folder: Path) -> str:
    """A kernelspec that runs ipykernel on this very interpreter (the venv's), found through JUPYTER_PATH."""
    name = "edgecls-tutorial-test"
    spec = folder / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "edgecls test",
                "language": "python",
            }
        )
    )
    return name


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "text/plain" in out.get("data", {}):
            parts.append(out["data"]["text/plain"])
    return "".join(parts)


def test_tutorial_notebook_runs_end_to_end_in_quick_mode(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    root = _repo_copy(tmp_path / "repo")
    work = root / "runs" / "tutorial"
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    kernel = _kernelspec(tmp_path / "jupyter")
    monkeypatch.setenv("EDGECLS_TUTORIAL_QUICK", "1")
    monkeypatch.delenv("EDGECLS_TUTORIAL_DATA", raising=False)
    monkeypatch.delenv("EDGECLS_TUTORIAL_WORK", raising=False)
    monkeypatch.delenv("EDGECLS_TUTORIAL_GPU", raising=False)

    nb = nbformat.read(root / "tutorial" / "tutorial.ipynb", as_version=4)
    started = time.perf_counter()
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": str(root / "tutorial")}}
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"the tutorial stopped at a failing cell:\n{str(exc)[-4000:]}")
    seconds = time.perf_counter() - started
    nbformat.write(nb, tmp_path / "executed.ipynb")  # to read when an assertion below fails
    text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    print(f"tutorial (quick mode) ran in {seconds:.0f} s")

    # Commands shown as a user would type them, from the repository root.
    for command in (
        "$ python -m edgecls.data.demo",
        "$ python train.py",
        "$ python eval_utils/eval.py",
        "$ python pytorch2onnx.py",
        "--quantize int8",
        "$ python inference.py --onnx",
    ):
        assert command in text, command
    assert f"repository {root}" in text

    # 1-2. data and fine-tuning
    classes = [str(d) for d in range(10)]
    assert sorted(p.name for p in (work / "demo_data" / "train").iterdir()) == classes
    run = work / "run"
    for name in ("best.pth", "last.pth", "class_id.json", "summary.csv"):
        assert (run / name).is_file(), name
    import torch

    ckpt = torch.load(run / "best.pth", map_location="cpu", weights_only=True)
    assert ckpt["model"]["name"] == "efficientnet-lite0"
    assert ckpt["preprocess"]["preset"] == "lite" and ckpt["preprocess"]["input_size"] == [96, 96]

    # 3. evaluation figures, parsed from what eval printed and wrote
    report = json.loads((work / "eval" / "eval_results.json").read_text())
    printed = re.search(r"checkpoint val top-1 ([0-9.]+), macro F1 ([0-9.]+) on (\d+) images", text)
    assert printed, text[-2000:]
    assert float(printed.group(1)) == pytest.approx(report["topk"]["top1"], abs=1e-4)
    n_val = sum(1 for _ in (work / "demo_data" / "val").rglob("*.png"))
    assert int(printed.group(3)) == report["num_images"] == n_val and 100 <= n_val <= 140
    assert report["topk"]["top1"] > 0.3  # 10 classes: chance is 0.1; one epoch from ImageNet weights does far better
    assert (work / "eval" / "confusion_matrix.png").stat().st_size > 0

    # 4-5. verified FP32 export on the kl520 profile, INT8 file, FP32 vs INT8 on the whole val split
    assert text.count("profile kl520 (Kneron KL520): PASS") >= 2 and "FAIL" not in text
    assert "result: OK" in text and "-> PASS" in text
    fp32, int8 = work / "model.onnx", work / "model.int8.onnx"
    assert fp32.is_file() and int8.is_file()
    assert int8.stat().st_size <= 0.3 * fp32.stat().st_size
    figures = re.search(r"val top-1: FP32 ([0-9.]+)%  INT8 ([0-9.]+)%  drop (-?[0-9.]+) points", text)
    assert figures, text[-2000:]
    fp32_top1, int8_top1 = float(figures.group(1)), float(figures.group(2))
    assert fp32_top1 == pytest.approx(100 * report["topk"]["top1"], abs=0.01)  # ONNX gives the checkpoint's answers
    assert int8_top1 > 30.0

    # 6. the ONNX file alone classifies an image
    from edgecls.predict import Predictor

    prediction = json.loads((work / "inference_result.json").read_text())
    assert Path(prediction["img_path"]).parent.name == "9"
    scores = [s for s, _ in prediction["0_0"]]
    labels = [lab for _, lab in prediction["0_0"]]
    assert len(labels) == 3 and set(labels) <= set(classes) and scores == sorted(scores, reverse=True)
    assert 0.0 <= scores[-1] <= scores[0] <= 1.0
    assert re.search(r"true class 9, predicted [0-9] \(", text)
    predictor = Predictor.from_path(int8)
    assert predictor.classes == classes and predictor.preprocess.preset == "lite"
