"""A 3D nested U-Net (UNet++, Zhou et al. 2018) of residual blocks, with per-sample percentile input normalisation.

The CryoGEN-II supplement (§6.1) describes its generator and discriminator this way:

- every node is a residual block: two 3×3×3 convolutions, each followed by InstanceNorm3d and PReLU, plus a
  learnable 3×3×3 convolution on the skip path when the channel count changes;
- nodes ``X[i][j]`` (level ``i``, ``j`` nested steps): ``X[i][0]`` is the encoder (max-pool 2 between levels);
  ``X[i][j] = block(cat[X[i][0], …, X[i][j-1], up(X[i+1][j-1])])`` with trilinear upsampling, so each resolution
  concatenates all its earlier nodes and the coarser scale below; a 1×1×1 convolution reads ``X[0][L-1]``;
- the input is normalised per sample to its 4th–96th percentile range before the first block.

Choices where the text is silent: the second normalisation/activation of a block comes after the residual
sum (as in struc2mapGAN's block, the closest public code); instance norm without affine parameters; the output
is mapped back to the input's scale (``y · (p_high − p_low) + p_low``), which makes the network exactly
equivariant to a positive affine change of the input's intensity: a tomogram in any units, or tiles of one
tomogram normalised separately, give consistent outputs. No deep supervision, no output activation.
Inputs must be a multiple of ``2**(levels-1)`` voxels per side.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_PERCENTILES = (4.0, 96.0)


def percentile_minmax(
    volume: torch.Tensor, low_percent: float = 4.0, high_percent: float = 96.0, sample_ndim: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(volume − p_low) / (p_high − p_low)`` per sample over the last ``sample_ndim`` dims (IsoNet's ``normalize``).

    Returns the normalised volume and the per-sample ``p_low`` and ``p_high − p_low`` (shaped to broadcast),
    so the caller can undo it. A constant sample keeps a scale of 1 instead of dividing by zero.
    """
    if not 0 <= low_percent < high_percent <= 100:
        raise ValueError(f"percentile_minmax: need 0 <= low < high <= 100, got {low_percent}, {high_percent}")
    flat = volume.reshape(*volume.shape[: volume.ndim - sample_ndim], -1)
    # linspace of two points is exactly [low, high], made on the device (a tensor from a list is a host-to-device copy).
    levels = torch.linspace(low_percent / 100, high_percent / 100, 2, dtype=flat.dtype, device=flat.device)
    quantiles = torch.quantile(flat.detach(), levels, dim=-1)  # (2, *lead)
    shape = (*volume.shape[: volume.ndim - sample_ndim],) + (1,) * sample_ndim
    low, high = quantiles[0].reshape(shape), quantiles[1].reshape(shape)
    scale = high - low
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (volume - low) / scale, low, scale


class ResidualBlock3d(nn.Module):
    """conv3³ → IN → PReLU → conv3³ → IN, plus the input (or its 3×3×3 conv when channels change), → PReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 3, padding=1),
            nn.InstanceNorm3d(out_channels),
            nn.PReLU(),
            nn.Conv3d(out_channels, out_channels, 3, padding=1),
            nn.InstanceNorm3d(out_channels),
        )
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(nn.Conv3d(in_channels, out_channels, 3, padding=1), nn.InstanceNorm3d(out_channels))
        )
        self.activation = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.skip(x))


class UNetPlusPlus3d(nn.Module):
    """Nested U-Net over ``len(channels)`` levels (the paper: 4) for (B, D, H, W) or (B, 1, D, H, W) volumes.

    ``forward`` returns (B, D, H, W) when ``out_channels == 1`` and the input had no channel dim, else
    (B, out_channels, D, H, W). ``normalise_input``: the per-sample 4th–96th percentile min–max of the paper;
    ``rescale_output``: map the output back to the input's intensity scale (a generator), or not (a critic).
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128, 256),
        in_channels: int = 1,
        out_channels: int = 1,
        *,
        normalise_input: bool = True,
        rescale_output: bool = True,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    ) -> None:
        super().__init__()
        if len(channels) < 2 or any(c < 1 for c in channels):
            raise ValueError(f"UNetPlusPlus3d: need at least 2 levels of positive widths, got {list(channels)}")
        if rescale_output and not (normalise_input and in_channels == out_channels == 1):
            raise ValueError("UNetPlusPlus3d: rescale_output needs normalise_input and one input and output channel")
        self.channels = list(channels)
        self.levels = len(channels)
        self.normalise_input = normalise_input
        self.rescale_output = rescale_output
        self.percentiles = percentiles
        self.nodes = nn.ModuleDict()
        for i, width in enumerate(channels):
            self.nodes[f"{i}_0"] = ResidualBlock3d(in_channels if i == 0 else channels[i - 1], width)
        for j in range(1, self.levels):
            for i in range(self.levels - j):
                self.nodes[f"{i}_{j}"] = ResidualBlock3d(channels[i] * j + channels[i + 1], channels[i])
        self.head = nn.Conv3d(channels[0], out_channels, 1)

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.ndim == 4
        if squeeze:
            x = x.unsqueeze(1)
        if x.ndim != 5 or any(n % self.size_multiple for n in x.shape[-3:]):
            raise ValueError(
                f"UNetPlusPlus3d: expected (B, [C,] D, H, W) with sides divisible by {self.size_multiple}, got {tuple(x.shape)}"
            )
        low = scale = None
        if self.normalise_input:
            x, low, scale = percentile_minmax(x, *self.percentiles, sample_ndim=4)
        grid: dict[tuple[int, int], torch.Tensor] = {}
        for i in range(self.levels):
            grid[i, 0] = self.nodes[f"{i}_0"](x if i == 0 else F.max_pool3d(grid[i - 1, 0], 2))
        for j in range(1, self.levels):
            for i in range(self.levels - j):
                coarser = F.interpolate(grid[i + 1, j - 1], scale_factor=2, mode="trilinear", align_corners=False)
                grid[i, j] = self.nodes[f"{i}_{j}"](torch.cat([*(grid[i, k] for k in range(j)), coarser], dim=1))
        out = self.head(grid[0, self.levels - 1])
        if self.rescale_output:
            out = out * scale + low
        return out.squeeze(1) if squeeze and out.shape[1] == 1 else out
