"""Rigid alignment of a reconstructed map to a reference: rotation, translation and hand.

An ab-initio reconstruction is determined only up to a global rotation, a translation (when shifts are
learned) and, from projections alone, its hand: the mirror image of a map explains every image equally
well with mirrored poses. Before an FSC against ground truth means anything, the map must be brought into
the reference's frame. The search here is global, then local:

1. Both maps are low-pass filtered and Fourier-cropped to ``search_box_px`` (the coarse frame).
2. For each hand and every rotation of a Hopf grid level (``search_level``; 4 608 rotations at level 2,
   15° apart) the rotated map is cross-correlated with the reference over all translations at once
   through the FFT; the best (hand, rotation, translation) by normalised correlation wins.
3. The winner is refined by L-BFGS on an axis-angle perturbation and a sub-voxel translation, maximising
   the real-space correlation at ``refine_box_px``.

Convention: ``aligned(r) = M(Aᵀ (r − t))`` with ``M`` the map or its mirror (``z → −z`` about the centre
voxel), ``A`` = ``rotation`` and ``t`` = ``shift_px`` in (x, y, z) voxels of the input map's box.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fourier import centered_grid, fft3_centered, ifft3_centered
from .hopf import hopf_grid_rotations
from .normalize import standardize
from .projection import _sample
from .rotations import axis_angle_to_matrix

__all__ = ["MapAlignment", "align_maps", "mirror_volume", "rotate_volume"]


@dataclass
class MapAlignment:
    """The transform that brings a map onto a reference, and the map so transformed."""

    rotation: torch.Tensor  # (3, 3) A
    shift_px: torch.Tensor  # (3,) t, (x, y, z) voxels
    flipped: bool  # the map was mirrored before rotating
    correlation: float  # real-space Pearson correlation of ``aligned`` with the reference
    aligned: torch.Tensor  # (D, D, D)


def mirror_volume(volume: torch.Tensor) -> torch.Tensor:
    """The mirror image ``V(x, y, −z)`` with ``z`` measured from the centre voxel ``D//2`` (a change of hand)."""
    mirrored = volume.flip(-3)
    return torch.roll(mirrored, 1, dims=-3) if volume.shape[-3] % 2 == 0 else mirrored


def rotate_volume(volume: torch.Tensor, rotation: torch.Tensor, shift_px: torch.Tensor | None = None) -> torch.Tensor:
    """``V(Rᵀ (r − t))`` by trilinear interpolation, zero outside the box; batched over (B, 3, 3) rotations.

    ``volume`` (D, D, D); ``rotation`` (3, 3) or (B, 3, 3); ``shift_px`` (3,) or (B, 3). Differentiable in
    all three.
    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"rotate_volume: expected a cubic (D, D, D) volume, got shape {tuple(volume.shape)}")
    single = rotation.ndim == 2
    rot = rotation[None] if single else rotation
    box = volume.shape[-1]
    lattice = centered_grid(box, 3, dtype=volume.dtype, device=volume.device)[None]  # (1, D, D, D, 3) as (x, y, z)
    if shift_px is not None:
        lattice = lattice - shift_px.reshape(-1, 1, 1, 1, 3).to(volume.dtype)
    lattice = lattice.expand(rot.shape[0], *lattice.shape[1:])
    points = torch.einsum("bji,bzyxj->bzyxi", rot.to(volume.dtype), lattice)  # Rᵀ (r − t)
    channels = volume[None, None].expand(rot.shape[0], 1, box, box, box)
    out = _sample(channels, points)[:, 0]
    return out[0] if single else out


def _fourier_crop(volume: torch.Tensor, box_px: int) -> torch.Tensor:
    """Downsample to ``box_px`` by keeping the central Fourier box (an ideal low-pass), scale preserved."""
    size = volume.shape[-1]
    if box_px >= size:
        return volume
    start = size // 2 - box_px // 2
    spectrum = fft3_centered(volume, norm="forward")[start : start + box_px, start : start + box_px, start : start + box_px]
    return ifft3_centered(spectrum, norm="forward").real


def _best_rotation_and_shift(
    moving: torch.Tensor, reference: torch.Tensor, rotations: torch.Tensor, chunk: int
) -> tuple[float, int, torch.Tensor]:
    """(correlation, rotation index, integer shift (x, y, z)) maximising the translational cross-correlation."""
    box = reference.shape[-1]
    reference_ft = torch.fft.fftn(standardize(reference, 3))
    peaks, peak_voxels = [], []
    for start in range(0, rotations.shape[0], chunk):
        rotated = standardize(rotate_volume(moving, rotations[start : start + chunk]), 3)
        # cc[s] = mean_r ref(r) rot(r − s): the correlation with the rotated map shifted by s (circular).
        cc = torch.fft.ifftn(reference_ft * torch.fft.fftn(rotated, dim=(-3, -2, -1)).conj(), dim=(-3, -2, -1)).real / box**3
        values, where = cc.reshape(cc.shape[0], -1).max(dim=1)
        peaks.append(values)
        peak_voxels.append(where)
    values, where = torch.cat(peaks), torch.cat(peak_voxels)
    best = int(values.argmax())  # the one host sync of the search: the winner indexes the rotations
    iz, iy, ix = torch.unravel_index(where[best], (box, box, box))
    wrapped = torch.stack((ix, iy, iz)).to(moving.dtype)
    shift = torch.where(wrapped > box // 2, wrapped - box, wrapped)
    return float(values[best]), best, shift


def _refine(
    moving: torch.Tensor, reference: torch.Tensor, rotation: torch.Tensor, shift_px: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local refinement by L-BFGS on (axis-angle ω, shift t) of ``A = exp(ω) A₀`` maximising the correlation."""
    target = standardize(reference, 3)
    omega = torch.zeros(3, dtype=moving.dtype, device=moving.device, requires_grad=True)
    shift = shift_px.clone().to(moving.dtype).requires_grad_(True)
    optimiser = torch.optim.LBFGS([omega, shift], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def negative_correlation() -> torch.Tensor:
        optimiser.zero_grad()
        candidate = rotate_volume(moving, axis_angle_to_matrix(omega) @ rotation, shift)
        loss = -(target * standardize(candidate, 3)).mean()
        loss.backward()
        return loss

    optimiser.step(negative_correlation)
    with torch.no_grad():
        return axis_angle_to_matrix(omega) @ rotation, shift.detach()


def align_maps(
    moving: torch.Tensor,
    reference: torch.Tensor,
    *,
    allow_flip: bool = True,
    search_level: int = 2,
    search_box_px: int = 24,
    refine_box_px: int = 48,
    refine_steps: int = 60,
    chunk: int = 128,
) -> MapAlignment:
    """Bring ``moving`` onto ``reference`` (both (D, D, D), same voxel size): global search, then local refinement.

    ``allow_flip`` also searches the mirror image (ab-initio maps come in either hand). The coarse search
    is exhaustive on the Hopf grid of ``search_level`` (spacing ``60°/2**level``) at ``search_box_px``;
    refinement runs at most ``refine_steps`` L-BFGS iterations at ``refine_box_px``. The returned shift is in voxels of
    the full box.
    """
    if moving.shape != reference.shape or moving.ndim != 3 or len(set(moving.shape)) != 1:
        raise ValueError(
            f"align_maps: expected two cubic maps of equal shape, got {tuple(moving.shape)} and {tuple(reference.shape)}"
        )
    box = moving.shape[-1]
    moving = moving.detach().to(torch.float32)
    reference = reference.detach().to(torch.float32)
    coarse_box = min(search_box_px, box) - min(search_box_px, box) % 2
    refine_box = min(refine_box_px, box) - min(refine_box_px, box) % 2
    coarse_reference = _fourier_crop(reference, coarse_box)
    rotations = hopf_grid_rotations(search_level, dtype=torch.float32, device=moving.device)
    hands = [False, True] if allow_flip else [False]
    candidates = []
    for flipped in hands:
        hand = mirror_volume(moving) if flipped else moving
        with torch.no_grad():
            score, index, shift = _best_rotation_and_shift(_fourier_crop(hand, coarse_box), coarse_reference, rotations, chunk)
        candidates.append((score, flipped, rotations[index], shift * (refine_box / coarse_box)))
    _, flipped, rotation, shift = max(candidates, key=lambda item: item[0])
    hand = mirror_volume(moving) if flipped else moving
    rotation, shift = _refine(
        _fourier_crop(hand, refine_box), _fourier_crop(reference, refine_box), rotation, shift, refine_steps
    )
    shift = shift * (box / refine_box)
    with torch.no_grad():
        aligned = rotate_volume(hand, rotation, shift)
        correlation = float((standardize(aligned, 3) * standardize(reference, 3)).mean())  # a reported number
    return MapAlignment(rotation=rotation, shift_px=shift, flipped=flipped, correlation=correlation, aligned=aligned)
