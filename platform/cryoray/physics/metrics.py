"""Evaluation metrics: FSC and resolution, PSNR/SSIM, pose error after global alignment.

FSC shells, written once for the whole of Fourier space and for a region of it (a missing wedge, the
measured part): cryoDRGN's ``fsc`` shells of the radius ``r`` (in pixels, from the centred origin
``D//2``). Entry ``i = 1 .. D//2-1`` correlates the voxels with ``i-1 <= r < i`` and is labelled ``i/D``
cycles/pixel (the shell's outer edge); voxels with ``r >= D//2 - 1`` (the last partial shell and the
corners) are left out. Entry 0 (frequency 0) and entry 1 (``r < 1``: the origin alone) carry only the
maps' means, which say nothing about resolution: both are 1 (RELION's and cryoDRGN's FSC(0) = 1; a mean
offset must not end the curve), or NaN when a region leaves the origin out. A shell with no power in
either map inside the region (no region voxel, or a map that is zero there) is NaN: its FSC is 0/0,
neither 0 nor 1. Entries ``i >= 2`` equal cryoDRGN's wherever they are defined.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .fourier import centered_grid, fft2_centered, fft3_centered
from .rotations import geodesic_distance_deg

__all__ = [
    "fourier_shell_correlation",
    "fsc_resolution_angstrom",
    "mean_shell_correlation",
    "psnr",
    "ssim",
    "rotation_error_after_alignment",
]


def fourier_shell_correlation(
    map1: torch.Tensor, map2: torch.Tensor, *, ndim: int = 3, region: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fourier shell (ndim=3) or ring (ndim=2) correlation on the shells of the module docstring.

    ``map1``, ``map2``: real (..., D, D, D) (or (..., D, D)), same shape; leading dims are a batch.
    ``region`` (D,)*ndim on the centred Fourier grid weights each voxel's terms (0 = left out, e.g.
    `missing_wedge_region`); None is the whole of Fourier space. Returns ``(frequency, fsc)``: frequency
    (D//2,) in cycles/pixel, fsc (..., D//2) with ``fsc_i = Re Σ w F1 F2* / sqrt(Σ w|F1|² Σ w|F2|²)`` over
    shell i. Differentiable (usable as a loss) where defined; no host sync.
    """
    if ndim not in (2, 3):
        raise ValueError(f"fourier_shell_correlation: ndim must be 2 or 3, got {ndim}")
    if map1.shape != map2.shape:
        raise ValueError(f"fourier_shell_correlation: maps differ in shape: {tuple(map1.shape)} vs {tuple(map2.shape)}")
    box = map1.shape[-1] if map1.ndim >= ndim else 0
    if map1.ndim < ndim or len(set(map1.shape[-ndim:])) != 1 or box < 4:
        raise ValueError(f"fourier_shell_correlation: expected cubic/square maps of size >= 4, got shape {tuple(map1.shape)}")
    if map1.is_complex() or map2.is_complex():
        raise ValueError("fourier_shell_correlation: expected real maps")
    if region is not None and tuple(region.shape) != (box,) * ndim:
        raise ValueError(f"fourier_shell_correlation: region must have shape {(box,) * ndim}, got {tuple(region.shape)}")
    fft = fft3_centered if ndim == 3 else fft2_centered
    f1, f2 = fft(map1), fft(map2)
    n_shells = box // 2
    radius = torch.linalg.vector_norm(centered_grid(box, ndim, dtype=torch.float64, device=map1.device), dim=-1)
    shell = (torch.floor(radius).long() + 1).clamp(max=n_shells).reshape(-1)  # entry n_shells collects the left-out voxels
    weight = None if region is None else region.to(device=map1.device, dtype=f1.real.dtype).reshape(-1)

    def shell_sum(values: torch.Tensor) -> torch.Tensor:
        flat = values.reshape(*values.shape[: values.ndim - ndim], -1)
        if weight is not None:
            flat = flat * weight
        return flat.new_zeros(*flat.shape[:-1], n_shells + 1).index_add(-1, shell, flat)[..., :n_shells]

    numerator = shell_sum((f1 * f2.conj()).real)
    power1 = shell_sum(f1.real**2 + f1.imag**2)
    power2 = shell_sum(f2.real**2 + f2.imag**2)
    denominator = torch.sqrt((power1 * power2).clamp_min(torch.finfo(numerator.dtype).tiny))
    nan = torch.full_like(numerator, math.nan)
    fsc = torch.where((power1 > 0) & (power2 > 0), numerator / denominator, nan)
    origin = torch.ones_like(fsc[..., :2])
    if weight is not None:
        origin = torch.where(weight.reshape((box,) * ndim)[(box // 2,) * ndim] != 0, origin, nan[..., :2])
    fsc = torch.cat((origin, fsc[..., 2:]), dim=-1)
    frequency = torch.arange(n_shells, dtype=map1.dtype, device=map1.device) / box
    return frequency, fsc


def mean_shell_correlation(fsc: torch.Tensor, first_shell: int = 2) -> torch.Tensor:
    """One number per curve: the mean over shells ``first_shell …`` (after the origin), NaN shells left out."""
    return torch.nanmean(fsc[..., first_shell:], dim=-1)


def fsc_resolution_angstrom(
    frequency: torch.Tensor,
    fsc: torch.Tensor,
    pixel_size_angstrom: float,
    threshold: float = 0.5,
    rule: str = "first_crossing",
) -> float:
    """Resolution in Å at which the FSC meets ``threshold`` (0.5 vs a reference, 0.143 half-maps).

    ``rule="first_crossing"``: the curve is followed from low frequency to the first shell below
    the threshold and the crossing is interpolated linearly between that shell and the one before;
    bumps above the threshold after the first dip are ignored. If the curve never drops below,
    the last shell's frequency is used. ``rule="last_above"``: cryoDRGN's choice, the highest
    shell frequency with ``fsc >= threshold`` (no interpolation); it is optimistic when the curve
    bumps back up. A NaN shell (no power: nothing to correlate) counts as below the threshold and is
    never interpolated to. Returns ``inf`` when only frequency 0 qualifies.
    """
    # A number for reports: the curve comes to the host once, then the crossing is found there.
    freq = torch.as_tensor(frequency, dtype=torch.float64).detach().cpu()
    curve = torch.as_tensor(fsc, dtype=torch.float64).detach().cpu()
    if freq.ndim != 1 or curve.shape != freq.shape or freq.numel() < 2:
        raise ValueError(
            "fsc_resolution_angstrom: expected 1D frequency and fsc of equal length >= 2, "
            f"got {tuple(freq.shape)} and {tuple(curve.shape)}"
        )
    if not pixel_size_angstrom > 0:
        raise ValueError(f"fsc_resolution_angstrom: pixel_size_angstrom must be > 0, got {pixel_size_angstrom}")
    if not 0 < threshold < 1:
        raise ValueError(f"fsc_resolution_angstrom: threshold must lie in (0, 1), got {threshold}")
    if rule == "last_above":
        above = torch.nonzero(curve >= threshold).flatten()
        best = float(freq[above[-1]]) if above.numel() else 0.0
    elif rule == "first_crossing":
        below = torch.nonzero(~(curve[1:] >= threshold)).flatten()
        if below.numel() == 0:
            best = float(freq[-1])
        else:
            j = int(below[0]) + 1
            f0, f1, c0, c1 = (float(v) for v in (freq[j - 1], freq[j], curve[j - 1], curve[j]))
            best = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0) if c0 > threshold and not math.isnan(c1) else f0
    else:
        raise ValueError(f"fsc_resolution_angstrom: rule must be 'first_crossing' or 'last_above', got {rule!r}")
    return math.inf if best <= 0 else pixel_size_angstrom / best


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float, *, ndim: int | None = None) -> torch.Tensor:
    """Peak SNR in dB, ``10 log10(data_range² / MSE)``.

    The MSE is taken over all elements (``ndim=None``, as ``skimage.metrics.peak_signal_noise_ratio``)
    or per sample over the last ``ndim`` dims.
    """
    if x.shape != ref.shape:
        raise ValueError(f"psnr: shapes differ: {tuple(x.shape)} vs {tuple(ref.shape)}")
    if not data_range > 0:
        raise ValueError(f"psnr: data_range must be > 0, got {data_range}")
    dims = tuple(range(x.ndim)) if ndim is None else tuple(range(-ndim, 0))
    mse = ((x - ref) ** 2).mean(dim=dims)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_kernel(sigma: float, truncate: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def ssim(
    x: torch.Tensor,
    ref: torch.Tensor,
    data_range: float,
    *,
    ndim: int = 2,
    sigma: float = 1.5,
    truncate: float = 3.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) with a Gaussian window, per sample.

    Local means/variances/covariance use a normalised Gaussian (``sigma``, radius
    ``int(truncate·sigma + 0.5)``: 11 taps by default) over the last ``ndim`` (2 or 3) dims, with
    population (not sample) statistics; the SSIM map is averaged where the window fits entirely
    (no padding). This equals ``skimage.metrics.structural_similarity(x, ref, data_range=...,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``. Returns the leading shape.
    """
    if ndim not in (2, 3):
        raise ValueError(f"ssim: ndim must be 2 or 3, got {ndim}")
    if x.shape != ref.shape or x.ndim < ndim:
        raise ValueError(f"ssim: expected equal shapes with >= {ndim} dims, got {tuple(x.shape)} and {tuple(ref.shape)}")
    if not data_range > 0:
        raise ValueError(f"ssim: data_range must be > 0, got {data_range}")
    kernel = _gaussian_kernel(sigma, truncate, x.dtype, x.device)
    if min(x.shape[-ndim:]) < kernel.numel():
        raise ValueError(f"ssim: the spatial size {tuple(x.shape[-ndim:])} is smaller than the {kernel.numel()}-tap window")
    lead = x.shape[: x.ndim - ndim]
    conv = F.conv2d if ndim == 2 else F.conv3d

    def blur(v: torch.Tensor) -> torch.Tensor:
        out = v.reshape(-1, 1, *v.shape[-ndim:])
        for axis in range(ndim):
            shape = [1, 1] + [1] * ndim
            shape[2 + axis] = kernel.numel()
            out = conv(out, kernel.reshape(shape))
        return out

    mu_x, mu_y = blur(x), blur(ref)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(ref * ref) - mu_y**2
    cov = blur(x * ref) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(ssim_map.shape[0], -1).mean(-1).reshape(lead)


def _procrustes(P_sum: torch.Tensor) -> torch.Tensor:
    """The rotation A maximising tr(Aᵀ P_sum)."""
    U, _, Vh = torch.linalg.svd(P_sum)
    d = torch.sign(torch.linalg.det(U @ Vh))
    D = torch.diag(torch.stack((torch.ones_like(d), torch.ones_like(d), d)))
    return U @ D @ Vh


def rotation_error_after_alignment(
    R_pred: torch.Tensor,
    R_gt: torch.Tensor,
    n_references: int = 100,
    flip: bool = True,
    symmetry: torch.Tensor | None = None,
) -> dict:
    """Pose error after the best global alignment (and hand flip), as in cryoAI/cryoSPIN, modulo a point group.

    A map reconstructed in another frame has poses ``R_pred·A`` for a global rotation ``A``; a map
    of the other hand has ``F R F`` with ``F = diag(1, 1, -1)``. With ``symmetry`` (|G|, 3, 3) (see
    ``physics.symmetry``) a true pose R stands for every R·g, and each image's error is the smallest over
    them. Candidate alignments per hand are ``A_i = C_iᵀ G_i g`` for ``n_references`` images spread over the
    set (cryoAI's reference alignment) plus the least-squares (Procrustes) rotation over all images; the
    candidate with the smallest median squared Frobenius error wins and is refined by Procrustes over the
    images with at most median error. Returns ``mean_deg`` and ``median_deg`` (floats), ``errors_deg``
    (N,), ``aligned`` (N, 3, 3) (the aligned, possibly hand-flipped predictions), ``alignment``
    (3, 3) and ``flipped`` (bool).
    """
    if R_pred.shape != R_gt.shape or R_pred.ndim != 3 or tuple(R_pred.shape[-2:]) != (3, 3) or R_pred.shape[0] < 1:
        raise ValueError(
            "rotation_error_after_alignment: expected two (N, 3, 3) stacks of equal N >= 1, "
            f"got {tuple(R_pred.shape)} and {tuple(R_gt.shape)}"
        )
    if n_references < 1:
        raise ValueError(f"rotation_error_after_alignment: n_references must be >= 1, got {n_references}")
    R_pred = R_pred.detach()
    group = torch.eye(3, device=R_pred.device)[None] if symmetry is None else symmetry
    equivalent = R_gt.detach().to(R_pred.dtype)[:, None] @ group.to(R_pred)  # (N, G, 3, 3) poses equal to the truth
    n = R_pred.shape[0]
    refs = torch.linspace(0, n - 1, min(n_references, n), device=R_pred.device).round().long().unique()
    flip_matrix = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=R_pred.dtype, device=R_pred.device))
    hands = [(False, R_pred)] + ([(True, flip_matrix @ R_pred @ flip_matrix)] if flip else [])

    def squared_errors(A: torch.Tensor, P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, N) smallest |C A − G g|² = 6 − 2 tr(Aᵀ P_g) over the group, and the (K, N) g that attains it."""
        return (6 - 2 * torch.einsum("kab,ngab->kng", A, P)).min(dim=-1)

    # An evaluation, not a training step: the candidates are compared on the host (a few syncs per call).
    best: tuple[float, bool, torch.Tensor, torch.Tensor] | None = None  # (score, flipped, C, A)
    for flipped, C in hands:
        P = C.transpose(-1, -2)[:, None] @ equivalent  # (N, G, 3, 3)
        candidates = torch.cat((P[refs].reshape(-1, 3, 3), _procrustes(P[:, 0].sum(0))[None]), dim=0)
        sq_err, _ = squared_errors(candidates, P)
        k = int(sq_err.median(dim=1).values.argmin())
        inliers = sq_err[k] <= sq_err[k].median()
        nearest = squared_errors(candidates[k : k + 1], P)[1][0]
        refined = _procrustes(P[torch.arange(n), nearest][inliers].sum(0))
        options = [(candidates[k], sq_err[k].median()), (refined, squared_errors(refined[None], P)[0][0].median())]
        A, score = min(options, key=lambda item: float(item[1]))
        if best is None or float(score) < best[0]:
            best = (float(score), flipped, C, A)
    assert best is not None  # hands always holds the unflipped poses
    _, flipped, C, A = best
    aligned = C @ A
    errors = geodesic_distance_deg(aligned[:, None].expand_as(equivalent), equivalent).min(dim=1).values
    return {
        "mean_deg": float(errors.mean()),
        "median_deg": float(errors.median()),
        "errors_deg": errors,
        "aligned": aligned,
        "alignment": A,
        "flipped": flipped,
    }
