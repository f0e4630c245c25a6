"""FSC restricted to a region of Fourier space, e.g. the missing wedge a cryo-ET method has to fill.

The whole-volume FSC mixes the measured frequencies (which a method only has to keep) with the missing
wedge (which it has to recover); IsoNet2 and DeepDeWedge report the two regions apart for that reason.
Shells are those of :func:`cryoray.physics.metrics.fourier_shell_correlation` (cryoDRGN's integer radii,
entry ``i`` labelled ``i/D``); only the Fourier voxels where ``region`` is non-zero enter each shell's sums,
weighted by ``region``. A shell with no region voxel is NaN (the origin lies outside a missing wedge).
"""

from __future__ import annotations

import torch

from .fourier import centered_grid, fft3_centered
from .wedge import missing_wedge_mask

__all__ = ["mean_shell_correlation", "missing_wedge_region", "region_fourier_shell_correlation"]


def missing_wedge_region(
    box: int, tilt_min_deg: float = -60.0, tilt_max_deg: float = 60.0, tilt_axis: str = "y", *, device: torch.device | str | None = None
) -> torch.Tensor:
    """1 where a single-axis tilt series over the range measures nothing (``1 − missing_wedge_mask``), centred grid."""
    return 1.0 - missing_wedge_mask(box, tilt_min_deg, tilt_max_deg, tilt_axis, device=device)


def region_fourier_shell_correlation(
    map1: torch.Tensor, map2: torch.Tensor, region: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """FSC of two real (..., D, D, D) maps over the Fourier voxels of ``region`` (D, D, D) only.

    Returns ``(frequency (D//2,), fsc (..., D//2))``; with ``region`` all ones it equals the whole-volume FSC
    except that entries 0 and 1 (the origin) are computed, not set to 1.
    """
    if map1.shape != map2.shape or map1.ndim < 3 or len(set(map1.shape[-3:])) != 1 or map1.shape[-1] < 4:
        raise ValueError(
            f"region_fourier_shell_correlation: expected two cubic maps of equal shape, got {tuple(map1.shape)} and {tuple(map2.shape)}"
        )
    box = map1.shape[-1]
    if tuple(region.shape) != (box, box, box):
        raise ValueError(f"region_fourier_shell_correlation: region must be ({box}, {box}, {box}), got {tuple(region.shape)}")
    f1, f2 = fft3_centered(map1), fft3_centered(map2)
    n_shells = box // 2
    radius = torch.linalg.vector_norm(centered_grid(box, 3, dtype=torch.float64, device=map1.device), dim=-1)
    shell = (torch.floor(radius).long() + 1).clamp(max=n_shells).reshape(-1)  # index n_shells collects the corners
    weight = region.to(device=map1.device, dtype=f1.real.dtype)

    def shell_sum(values: torch.Tensor) -> torch.Tensor:
        flat = (values * weight).reshape(*values.shape[:-3], -1)
        return flat.new_zeros(*flat.shape[:-1], n_shells + 1).index_add(-1, shell, flat)[..., :n_shells]

    numerator = shell_sum((f1 * f2.conj()).real)
    power1 = shell_sum(f1.real**2 + f1.imag**2)
    power2 = shell_sum(f2.real**2 + f2.imag**2)
    count = torch.zeros(n_shells + 1, dtype=weight.dtype, device=weight.device).index_add(0, shell, (weight != 0).reshape(-1).to(weight.dtype))
    denominator = torch.sqrt((power1 * power2).clamp_min(torch.finfo(numerator.dtype).tiny))
    fsc = torch.where(count[:n_shells] > 0, numerator / denominator, torch.full_like(numerator, float("nan")))
    frequency = torch.arange(n_shells, dtype=map1.dtype, device=map1.device) / box
    return frequency, fsc


def mean_shell_correlation(fsc: torch.Tensor, first_shell: int = 2) -> torch.Tensor:
    """One number per curve: the mean over shells ``first_shell …`` (skipping the origin), NaN shells ignored."""
    return torch.nanmean(fsc[..., first_shell:], dim=-1)
