"""The 3D U-Net of the RobPicker paper (Methods, "Model architecture"), after DeepFinder.

Four down-blocks of four 3×3×3 convolutions, each followed by batch norm and ReLU, with a 2× max-pool
between the second and third convolution; a bottleneck of two convolutions; four up-blocks of a 2×2×2
transposed convolution and two convolutions; a 1×1×1 head over the classes (species + background).

Where the text is silent or inconsistent we chose, and say so here:
- the paper's max-pool "padding 1" would make the sizes asymmetric; we use padding 0, so inputs must be a
  multiple of 2**depth voxels per side (checked);
- the skip connection of a down-block is taken before its pool (at the block's input resolution) and
  concatenated after the up-block's transposed convolution, as in every U-Net;
- the bottleneck sits at 1/2**depth resolution after the last down-block's post-pool convolutions.
``forward`` also returns the last decoder feature map, which the label-correction head shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    ]


class _DownBlock(nn.Module):
    """conv-conv (skip taken here) → max-pool → conv-conv."""

    def __init__(self, in_channels: int, channels: int, out_channels: int) -> None:
        super().__init__()
        self.before_pool = nn.Sequential(*_conv_bn_relu(in_channels, channels), *_conv_bn_relu(channels, channels))
        self.pool = nn.MaxPool3d(kernel_size=2, stride=2)
        self.after_pool = nn.Sequential(*_conv_bn_relu(channels, out_channels), *_conv_bn_relu(out_channels, out_channels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.before_pool(x)
        return self.after_pool(self.pool(skip)), skip


class _UpBlock(nn.Module):
    """2× transposed conv → concat skip → conv-conv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2)
        self.convs = nn.Sequential(
            *_conv_bn_relu(out_channels + skip_channels, out_channels), *_conv_bn_relu(out_channels, out_channels)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([self.up(x), skip], dim=1))


class UNet3D(nn.Module):
    """Segmentation U-Net: (B, in_channels, D, H, W) → logits (B, num_classes, D, H, W) and decoder features.

    ``channels`` are the widths of the down-blocks (their length is the depth, 4 in the paper);
    ``bottleneck_channels`` the width of the bottleneck. The last decoder features have ``channels[0]`` maps.
    """

    def __init__(
        self,
        num_classes: int,
        channels: Sequence[int] = (16, 32, 48, 64),
        bottleneck_channels: int = 64,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"UNet3D: num_classes must be >= 2 (species + background), got {num_classes}")
        if not channels or min(channels) < 1:
            raise ValueError(f"UNet3D: channels must be positive widths, got {tuple(channels)}")
        self.depth = len(channels)
        widths = list(channels)
        outputs = widths[1:] + [bottleneck_channels]
        self.down = nn.ModuleList()
        previous = in_channels
        for width, out in zip(widths, outputs):
            self.down.append(_DownBlock(previous, width, out))
            previous = out
        self.bottleneck = nn.Sequential(
            *_conv_bn_relu(previous, bottleneck_channels), *_conv_bn_relu(bottleneck_channels, bottleneck_channels)
        )
        self.up = nn.ModuleList()
        previous = bottleneck_channels
        for width in reversed(widths):
            self.up.append(_UpBlock(previous, width, width))
            previous = width
        self.feature_channels = widths[0]
        self.head = nn.Conv3d(widths[0], num_classes, kernel_size=1)

    @property
    def min_patch_multiple_px(self) -> int:
        """Patch edges must be multiples of this (each down-block halves the size)."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        multiple = self.min_patch_multiple_px
        if x.ndim != 5 or any(size % multiple for size in x.shape[-3:]):
            raise ValueError(f"UNet3D: expected input (B, C, D, H, W) with D, H, W multiples of {multiple}, got {tuple(x.shape)}")
        skips = []
        for block in self.down:
            x, skip = block(x)
            skips.append(skip)
        x = self.bottleneck(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip)
        return self.head(x), x
