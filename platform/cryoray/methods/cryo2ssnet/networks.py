"""Cryo2SSNet's three networks: the pose encoder, the Hartley-space voxel decoder and the MLP denoiser."""

from __future__ import annotations

import torch
from torch import nn

from cryoray.physics import (
    ctf_2d,
    ht3_centered,
    iht2_centered,
    s2s2_to_matrix,
    sample_central_slices,
    slice_volume_fourier,
    sphere_mask,
    standardize,
)
from cryoray.physics.image_formation import CTF_PARAMETERS
from cryoray.physics.pose_search import FourierDisc


class PoseEncoder(nn.Module):
    """Image → rotation: 3 × [conv-ReLU, conv-ReLU, max-pool] (32, 64, 128 ch), 2 FC of 512, S2S2 head.

    The paper leaves kernel size and normalisation out; 3×3 convolutions with padding 1 and no
    normalisation layer are the plain reading (the input is already standardised per image).
    """

    def __init__(self, box_px: int, channels: tuple[int, int, int] = (32, 64, 128), hidden: int = 512) -> None:
        super().__init__()
        if box_px % 8:
            raise ValueError(f"PoseEncoder: the image side must be divisible by 8 (three 2× poolings), got {box_px}")
        layers: list[nn.Module] = []
        previous = 1
        for width in channels:
            layers += [
                nn.Conv2d(previous, width, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(previous * (box_px // 8) ** 2, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 6),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return s2s2_to_matrix(self.head(self.features(images[:, None])))


class HartleyDecoder(nn.Module):
    """An explicit real-space voxel map φ, imaged by central slices of its 3D Hartley transform.

    image = N(IHT₂(CTF · slice(HT₃(φ), R))) with N = `standardize` per image: the CTF is real and even, so it
    multiplies Hartley coefficients exactly as it multiplies Fourier ones. φ starts at U(0, 0.1) inside the
    estimated particle radius and 0 outside, as the paper states.
    """

    def __init__(self, box_px: int, pixel_size_angstrom: float, radius_px: float, init_max: float = 0.1) -> None:
        super().__init__()
        self.pixel_size_angstrom = pixel_size_angstrom
        inside = sphere_mask(box_px, radius_px, 3)
        self.density = nn.Parameter(torch.rand(box_px, box_px, box_px) * init_max * inside)

    def hartley_volume(self) -> torch.Tensor:
        return ht3_centered(self.density)

    def ctf(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's CTF on the centred image grid, (B, D, D)."""
        parameters = {k: batch[k] for k in CTF_PARAMETERS}
        density = self.density
        return ctf_2d(density.shape[-1], self.pixel_size_angstrom, **parameters, dtype=density.dtype, device=density.device)

    @staticmethod
    def render(hartley: torch.Tensor, rotations: torch.Tensor, ctf: torch.Tensor | None) -> torch.Tensor:
        """Standardised images (…, D, D) at ``rotations`` (…, 3, 3); ``ctf`` broadcasts against the slices."""
        lead = rotations.shape[:-2]
        slices = slice_volume_fourier(hartley, rotations.reshape(-1, 3, 3)).reshape(*lead, *hartley.shape[-2:])
        if ctf is not None:
            slices = slices * ctf
        return standardize(iht2_centered(slices), 2)

    def forward(self, rotations: torch.Tensor, ctf: torch.Tensor | None, disc: FourierDisc | None = None) -> torch.Tensor:
        """Standardised images (B, D, D); with ``disc``, the slices' Hartley coefficients on it (B, P) without the
        CTF (the pose search's templates)."""
        hartley = self.hartley_volume()
        if disc is not None:
            return sample_central_slices(hartley, rotations, disc.plane_px)
        return self.render(hartley, rotations, ctf)


class MLPDenoiser(nn.Module):
    """The paper's 5-layer MLP autoencoder n² → n²/f → n²/f → n²/f → n²/f → n² on the masked image.

    The narrow layers cannot carry pixel noise, so the output keeps the low-dimensional particle signal;
    it is trained with the unbiased loss against the noisy images themselves.
    """

    mask: torch.Tensor  # a buffer (the circular image mask)

    def __init__(self, box_px: int, downsample_factor: int, mask_radius_px: float) -> None:
        super().__init__()
        pixels = box_px * box_px
        narrow = max(pixels // downsample_factor, 1)
        self.register_buffer("mask", sphere_mask(box_px, mask_radius_px, 2))
        self.layers = nn.Sequential(
            nn.Linear(pixels, narrow),
            nn.ReLU(inplace=True),
            nn.Linear(narrow, narrow),
            nn.ReLU(inplace=True),
            nn.Linear(narrow, narrow),
            nn.ReLU(inplace=True),
            nn.Linear(narrow, narrow),
            nn.ReLU(inplace=True),
            nn.Linear(narrow, pixels),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        masked = images * self.mask
        return self.layers(masked.flatten(-2)).reshape(images.shape) * self.mask
