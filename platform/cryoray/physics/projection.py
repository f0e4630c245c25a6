"""Projection of 3D maps to 2D images (Fourier slice and real space) and in-plane shifts.

Coordinates of voxel ``(iz, iy, ix)`` are ``(x, y, z) = (ix, iy, iz) - D//2``. A pose ``R`` maps
particle coordinates into the lab frame, and the image is the integral along lab ``z``:
``P(x, y) = ∫ V(Rᵀ (x, y, z)ᵀ) dz``; by the projection-slice theorem its centred 2D FFT is the
central slice ``P̂(kx, ky) = V̂(Rᵀ (kx, ky, 0)ᵀ)`` of the centred 3D FFT.

Relation to cryoDRGN: the rotation matrices in cryoDRGN pose pickles (``rot`` of
``(rot, trans)``, built by ``utils.R_from_relion``, which equals RELION's ``Euler_angles2matrix``)
ARE poses in this convention, with no transpose and no axis swap: :func:`project_real_space` with
cryoDRGN's ``rot`` reproduces its ``toy_projections.mrcs`` from ``toymodel_small_nocenter.mrc`` to
1e-5 (cryoDRGN rotates the lattice as row vectors, ``coords @ rot``, i.e. ``rotᵀ`` on columns).
The ``trans`` of ``toy_rot_trans.pkl`` (fraction of the box) are not applied to those images.

Interpolation is trilinear (``grid_sample``, ``align_corners=True`` so that normalised
coordinates ``-1`` and ``+1`` are the centres of the first and last voxel), zero outside the box.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fourier import centered_grid, fft2_centered, fft3_centered, frequency_grid, ifft2_centered

__all__ = [
    "slice_volume_fourier",
    "sample_central_slices",
    "insert_central_slices",
    "project_fourier_slice",
    "project_real_space",
    "shift_images_fourier",
    "shift_images",
]


def _check_cube(volume: torch.Tensor, name: str) -> int:
    if volume.ndim not in (3, 4) or not volume.shape[-1] == volume.shape[-2] == volume.shape[-3]:
        raise ValueError(f"{name}: expected a cubic volume (D, D, D) or a batch (B, D, D, D), got shape {tuple(volume.shape)}")
    return volume.shape[-1]


def _check_rotations(rotations: torch.Tensor, volume: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    single = rotations.ndim == 2
    rot = rotations[None] if single else rotations
    if rot.ndim != 3 or tuple(rot.shape[-2:]) != (3, 3):
        raise ValueError(f"{name}: expected rotations of shape (B, 3, 3) or (3, 3), got shape {tuple(rotations.shape)}")
    if volume.ndim == 4 and volume.shape[0] != rot.shape[0]:
        raise ValueError(f"{name}: a batch of {volume.shape[0]} volumes needs as many rotations, got {rot.shape[0]}")
    return rot, single


def _sample(volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``volume`` (N, C, D, D, D) at centred (x, y, z) ``points`` (N, ...3)."""
    box = volume.shape[-1]
    grid = (points + box // 2) * (2.0 / (box - 1)) - 1.0
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _as_channels(volume: torch.Tensor) -> torch.Tensor:
    """(…, D, D, D) real or complex -> (N, C, D, D, D) real with C = 1 or 2 (re, im)."""
    batched = volume if volume.ndim == 4 else volume[None]
    if batched.is_complex():
        return torch.view_as_real(batched).permute(0, 4, 1, 2, 3)
    return batched[:, None]


def slice_volume_fourier(volume_ft: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Central slices ``V̂(Rᵀ (kx, ky, 0)ᵀ)`` of a centred Fourier (complex) or Hartley (real) volume.

    ``volume_ft``: (D, D, D) shared by all rotations, or (B, D, D, D) one per rotation.
    ``rotations``: (B, 3, 3) or (3, 3). Returns (B, D, D) (or (D, D)) of the volume's dtype,
    differentiable with respect to both inputs.
    """
    box = _check_cube(volume_ft, "slice_volume_fourier")
    real_dtype = volume_ft.real.dtype if volume_ft.is_complex() else volume_ft.dtype
    plane = centered_grid(box, 2, dtype=real_dtype, device=volume_ft.device)  # (D, D, 2) lab (kx, ky)
    return sample_central_slices(volume_ft, rotations, plane)


def sample_central_slices(volume_ft: torch.Tensor, rotations: torch.Tensor, plane_px: torch.Tensor) -> torch.Tensor:
    """``V̂(Rᵀ (kx, ky, 0)ᵀ)`` at chosen lab-plane frequencies ``plane_px`` (…P, 2), in Fourier pixels.

    The one slicing routine: :func:`slice_volume_fourier` passes the whole plane; a pose search passes the
    few hundred pixels of its band-limited disc, so rendering a template costs P samples, not D².
    ``volume_ft``: (D, D, D) or (B, D, D, D); ``rotations``: (B, 3, 3) or (3, 3). Returns (B, …P) (or (…P)).
    """
    _check_cube(volume_ft, "sample_central_slices")
    rot, single = _check_rotations(rotations, volume_ft, "sample_central_slices")
    real_dtype = volume_ft.real.dtype if volume_ft.is_complex() else volume_ft.dtype
    plane = torch.cat((plane_px, torch.zeros_like(plane_px[..., :1])), dim=-1).to(real_dtype)  # lab (kx, ky, 0)
    points = torch.einsum("bji,...j->b...i", rot.to(real_dtype), plane).reshape(rot.shape[0], 1, 1, -1, 3)  # Rᵀ k
    channels = _as_channels(volume_ft)
    if volume_ft.ndim == 3:  # one volume: all rotations' points in one grid_sample
        sampled = _sample(channels, points.reshape(1, 1, 1, -1, 3))[0, :, 0, 0].movedim(0, -1)
    else:
        sampled = _sample(channels, points)[:, :, 0, 0].movedim(1, -1)
    sampled = sampled.reshape(rot.shape[0], *plane_px.shape[:-1], channels.shape[1])
    out = torch.view_as_complex(sampled.contiguous()) if volume_ft.is_complex() else sampled[..., 0]
    return out[0] if single else out


def insert_central_slices(slices_ft: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`slice_volume_fourier` for one shared volume: each slice spread into the volume by the
    transposed trilinear weights (back-projection in Fourier space), ``⟨slice(V, R), S⟩ = ⟨V, insert(S, R)⟩``.

    ``slices_ft``: (B, D, D) real or complex; ``rotations``: (B, 3, 3). Returns (D, D, D) of the slices' dtype. The
    transpose is taken by autograd of the one slicing routine, so the two cannot disagree on a convention.
    """
    box = slices_ft.shape[-1]
    volume = torch.zeros((box, box, box), dtype=slices_ft.dtype, device=slices_ft.device, requires_grad=True)
    with torch.enable_grad():
        sampled = slice_volume_fourier(volume, rotations)
        (inserted,) = torch.autograd.grad(sampled, volume, grad_outputs=slices_ft)
    return inserted


def project_fourier_slice(
    volume: torch.Tensor,
    rotations: torch.Tensor,
    pad_factor: int = 2,
    gridding_correction: bool = True,
) -> torch.Tensor:
    """Real-space images ``∫ V(Rᵀ r) dz`` of a real volume through the projection-slice theorem.

    The volume is zero-padded to ``pad_factor·D`` (default 2: finer slice sampling and no
    wrap-around), Fourier transformed, sliced with trilinear interpolation, inverse transformed and
    cropped back to D × D around ``D//2``. Trilinear interpolation in Fourier space multiplies
    real space by ``sinc²(x/N) sinc²(y/N) sinc²(z/N)`` (N the padded size); with
    ``gridding_correction`` the volume is divided by that factor first, which removes the fall-off
    towards the box edge. For even sizes the unpaired Nyquist plane makes the slice slightly
    non-Hermitian; its imaginary residue is dropped with ``.real``.
    Returns (B, D, D) (or (D, D)); differentiable with respect to volume and rotations.
    """
    box = _check_cube(volume, "project_fourier_slice")
    if volume.is_complex():
        raise ValueError("project_fourier_slice: expected a real volume, got a complex one")
    if isinstance(pad_factor, bool) or not isinstance(pad_factor, int) or pad_factor < 1:
        raise ValueError(f"project_fourier_slice: pad_factor must be an integer >= 1, got {pad_factor!r}")
    _check_rotations(rotations, volume, "project_fourier_slice")
    padded_box = pad_factor * box
    if gridding_correction:
        coords = torch.arange(box, dtype=volume.dtype, device=volume.device) - box // 2
        weight = torch.sinc(coords / padded_box) ** 2
        volume = volume / (weight[:, None, None] * weight[None, :, None] * weight[None, None, :])
    before = padded_box // 2 - box // 2
    after = padded_box - box - before
    padded = F.pad(volume, (before, after) * 3)
    volume_ft = fft3_centered(padded, norm="backward")
    slices = slice_volume_fourier(volume_ft, rotations)
    images = ifft2_centered(slices, norm="backward").real
    return images[..., before : before + box, before : before + box]


def project_real_space(volume: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Reference projector: resample the volume on the rotated lattice and sum along lab ``z``.

    Voxel ``(x, y, z)`` of the lab frame takes ``V(Rᵀ (x, y, z)ᵀ)`` by trilinear interpolation.
    ``volume``: (D, D, D) or (B, D, D, D); ``rotations``: (B, 3, 3) or (3, 3). Returns (B, D, D)
    (or (D, D)). Memory grows as B·D³; use it for tests and small boxes.
    """
    box = _check_cube(volume, "project_real_space")
    rot, single = _check_rotations(rotations, volume, "project_real_space")
    lattice = centered_grid(box, 3, dtype=volume.dtype, device=volume.device)  # (D, D, D, 3) lab (x, y, z)
    points = torch.einsum("bji,zyxj->bzyxi", rot.to(volume.dtype), lattice)
    channels = _as_channels(volume)
    if volume.ndim == 3:
        n = rot.shape[0]
        sampled = _sample(channels, points.reshape(1, n * box, box, box, 3)).reshape(n, box, box, box)
    else:
        sampled = _sample(channels, points)[:, 0]
    images = sampled.sum(dim=1)
    return images[0] if single else images


def shift_images_fourier(images_ft: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Phase-shift centred image FTs by ``shifts_px`` = (sx, sy) pixels, x first.

    Multiplies by ``exp(-2πi (kx·sx + ky·sy))`` (k in cycles/pixel), so a positive ``sx`` moves the
    content towards +x (larger column index). ``images_ft``: (..., D, D) complex; ``shifts_px``:
    (..., 2) broadcastable to the leading dims. Differentiable in both.
    """
    if not images_ft.is_complex() or images_ft.ndim < 2 or images_ft.shape[-1] != images_ft.shape[-2]:
        raise ValueError(
            f"shift_images_fourier: expected complex square image FTs (..., D, D), got {images_ft.dtype} {tuple(images_ft.shape)}"
        )
    shifts_px = torch.as_tensor(shifts_px, device=images_ft.device)
    if shifts_px.ndim < 1 or shifts_px.shape[-1] != 2:
        raise ValueError(f"shift_images_fourier: expected shifts of shape (..., 2), got {tuple(shifts_px.shape)}")
    box = images_ft.shape[-1]
    k = frequency_grid(box, 2, dtype=images_ft.real.dtype, device=images_ft.device)  # (D, D, 2) (kx, ky)
    phase = (k * shifts_px.to(k.dtype)[..., None, None, :]).sum(-1)
    return images_ft * torch.polar(torch.ones_like(phase), -2 * torch.pi * phase)


def shift_images(images: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Real-space convenience for :func:`shift_images_fourier` (periodic, sub-pixel exact for band-limited images)."""
    if images.is_complex():
        raise ValueError("shift_images: expected real images, got a complex tensor")
    return ifft2_centered(shift_images_fourier(fft2_centered(images), shifts_px)).real
