"""vit-tiny / vit-small: timm's Vision Transformers ViT-Ti/16 and ViT-S/16, set up for export and fine-tuning.

- The input size and patch size are the builder's (`--input-size 32 --model-args patch_size=8`); the run
  passes its input size and the checkpoint records both, so a checkpoint rebuilds the same network.
- Attention runs as plain MatMul + Softmax (timm's fused `scaled_dot_product_attention` is turned off): the
  TorchScript exporter writes that at opset 13, the opset NPU toolchains read; the fused op needs opset 14.
- Stages for `layer_decay`: patch embedding + class token + position embedding first, one stage per
  transformer block, the final LayerNorm + head last (the BEiT / DeiT layer-wise decay).
- `head` is the model's last nn.Linear (the pooled class token goes in), as embedding and episodic
  training expect of every backbone.
- Weights: `pretrained=True` reads timm's ImageNet-21k -> 1k weights (augreg) from the Hugging Face cache
  only (HF_HUB_CACHE, default ~/.cache/huggingface/hub); nothing is downloaded at run time. timm resamples the
  position embedding (and the patch kernel) to the run's input and patch size. Absent weights are a UserError
  naming where to put them. Any state_dict of the same network also starts a run via `--snapshot FILE`.
- Preprocessing: those weights were trained on (pixel / 255 - 0.5) / 0.5; the "lite" preset
  ((pixel - 127) / 128) is that to within 0.4%.

On the chip: LayerNorm, GELU (Erf), attention's MatMul of activations and Softmax are not on the kl520 / kl720
operator lists; NPU surgery leaves a transformer as it is and the export's profile check names those nodes.
"""

from __future__ import annotations

import torch.nn as nn

from edgecls.errors import UserError
from edgecls.models.registry import register_model

# edgecls name -> timm architecture (its default pretrained tag is augreg_in21k_ft_in1k)
ARCHS = {"vit-tiny": "vit_tiny_patch16_224", "vit-small": "vit_small_patch16_224"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what a timm repo on the Hugging Face hub holds
HEAD_PREFIXES = ("norm.", "fc_norm.", "head.", "attn_pool.")


def vit_stages(model: nn.Module) -> list[list[str]]:
    """[patch embed + cls token + pos embed], [block 0], ..., [block N-1], [final norm + head]."""
    names = [n for n, _ in model.named_parameters()]
    blocks = [[n for n in names if n.startswith(f"blocks.{i}.")] for i in range(len(model.blocks))]
    in_blocks = {n for block in blocks for n in block}
    head = [n for n in names if n.startswith(HEAD_PREFIXES)]
    stem = [n for n in names if n not in in_blocks and n not in head]
    return [stem, *blocks, head]


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_weights(name: str, arch: str) -> str:
    """The path of timm's pretrained weights for `arch` in the local Hugging Face cache, else a UserError."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg(arch).hf_hub_id
    for filename in WEIGHT_FILES:
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str):  # else None or the cache's "known missing" marker
            return path
    raise UserError(
        f"`pretrained` {name}: timm's weights {repo} are not in the Hugging Face cache {hf_cache_dir()}; on a "
        f"connected machine run `hf download {repo} model.safetensors` and copy its models--timm--* folder into "
        "that cache (HF_HUB_CACHE sets another), or start from a weights file with `snapshot` FILE.pth"
    )


def build_vit(
    name: str,
    num_classes: int,
    *,
    dropout: float,
    drop_path: float,
    input_size,
    patch_size: int,
    pretrained: bool,
) -> nn.Module:
    """timm's `ARCHS[name]` at this input and patch size, with a `num_classes` head and unfused attention."""
    import timm

    height, width = (int(v) for v in input_size)
    patch_size = int(patch_size)
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise UserError(
            f"{name}: input {height}x{width} is not a whole number of {patch_size}x{patch_size} patches; "
            "choose an `input_size` divisible by the patch size, or another `patch_size` in `model_kwargs`"
        )
    if not (0.0 <= dropout < 1.0 and 0.0 <= drop_path < 1.0):
        raise UserError(f"{name}: dropout {dropout} and drop_path {drop_path} must each be in [0, 1)")
    arch = ARCHS[name]
    overlay = {"file": cached_weights(name, arch)} if pretrained else None
    model = timm.create_model(
        arch,
        pretrained=pretrained,
        pretrained_cfg_overlay=overlay,
        num_classes=num_classes,
        img_size=(height, width),
        patch_size=patch_size,
        drop_rate=dropout,
        drop_path_rate=drop_path,
    )
    for module in model.modules():  # plain MatMul + Softmax: exports at opset 13 (and runs the same)
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return model


def vit_builder(name: str, summary: str):
    """The registry builder of `name`: every setting a keyword, `input_size` among them (the run passes its own)."""

    def build(
        num_classes: int,
        dropout: float = 0.0,
        input_size=(224, 224),
        patch_size: int = 16,
        drop_path: float = 0.0,
        pretrained: bool = False,
    ) -> nn.Module:
        return build_vit(
            name,
            num_classes,
            dropout=dropout,
            drop_path=drop_path,
            input_size=input_size,
            patch_size=patch_size,
            pretrained=pretrained,
        )

    build.__doc__ = f"{summary}; input and patch size settable."
    return build


# name -> (what it is, its description in --help)
VARIANTS = {
    "vit-tiny": ("ViT-Ti/16 (timm): 12 blocks, width 192, 3 heads", "ViT-Ti/16 (timm, 5.7M params at 224)"),
    "vit-small": ("ViT-S/16 (timm): 12 blocks, width 384, 6 heads", "ViT-S/16 (timm, 22M params at 224)"),
}
for _name, (_summary, _description) in VARIANTS.items():
    register_model(
        _name,
        input_size=(224, 224),
        preprocess="lite",
        has_pretrained=True,
        description=f"{_description}; ImageNet-21k weights from the Hugging Face cache",
        stages=vit_stages,
    )(vit_builder(_name, _summary))
