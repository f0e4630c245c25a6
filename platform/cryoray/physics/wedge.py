"""Cryo-ET missing wedge and the 90° cube rotations used to move it (IsoNet / DeepDeWedge).

Single-axis tilting about y by ``α`` (specimen pose ``R_y(α)``, right-handed) measures the central
plane through the y axis and the direction ``(kx, kz) = (cos α, sin α)``; a tilt range
``[α_min, α_max]`` therefore measures the Fourier points whose direction angle in the X–Z plane,
``atan2(kz, kx)`` folded into ``(-90°, 90°]``, lies in the range, and misses a wedge around the
``kz`` axis (as IsoNet's ``mw2d`` in the X–Z plane). For tilting about x the plane is Y–Z and the
angle is ``atan2(-kz, ky)``. Masks are on the centred grid, 1 = measured, float.

Of the 24 proper rotations of the cube, the 4 diagonal ones (identity and the 180° turns about x,
y and z, the Klein four-group) map an axis-aligned wedge onto itself; the other 20 move it, and
they are exactly IsoNet v1's 20 ``rot90`` augmentation pairs as a set.
"""

from __future__ import annotations

import itertools

import torch

from .fourier import fft3_centered, frequency_grid, ifft3_centered

__all__ = [
    "missing_wedge_mask",
    "missing_wedge_region",
    "tilt_series_mask",
    "apply_fourier_mask",
    "cube_rotations",
    "wedge_changing_rotations",
    "rotate_volume_90",
]


def missing_wedge_mask(
    box: int,
    tilt_min_deg: float = -60.0,
    tilt_max_deg: float = 60.0,
    tilt_axis: str = "y",
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Centred 3D Fourier mask (box, box, box), 1 where a tilt series over the range measures data.

    The tilt axis itself (where the in-plane components vanish, including the origin) is measured.
    Points exactly on the range limits count as measured.
    """
    if isinstance(box, bool) or not isinstance(box, int) or box < 1:
        raise ValueError(f"missing_wedge_mask: box must be a positive integer, got {box!r}")
    if not -90.0 <= tilt_min_deg < tilt_max_deg <= 90.0:
        raise ValueError(f"missing_wedge_mask: need -90 <= tilt_min_deg < tilt_max_deg <= 90, got {tilt_min_deg}, {tilt_max_deg}")
    k = frequency_grid(box, 3, dtype=torch.float64, device=device)
    if tilt_axis == "y":
        along, across = k[..., 0], k[..., 2]
    elif tilt_axis == "x":
        along, across = k[..., 1], -k[..., 2]
    else:
        raise ValueError(f"missing_wedge_mask: tilt_axis must be 'x' or 'y', got {tilt_axis!r}")
    angle = torch.rad2deg(torch.atan2(across, along))
    angle = torch.where(angle > 90, angle - 180, torch.where(angle <= -90, angle + 180, angle))
    tolerance = 1e-9
    measured = (angle >= tilt_min_deg - tolerance) & (angle <= tilt_max_deg + tolerance)
    on_axis = (along == 0) & (across == 0)
    return (measured | on_axis).to(dtype)


def missing_wedge_region(
    box: int,
    tilt_min_deg: float = -60.0,
    tilt_max_deg: float = 60.0,
    tilt_axis: str = "y",
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """1 where a single-axis tilt series over the range measures nothing (``1 − missing_wedge_mask``), centred grid.

    The region a restoration method has to fill; `fourier_shell_correlation(..., region=...)` scores it apart.
    """
    return 1.0 - missing_wedge_mask(box, tilt_min_deg, tilt_max_deg, tilt_axis, device=device)


def tilt_series_mask(
    shape_zyx: tuple[int, int, int],
    tilt_min_deg: float = -60.0,
    tilt_max_deg: float = 60.0,
    tilt_step_deg: float | None = None,
    tilt_axis: str = "y",
    *,
    plane_thickness_px: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Centred 3D Fourier mask of a (Z, Y, X) volume, 1 where a single-axis tilt series measures data.

    Frequencies are in cycles/pixel on each axis (``(i - D//2) / D``), so directions are physical
    for non-cubic volumes. With ``tilt_step_deg=None`` the whole range is measured (a continuous
    wedge; for a cube this is exactly :func:`missing_wedge_mask`). With a step, only the central
    planes of the tilts ``tilt_min, tilt_min + step, ... <= tilt_max`` are measured, each
    ``plane_thickness_px`` Fourier voxels thick (distance to the plane counted in voxel units of
    the grid): a real tilt series samples discrete planes, so high frequencies between two planes
    stay unmeasured beyond the Crowther radius. The tilt axis itself is always measured.
    """
    if len(shape_zyx) != 3 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape_zyx):
        raise ValueError(f"tilt_series_mask: shape_zyx must be three positive integers, got {shape_zyx!r}")
    if not -90.0 <= tilt_min_deg < tilt_max_deg <= 90.0:
        raise ValueError(f"tilt_series_mask: need -90 <= tilt_min_deg < tilt_max_deg <= 90, got {tilt_min_deg}, {tilt_max_deg}")
    if tilt_step_deg is not None and not tilt_step_deg > 0:
        raise ValueError(f"tilt_series_mask: tilt_step_deg must be > 0 or None, got {tilt_step_deg}")
    if not plane_thickness_px > 0:
        raise ValueError(f"tilt_series_mask: plane_thickness_px must be > 0, got {plane_thickness_px}")
    if tilt_axis not in ("x", "y"):
        raise ValueError(f"tilt_series_mask: tilt_axis must be 'x' or 'y', got {tilt_axis!r}")
    size_z, size_y, size_x = shape_zyx
    size_along = size_x if tilt_axis == "y" else size_y

    def frequencies(size: int) -> torch.Tensor:
        return (torch.arange(size, dtype=torch.float64, device=device) - size // 2) / size

    # The mask does not depend on the coordinate along the tilt axis: build the (z, across) plane once.
    across = frequencies(size_z)[:, None] * (1.0 if tilt_axis == "y" else -1.0)
    along = frequencies(size_along)[None, :]
    on_axis = (along == 0) & (across == 0)
    if tilt_step_deg is None:
        angle = torch.rad2deg(torch.atan2(across, along))
        angle = torch.where(angle > 90, angle - 180, torch.where(angle <= -90, angle + 180, angle))
        tolerance = 1e-9
        measured = (angle >= tilt_min_deg - tolerance) & (angle <= tilt_max_deg + tolerance)
    else:
        n_tilts = int((tilt_max_deg - tilt_min_deg) / tilt_step_deg + 1e-9) + 1
        tilts = torch.deg2rad(tilt_min_deg + tilt_step_deg * torch.arange(n_tilts, dtype=torch.float64, device=device))
        # In voxel units a plane of direction (cos a, sin a) runs along (D_along cos a, D_z sin a).
        u_along, u_across = along * size_along, across * size_z
        dir_along, dir_across = size_along * torch.cos(tilts), size_z * torch.sin(tilts)
        norm = torch.sqrt(dir_along**2 + dir_across**2)
        distance = (u_along[..., None] * dir_across - u_across[..., None] * dir_along).abs() / norm
        measured = (distance <= plane_thickness_px / 2 + 1e-9).any(dim=-1)
    plane = (measured | on_axis).to(dtype)
    if tilt_axis == "y":
        return plane[:, None, :].expand(size_z, size_y, size_x).contiguous()
    return plane[:, :, None].expand(size_z, size_y, size_x).contiguous()


def apply_fourier_mask(volume: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Re F⁻¹(mask · F volume)`` with centred 3D FFTs over the last three dims (mask broadcasts)."""
    if volume.ndim < 3 or mask.ndim < 3 or tuple(volume.shape[-3:]) != tuple(mask.shape[-3:]):
        raise ValueError(
            f"apply_fourier_mask: volume {tuple(volume.shape)} and mask {tuple(mask.shape)} must share the last three dims"
        )
    if volume.is_complex():
        raise ValueError("apply_fourier_mask: expected a real volume, got a complex tensor")
    return ifft3_centered(fft3_centered(volume) * mask).real


def cube_rotations() -> torch.Tensor:
    """The 24 proper rotations of the cube: signed permutation matrices with det +1, (24, 3, 3) int64.

    They act on column vectors ``(x, y, z)``; the identity comes first.
    """
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = torch.zeros(3, 3, dtype=torch.int64)
            for row, (col, sign) in enumerate(zip(perm, signs)):
                m[row, col] = sign
            if int(round(torch.linalg.det(m.double()).item())) == 1:
                mats.append(m)
    return torch.stack(mats)


def wedge_changing_rotations() -> torch.Tensor:
    """The 20 cube rotations that move an axis-aligned missing wedge, (20, 3, 3) int64.

    All but the 4 diagonal ones (identity, 180° about x, y, z), which map the wedge onto itself.
    """
    mats = cube_rotations()
    diagonal = (mats.abs() == torch.eye(3, dtype=torch.int64)).all(dim=(-1, -2))
    return mats[~diagonal]


def rotate_volume_90(volume: torch.Tensor, R_int: torch.Tensor) -> torch.Tensor:
    """Rotate ``volume`` (..., D, D, D) exactly by a cube rotation: ``V'(r) = V(R_intᵀ r)``.

    Implemented with flips and a permutation of the last three axes (no interpolation), so the
    rotation is about the array centre ``(D-1)/2`` (= ``D//2`` for odd D). Acting on a centred
    Fourier mask it rotates the mask the same way as it rotates a real-space volume.
    """
    # R_int steers flips and a permutation from the host: pass a CPU matrix (as cube_rotations gives) and this
    # reads nothing back from the device the volume lives on.
    R = torch.as_tensor(R_int)
    if tuple(R.shape) != (3, 3):
        raise ValueError(f"rotate_volume_90: expected a 3x3 matrix, got shape {tuple(R.shape)}")
    Ri = R.round().to(torch.int64)
    is_signed_perm = bool(((Ri.abs().sum(0) == 1) & (Ri.abs().sum(1) == 1)).all()) and bool((R == Ri).all())
    if not is_signed_perm or int(round(torch.linalg.det(Ri.double()).item())) != 1:
        raise ValueError(f"rotate_volume_90: expected a proper signed permutation matrix, got {R.tolist()}")
    if volume.ndim < 3 or not volume.shape[-1] == volume.shape[-2] == volume.shape[-3]:
        raise ValueError(f"rotate_volume_90: expected a cubic volume (..., D, D, D), got shape {tuple(volume.shape)}")
    # Column j of R has its entry s_j at row p(j): input coordinate j = s_j * output coordinate p(j).
    rows = Ri.abs().argmax(dim=0).tolist()
    signs = [int(Ri[rows[j], j]) for j in range(3)]
    lead = volume.ndim - 3
    flip_dims = [lead + 2 - j for j in range(3) if signs[j] == -1]  # coordinate j lives on array dim (2 - j)
    flipped = torch.flip(volume, dims=flip_dims) if flip_dims else volume
    order = [0, 0, 0]
    for j in range(3):
        order[2 - rows[j]] = 2 - j
    return flipped.permute(*range(lead), *(lead + o for o in order))
