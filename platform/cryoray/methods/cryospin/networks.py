"""cryoSPIN's networks: a multi-head VGG-style pose encoder and an explicit Hartley-space volume decoder.

Image formation is the physics package's: the central slice of a centred Hartley volume is the Hartley
transform of the projection (projection-slice theorem; Hartley is linear and real), turned into the Fourier
transform of the image by Hermitian symmetry, then shifted and multiplied by the CTF. The loss compares it
with the image's centred FFT inside the disc below Nyquist.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from cryoray.physics import (
    CTF_PARAMETERS,
    ctf_2d,
    fft2_centered,
    hartley_to_fourier,
    iht3_centered,
    s2s2_to_matrix,
    shift_images_fourier,
    slice_volume_fourier,
    sphere_mask,
    standardize,
)


class PoseEncoder(nn.Module):
    """VGG16-style trunk (3×3 conv + BN + ReLU stages, max-pooled) and ``n_heads`` fully-connected pose heads.

    Each head predicts an S2S2 (6D) rotation and, with ``predict_shifts``, an in-plane shift in pixels. A
    stage pools only while the feature map is at least 2 px wide, and an adaptive average pool to 2×2 ends
    the trunk, so one architecture serves 24 px smoke images and 128 px data (where it is the paper's:
    five stages, 256·2·2 = 1024 latent features). Images are standardised per image first (the code's
    input renormalisation).
    """

    def __init__(
        self,
        box_px: int,
        channels: list[int],
        convs_per_stage: list[int],
        head_hidden: list[int],
        n_heads: int,
        predict_shifts: bool = False,
        max_shift_px: float = 0.0,
    ) -> None:
        super().__init__()
        if len(channels) != len(convs_per_stage):
            raise ValueError(f"PoseEncoder: {len(channels)} stage widths but {len(convs_per_stage)} conv counts")
        layers: list[nn.Module] = []
        in_channels, size = 1, box_px
        for width, convs in zip(channels, convs_per_stage):
            for _ in range(convs):
                layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                in_channels = width
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        layers.append(nn.AdaptiveAvgPool2d(2))
        self.trunk = nn.Sequential(*layers)
        self.n_heads = n_heads
        self.predict_shifts = predict_shifts
        self.max_shift_px = max_shift_px
        out = 6 + (2 if predict_shifts else 0)
        self.heads = nn.ModuleList(_mlp(in_channels * 4, head_hidden, out) for _ in range(n_heads))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, D, D) images -> rotations (B, M, 3, 3) and shifts (B, M, 2) px (None without shifts)."""
        latent = self.trunk(standardize(images, 2)[:, None]).flatten(1)
        outputs = torch.stack([head(latent) for head in self.heads], dim=1)  # (B, M, 6 [+2])
        rotations = s2s2_to_matrix(outputs[..., :6])
        shifts = self.max_shift_px * torch.tanh(outputs[..., 6:]) if self.predict_shifts else None
        return rotations, shifts


def _mlp(in_features: int, hidden: list[int], out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


class HartleyVolume(nn.Module):
    """An explicit centred Hartley volume ``H = m·exp(e)`` (mantissa and exponent fields, D³ each), zero beyond
    Nyquist.

    The split gives the coefficients, which span orders of magnitude from the centre of Fourier space to
    its edge, a multiplicative degree of freedom, so Adam's fixed step size suits every frequency.
    Coefficients outside the ball ``|k| ≤ D/2`` (the cube's corners) are never seen by a central slice's
    loss disc, so they are held at zero: otherwise their random start stays in the map as a checkerboard.
    ``forward`` returns the central slices at ``rotations`` (through ``forward`` so DDP sees every use).
    """

    support: torch.Tensor  # a buffer: the ball below Nyquist

    def __init__(self, box_px: int, mantissa_init_std: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.register_buffer("support", sphere_mask(box_px, box_px // 2, 3))
        start = mantissa_init_std * torch.randn(box_px, box_px, box_px, generator=generator)
        self.mantissa = nn.Parameter(start * self.support)
        self.exponent = nn.Parameter(torch.zeros(box_px, box_px, box_px))

    def hartley(self) -> torch.Tensor:
        return self.mantissa * torch.exp(self.exponent) * self.support

    def forward(self, rotations: torch.Tensor) -> torch.Tensor:
        return slice_volume_fourier(self.hartley(), rotations)

    def density(self) -> torch.Tensor:
        """The real-space map (the physics package's inverse centred Hartley transform)."""
        return iht3_centered(self.hartley().detach())


def loss_mask(box_px: int, radius_fraction: float, device: torch.device | str | None = None) -> torch.Tensor:
    """The Fourier pixels the loss sees: ``|k| <= radius_fraction · Nyquist`` (a disc: no corners beyond Nyquist)."""
    return sphere_mask(box_px, radius_fraction * (box_px // 2), 2, dtype=torch.bool, device=device)


def render_fourier(
    hartley_slices: torch.Tensor,
    ctf: torch.Tensor | None,
    shifts_px: torch.Tensor | None,
) -> torch.Tensor:
    """Fourier images (…, D, D) complex from Hartley slices (…, D, D): Hermitian symmetry, shift, CTF."""
    fourier = hartley_to_fourier(hartley_slices, 2)
    if shifts_px is not None:
        fourier = shift_images_fourier(fourier, shifts_px)
    return fourier if ctf is None else fourier * ctf


def batch_ctf(batch: Mapping[str, torch.Tensor], box_px: int, pixel_size_angstrom: float) -> torch.Tensor:
    """(B, D, D) CTF of the batch's particles."""
    image = batch["image"]
    return ctf_2d(box_px, pixel_size_angstrom, **{k: batch[k] for k in CTF_PARAMETERS}, dtype=image.dtype, device=image.device)


def observed_fourier(images: torch.Tensor) -> torch.Tensor:
    """The centred (orthonormal) 2D FFT of the observed images."""
    return fft2_centered(images)


def per_image_loss(
    predicted: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor, kind: str, noise_variance: float
) -> torch.Tensor:
    """Per-image data term over the masked Fourier pixels, reduced over the last two dims.

    ``gaussian_nll`` (the paper, eq. 2/5): ``Σ|F̂_pred − F̂_obs|² / (2σ²)`` divided by the pixel count (a
    constant; the additive normaliser of the likelihood is dropped). ``l1`` (the public code): the mean
    modulus ``|F̂_pred − F̂_obs|``. The mean over the mask is a weighted sum: indexing by a boolean mask would read
    its size back from the device on every call.
    """
    residual = predicted - observed
    per_pixel = residual.real**2 + residual.imag**2 if kind == "gaussian_nll" else residual.abs()
    weights = mask.to(per_pixel.dtype)
    mean = (per_pixel * weights).sum(dim=(-2, -1)) / weights.sum()
    return mean / (2 * noise_variance) if kind == "gaussian_nll" else mean
