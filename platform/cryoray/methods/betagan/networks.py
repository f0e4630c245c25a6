"""Generator (a ResNet autoencoder, or the plain deep-conv ablation) and discriminator for 2D particle images.

The supplement gives no layer counts; the choices follow the closest code of the field (a conv encoder of stride-2
levels, each followed by identity residual blocks, a mirrored decoder with additive encoder skips, linear output)
and are all settings: ``channels`` (one width per level; the first level keeps full resolution), ``residual_blocks``
per level. ``architecture="plain"`` is the supplement's note-4 ablation: the same convolutions with every identity
path removed (no residual shortcuts, no encoder skips). The discriminator is DCGAN-like (stride-2 convs, LeakyReLU,
global average pooling, one logit) without batch norm, which WGAN-GP requires and which keeps real and generated
images from sharing batch statistics.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from torch import nn

Architecture = Literal["resnet", "plain"]


def _conv_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)]


class ConvBlock(nn.Module):
    """Two 3×3 conv + BN layers; with ``residual`` the input is added before the last activation."""

    def __init__(self, channels: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.body = nn.Sequential(*_conv_bn(channels, channels), nn.LeakyReLU(0.2), *_conv_bn(channels, channels))
        self.activation = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return self.activation(out + x if self.residual else out)


def _blocks(channels: int, count: int, residual: bool) -> nn.Sequential:
    return nn.Sequential(*(ConvBlock(channels, residual) for _ in range(count)))


class DenoisingAutoencoder(nn.Module):
    """G(y): noisy image (B, D, D) → clean estimate (B, D, D); D must be a multiple of 2**(len(channels) − 1)."""

    def __init__(self, channels: list[int], residual_blocks: int, architecture: Architecture = "resnet") -> None:
        super().__init__()
        residual = architecture == "resnet"
        self.skips = residual
        self.downsampling = 2 ** (len(channels) - 1)
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels[0], 3, padding=1), nn.LeakyReLU(0.2), _blocks(channels[0], residual_blocks, residual)
        )
        self.down = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.LeakyReLU(0.2),
                _blocks(c_out, residual_blocks, residual),
            )
            for c_in, c_out in itertools.pairwise(channels)
        )
        self.up = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.LeakyReLU(0.2),
            )
            for c_in, c_out in zip(channels[:0:-1], channels[-2::-1])
        )
        self.up_blocks = nn.ModuleList(_blocks(c, residual_blocks, residual) for c in channels[-2::-1])
        self.head = nn.Conv2d(channels[0], 1, 3, padding=1)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        x = self.stem(noisy.unsqueeze(1))
        encoded = [x]
        for level in self.down:
            x = level(x)
            encoded.append(x)
        for up, blocks, skip in zip(self.up, self.up_blocks, reversed(encoded[:-1])):
            x = up(x)
            x = blocks(x + skip if self.skips else x)
        return self.head(x).squeeze(1)


class Discriminator(nn.Module):
    """D(x): image (B, D, D) → one logit per image (probability = sigmoid; the WGAN critic value as is)."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 1
        for width in channels:
            layers += [nn.Conv2d(previous, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.logit = nn.Linear(previous, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logit(self.features(images.unsqueeze(1)).mean(dim=(-2, -1))).squeeze(-1)
