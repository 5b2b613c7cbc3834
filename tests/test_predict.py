"""Predictor: checkpoint and ONNX agree, softmax scores, bare state_dicts, errors, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgecls.data.images import load_rgb
from edgecls.engine.checkpoint import load_checkpoint, model_from_checkpoint
from edgecls.errors import UserError
from edgecls.export.metadata import write_metadata
from edgecls.predict import Predictor


def export_onnx(
    ckpt_path: Path, out: Path, *, fixed_batch: bool = False, softmax: bool = False, metadata: bool = True
) -> Path:
    """A plain torch.onnx export of a checkpoint (optionally ending in Softmax / batch fixed to 1)."""
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    if softmax:
        model = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    h, w = ckpt["preprocess"]["input_size"]
    axes = None if fixed_batch else {"input": {0: "batch"}, "logits": {0: "batch"}}
    torch.onnx.export(
        model,
        torch.zeros(1, 3, h, w),
        str(out),
        opset_version=13,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes=axes,
    )
    proto = onnx.load(str(out))
    if metadata:
        from edgecls.data.presets import Preprocess

        write_metadata(
            proto,
            classes=ckpt["classes"],
            preprocess=Preprocess.from_dict(ckpt["preprocess"]),
            backbone=ckpt["model"]["name"],
            softmax=softmax,
        )
    onnx.save(proto, str(out))
    return out


def val_images(digits_dir: Path, per_class: int = 6) -> tuple[list[str], list[str]]:
    paths, labels = [], []
    for cls_dir in sorted((digits_dir / "val").iterdir()):
        for f in sorted(cls_dir.iterdir())[:per_class]:
            paths.append(str(f))
            labels.append(cls_dir.name)
    return paths, labels


@pytest.fixture(scope="module")
def onnx_file(trained_ckpt, tmp_path_factory) -> Path:
    return export_onnx(trained_ckpt, tmp_path_factory.mktemp("onnx") / "model.onnx")


def test_checkpoint_predictor_classifies_real_digits(trained_ckpt, digits_dir):
    pred = Predictor.from_path(trained_ckpt)
    assert pred.kind == "torch" and pred.backbone == "FP_classifier"
    assert pred.classes == [str(d) for d in range(10)]
    paths, labels = val_images(digits_dir)
    probs = pred.predict_images([load_rgb(p) for p in paths])
    assert probs.shape == (len(paths), 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    top1 = [pred.classes[i] for i in probs.argmax(axis=1)]
    assert np.mean([a == b for a, b in zip(top1, labels)]) > 0.85
    ranked = pred.topk(probs[0], 3)
    assert len(ranked) == 3 and ranked[0][0] >= ranked[1][0] >= ranked[2][0]
    assert ranked[0][1] == top1[0]
    assert len(pred.topk(probs[0], 99)) == 10
    info = pred.info()
    assert info["input_size"] == [32, 32] and info["kind"] == "torch" and info["classes"] == pred.classes


def test_predict_paths_matches_predict_images_and_keeps_order(trained_ckpt, digits_dir):
    pred = Predictor.from_path(trained_ckpt)
    paths, _ = val_images(digits_dir, per_class=4)
    direct = pred.predict_images([load_rgb(p) for p in paths])
    for bs, workers in [(1, 1), (7, 3), (64, 2)]:
        got = list(pred.predict_paths(paths, batch_size=bs, workers=workers))
        assert [g[0] for g in got] == paths
        np.testing.assert_allclose(np.stack([g[1] for g in got]), direct, atol=1e-5)


def test_onnx_gives_same_top1_and_scores_as_checkpoint(trained_ckpt, onnx_file, digits_dir):
    pt = Predictor.from_path(trained_ckpt)
    ox = Predictor.from_path(onnx_file)
    assert ox.kind == "onnx" and ox.classes == pt.classes and ox.preprocess == pt.preprocess
    assert ox.backbone == "FP_classifier"
    paths, _ = val_images(digits_dir)
    a = np.stack([p for _, p, _ in pt.predict_paths(paths)])
    b = np.stack([p for _, p, _ in ox.predict_paths(paths)])
    np.testing.assert_array_equal(a.argmax(1), b.argmax(1))
    np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(b.sum(1), 1.0, atol=1e-5)


def test_onnx_with_softmax_and_fixed_batch(trained_ckpt, digits_dir, tmp_path):
    fixed = export_onnx(trained_ckpt, tmp_path / "fixed_softmax.onnx", fixed_batch=True, softmax=True)
    pred = Predictor.from_path(fixed)
    pt = Predictor.from_path(trained_ckpt)
    paths, _ = val_images(digits_dir, per_class=2)
    imgs = [load_rgb(p) for p in paths]
    got = pred.predict_images(imgs)  # a batch of 20 through a batch-1 graph
    np.testing.assert_allclose(got, pt.predict_images(imgs), atol=1e-4)  # softmax applied once, not twice


def test_bare_state_dict_needs_backbone_and_classes(trained_ckpt, digits_dir, tmp_path):
    ckpt = load_checkpoint(trained_ckpt)
    bare = tmp_path / "weights.pth"
    torch.save(ckpt["state_dict"], bare)
    with pytest.raises(UserError, match="`backbone`"):
        Predictor.from_path(bare)
    with pytest.raises(UserError, match="`class_id_path`"):
        Predictor.from_path(bare, backbone="FP_classifier")
    from edgecls.data.presets import Preprocess

    pred = Predictor.from_path(
        bare, backbone="FP_classifier", class_names=ckpt["classes"], preprocess=Preprocess.from_dict(ckpt["preprocess"])
    )
    paths, _ = val_images(digits_dir, per_class=2)
    imgs = [load_rgb(p) for p in paths]
    np.testing.assert_allclose(
        pred.predict_images(imgs), Predictor.from_path(trained_ckpt).predict_images(imgs), atol=1e-6
    )
    with pytest.raises(UserError, match="10 outputs but the class map has 3"):
        Predictor.from_path(bare, backbone="FP_classifier", class_names=["a", "b", "c"])
    with pytest.raises(UserError, match="wrong `backbone`"):
        Predictor.from_path(bare, backbone="resnet18", class_names=ckpt["classes"])


def test_class_count_mismatch_names_both_counts(trained_ckpt, onnx_file):
    with pytest.raises(UserError, match="10 outputs but the class map has 2"):
        Predictor.from_path(trained_ckpt, class_names=["cat", "dog"])
    with pytest.raises(UserError, match="10 outputs but the class map has 11"):
        Predictor.from_path(onnx_file, class_names=[str(i) for i in range(11)])
    renamed = Predictor.from_path(onnx_file, class_names=[f"digit{i}" for i in range(10)])
    assert renamed.classes[3] == "digit3"


def test_unreadable_files_are_reported_and_others_classified(trained_ckpt, digits_dir, tmp_path):
    pred = Predictor.from_path(trained_ckpt)
    good, _ = val_images(digits_dir, per_class=1)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(Path(good[0]).read_bytes()[:60])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    paths = [good[0], str(corrupt), good[1], str(tmp_path / "missing.png"), str(text), good[2]]
    got = list(pred.predict_paths(paths, batch_size=2, workers=2))
    assert [g[0] for g in got] == paths
    assert [g[1] is None for g in got] == [False, True, False, True, True, False]
    assert "corrupt" in got[1][2] and got[3][2] == "file not found" and "not an image" in got[4][2]


def test_model_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        Predictor.from_path(tmp_path / "nope.pth")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01garbage")
    with pytest.raises(UserError, match="not a loadable ONNX"):
        Predictor.from_path(junk)
    bad_pth = tmp_path / "bad.pth"
    bad_pth.write_text("hello")
    with pytest.raises(UserError, match="checkpoint"):
        Predictor.from_path(bad_pth)


def test_onnx_without_metadata_needs_classes(trained_ckpt, tmp_path):
    plain = export_onnx(trained_ckpt, tmp_path / "plain.onnx", metadata=False)
    with pytest.raises(UserError, match="no edgecls metadata"):
        Predictor.from_path(plain)
    from edgecls.data.presets import Preprocess

    pred = Predictor.from_path(plain, class_names=list("abcdefghij"), preprocess=Preprocess((32, 32), "kneron"))
    assert pred.classes[0] == "a" and pred.kind == "onnx"


@pytest.mark.parametrize("which", ["torch", "onnx"])
def test_concurrent_calls_equal_sequential(which, trained_ckpt, onnx_file, digits_dir):
    pred = Predictor.from_path(trained_ckpt if which == "torch" else onnx_file)
    paths, _ = val_images(digits_dir, per_class=3)
    batches = [np.stack([pred.preprocess_image(load_rgb(p)) for p in paths[i::4]]) for i in range(4)]
    expected = [pred.predict_arrays(b) for b in batches]
    results: dict[int, np.ndarray] = {}

    def work(i):
        for _ in range(5):
            results[i] = pred.predict_arrays(batches[i % 4])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        np.testing.assert_allclose(results[i], expected[i % 4], atol=1e-6)


def test_predict_arrays_rejects_wrong_shape(trained_ckpt):
    pred = Predictor.from_path(trained_ckpt)
    with pytest.raises(UserError, match="expected N x 3 x 32 x 32"):
        pred.predict_arrays(np.zeros((2, 3, 56, 32), np.float32))
    assert pred.predict_images([]).shape == (0, 10)


def test_zero_byte_file_reason(trained_ckpt, digits_dir, tmp_path):
    pred = Predictor.from_path(trained_ckpt)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    good, _ = val_images(digits_dir, per_class=1)
    got = list(pred.predict_paths([good[0], str(empty)], batch_size=2, workers=1))
    assert got[0][2] is None and got[1][2] == "zero-byte file"  # the words train and `data verify` use


def test_fixed_onnx_input_size(onnx_file, tmp_path):
    from edgecls.data.presets import Preprocess

    pred = Predictor.from_path(onnx_file)
    assert pred.fixed_input_size == (32, 32)
    with pytest.raises(UserError, match="fixed 32x32 input; drop `input_size` or pass `input_size` 32x32"):
        Predictor.from_path(onnx_file, preprocess=Preprocess((64, 64), "kneron"))
    proto = onnx.load(str(onnx_file))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "h", "w"
    onnx.save(proto, str(tmp_path / "dyn.onnx"))
    assert Predictor.from_path(tmp_path / "dyn.onnx").fixed_input_size is None
