"""conv-autoencoder: a convolutional autoencoder whose pooled bottleneck is a feature vector.

Encoder: `depth` blocks of Conv3x3 -> BN -> ReLU -> MaxPool(2) (channels `width`, doubling), then a 1x1
Conv -> BN -> ReLU to `latent` channels: the bottleneck feature map. Decoder: per level a nearest
Upsample(2) -> Conv3x3 -> BN -> ReLU, then a Conv3x3 to 3 channels; `reconstruct` applies a sigmoid, so a
reconstruction is pixels in [0, 1].

`forward` is the classifier path every edgecls consumer expects: global average pooling of the bottleneck
(the embedding `edgecls embed`, cluster and the catalog use, since it is what reaches the last nn.Linear)
and a linear head. `train.py --task autoencoder` trains encoder + decoder on reconstruction and leaves the
head untouched; `--task classify` trains encoder + head. Every layer is on the kl520 profile except the
final Sigmoid of a whole-autoencoder export (`pytorch2onnx.py --autoencoder-full`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from edgecls.errors import UserError
from edgecls.models.registry import register_model
from edgecls.models.torchvision_models import new_linear


def conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ConvAutoencoder(nn.Module):
    def __init__(self, num_classes: int, width: int = 32, depth: int = 4, latent: int = 128):
        super().__init__()
        if width < 1 or depth < 1 or latent < 1:
            raise UserError(f"conv-autoencoder: width {width}, depth {depth}, latent {latent}: each must be positive")
        self.depth = depth
        layers, cin = [], 3
        for i in range(depth):
            layers += [*conv_bn_relu(cin, width * 2**i), nn.MaxPool2d(2)]
            cin = width * 2**i
        self.encoder = nn.Sequential(*layers, *conv_bn_relu(cin, latent, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = new_linear(latent, num_classes)
        up, cin = [], latent
        for i in reversed(range(depth)):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), *conv_bn_relu(cin, width * 2**i)]
            cin = width * 2**i
        self.decoder = nn.Sequential(*up, nn.Conv2d(cin, 3, 3, padding=1))

    def check_input(self, x: torch.Tensor) -> None:
        step = 2**self.depth
        if x.shape[-2] % step or x.shape[-1] % step:
            raise UserError(
                f"conv-autoencoder: input {x.shape[-2]}x{x.shape[-1]} must be a multiple of {step} (2^depth) "
                "to be reconstructed at its own size; change --input-size"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled bottleneck: N x latent."""
        return torch.flatten(self.pool(self.encoder(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def reconstruction_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's output before the sigmoid (what BCE-with-logits trains on)."""
        self.check_input(x)
        return self.decoder(self.encoder(x))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction, pixels in [0, 1]."""
        return torch.sigmoid(self.reconstruction_logits(x))


def autoencoder_stages(model: ConvAutoencoder) -> list[list[str]]:
    """Encoder, decoder, head: the decoder is never touched by a classifier forward pass, so the
    resolution rule would put it with the stem."""
    names = [n for n, _ in model.named_parameters()]
    return [[n for n in names if n.startswith(part)] for part in ("encoder.", "decoder.", "head.")]


@register_model(
    "conv-autoencoder", input_size=(64, 64), preprocess="unit", stages=autoencoder_stages,
)  # fmt: skip
def conv_autoencoder(num_classes: int, width: int = 32, depth: int = 4, latent: int = 128) -> nn.Module:
    """Convolutional autoencoder (train.py --task autoencoder); its pooled bottleneck gives embeddings."""
    return ConvAutoencoder(num_classes, width, depth, latent)
