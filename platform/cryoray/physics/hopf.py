"""Hopf-fibration grid on SO(3) (Yershova et al. 2010) as cryoDRGN's ``so3_grid`` builds it.

Level ``l`` combines the nested HEALPix grid on S² (``Nside = 2**l``, ``12·4**l`` pixels) with a
grid on S¹ of ``6·2**l`` angles ``psi = (j + 1/2)·2π/(6·2**l)``, S²-major: index
``i = s2 * n_psi + s1``. So ``|G_l| = 72·8**l``. Hopf coordinates map to the quaternion
``(cos(θ/2)cos(ψ/2), cos(θ/2)sin(ψ/2), sin(θ/2)cos(φ+ψ/2), sin(θ/2)sin(φ+ψ/2))``.

Refinement follows cryoDRGN's ``get_neighbor``: the 4 nested HEALPix children ``4·s2 + {0..3}``
times the 4 S¹ candidates ``2·s1 + {-1, 0, 1, 2}`` (wrapped here at both ends, cryoDRGN wraps only
below) give 16 candidates; the 8 nearest to the parent by quaternion distance are the children.

Quaternions are turned into matrices with this package's Hamilton convention
(:func:`~cryoray.physics.rotations.quaternion_to_matrix`), not cryoDRGN's own ``quaternions_to_SO3``;
the grid is equally uniform either way, but a grid index names a different matrix than in cryoDRGN.

The HEALPix ``pix2ang`` in nested order is implemented here (healpy is not a dependency).
"""

from __future__ import annotations

import math

import torch

from .rotations import matrix_to_quaternion, quaternion_to_matrix

__all__ = [
    "healpix_pix2ang_nested",
    "hopf_children",
    "hopf_grid_quaternions",
    "hopf_grid_resolution_deg",
    "hopf_grid_rotations",
    "hopf_grid_size",
    "hopf_to_quaternion",
    "nearest_hopf_neighbours",
]


def _check_level(level: int, name: str) -> None:
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise ValueError(f"{name}: level must be an integer >= 0, got {level!r}")


def _compress_bits(v: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Keep the even bits of ``v`` and pack them together (undo a Morton interleave)."""
    out = torch.zeros_like(v)
    for bit in range(n_bits):
        out |= ((v >> (2 * bit)) & 1) << bit
    return out


def healpix_pix2ang_nested(nside: int, ipix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres ``(theta, phi)`` in radians of nested-order HEALPix pixels (float64).

    Same values as ``healpy.pix2ang(nside, ipix, nest=True)``: ``theta`` is the colatitude in
    ``[0, π]``, ``phi`` the longitude in ``[0, 2π)``. ``nside`` must be a power of two.
    """
    if nside < 1 or nside & (nside - 1):
        raise ValueError(f"healpix_pix2ang_nested: nside must be a power of two, got {nside}")
    ipix = torch.as_tensor(ipix, dtype=torch.int64)
    npix = 12 * nside * nside
    # A check of caller-given indices (reads them back once); the grid's own paths use _pix2ang_nested.
    if ipix.numel() and (int(ipix.min()) < 0 or int(ipix.max()) >= npix):
        raise ValueError(f"healpix_pix2ang_nested: pixel indices must lie in [0, {npix}) for nside={nside}")
    return _pix2ang_nested(nside, ipix)


def _pix2ang_nested(nside: int, ipix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`healpix_pix2ang_nested` without the index check, all on ``ipix``'s device (no host sync)."""
    order = nside.bit_length() - 1
    face = ipix >> (2 * order)
    in_face = ipix & (nside * nside - 1)
    ix = _compress_bits(in_face, order)
    iy = _compress_bits(in_face >> 1, order)
    # The base faces' ring (in units of Nside: 2, 3, 4 by rows of four) and longitude index (1, 3, 5, 7 in the
    # polar rows, 0, 2, 4, 6 on the equator), as arithmetic: a lookup table would be a host-to-device copy.
    face_row, face_column = face // 4, face % 4
    face_ring = face_row + 2
    face_lon = 2 * face_column + (face_row + 1) % 2
    ring = face_ring * nside - ix - iy - 1  # ring index 1 .. 4·nside-1 from the north pole

    north = ring < nside
    south = ring > 3 * nside
    n_in_ring = torch.where(north, ring, torch.where(south, 4 * nside - ring, torch.full_like(ring, nside)))
    nr = n_in_ring.to(torch.float64)
    z = torch.where(
        north,
        1 - nr * nr / (3.0 * nside * nside),
        torch.where(south, nr * nr / (3.0 * nside * nside) - 1, (2 * nside - ring).to(torch.float64) * 2 / (3.0 * nside)),
    )
    lon = face_lon * n_in_ring + ix - iy
    lon = torch.where(lon < 0, lon + 8 * n_in_ring, lon)
    phi = lon.to(torch.float64) * (math.pi / 4) / nr
    return torch.arccos(z.clamp(-1.0, 1.0)), phi


def hopf_to_quaternion(theta: torch.Tensor, phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """Hopf coordinates (S² point ``theta, phi``; fibre angle ``psi``) to a unit quaternion ``(w,x,y,z)``."""
    ct, st = torch.cos(theta / 2), torch.sin(theta / 2)
    return torch.stack(
        (ct * torch.cos(psi / 2), ct * torch.sin(psi / 2), st * torch.cos(phi + psi / 2), st * torch.sin(phi + psi / 2)),
        dim=-1,
    )


def _n_psi(level: int) -> int:
    return 6 * 2**level


def hopf_grid_size(level: int) -> int:
    """Number of rotations at ``level``: ``72·8**level``."""
    _check_level(level, "hopf_grid_size")
    return 72 * 8**level


def _quaternions_at(s2: torch.Tensor, s1: torch.Tensor, level: int) -> torch.Tensor:
    theta, phi = _pix2ang_nested(2**level, s2)
    psi = (s1.to(torch.float64) + 0.5) * (2 * math.pi / _n_psi(level))
    return hopf_to_quaternion(theta, phi, psi)


def hopf_grid_quaternions(
    level: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """The level-``level`` grid as quaternions, shape ``(72·8**level, 4)``, S²-major order."""
    _check_level(level, "hopf_grid_quaternions")
    n_psi = _n_psi(level)
    index = torch.arange(hopf_grid_size(level), dtype=torch.int64, device=device)
    q = _quaternions_at(index // n_psi, index % n_psi, level)
    return q.to(dtype=dtype)


def hopf_grid_rotations(
    level: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """The level-``level`` grid as rotation matrices, shape ``(72·8**level, 3, 3)``."""
    q = hopf_grid_quaternions(level, dtype=torch.float64, device=device)
    return quaternion_to_matrix(q).to(dtype=dtype)


def hopf_grid_rotations_at(
    indices: torch.Tensor, level: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Rotation matrices ``indices.shape + (3, 3)`` of the given level-``level`` grid points, without building the grid."""
    _check_level(level, "hopf_grid_rotations_at")
    indices = torch.as_tensor(indices, dtype=torch.int64)
    n_psi = _n_psi(level)
    q = _quaternions_at(indices // n_psi, indices % n_psi, level)
    return quaternion_to_matrix(q).to(dtype=dtype, device=device)


def hopf_children(indices: torch.Tensor, level: int) -> torch.Tensor:
    """Indices at ``level + 1`` of the 8 children of grid points ``indices`` at ``level``.

    Shape ``indices.shape + (8,)``, ordered by increasing quaternion distance to the parent.
    """
    _check_level(level, "hopf_children")
    indices = torch.as_tensor(indices, dtype=torch.int64)
    # A check of caller-given indices (reads them back once); the beam search uses _hopf_children.
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= hopf_grid_size(level)):
        raise ValueError(f"hopf_children: indices must lie in [0, {hopf_grid_size(level)}) at level {level}")
    return _hopf_children(indices, level)


def _hopf_children(indices: torch.Tensor, level: int) -> torch.Tensor:
    """:func:`hopf_children` of grid indices known to be valid (a search's own), without a host sync."""
    n_psi, n_psi_next = _n_psi(level), _n_psi(level + 1)
    s2, s1 = indices // n_psi, indices % n_psi
    offsets = torch.arange(4, dtype=torch.int64, device=indices.device)
    s2_next = (4 * s2[..., None] + offsets)[..., :, None].expand(*indices.shape, 4, 4)
    s1_next = ((2 * s1[..., None] + offsets - 1) % n_psi_next)[..., None, :].expand(*indices.shape, 4, 4)
    s2_next = s2_next.reshape(*indices.shape, 16)
    s1_next = s1_next.reshape(*indices.shape, 16)
    parent = _quaternions_at(s2, s1, level)
    candidates = _quaternions_at(s2_next, s1_next, level + 1)
    dist = torch.minimum(((candidates - parent[..., None, :]) ** 2).sum(-1), ((candidates + parent[..., None, :]) ** 2).sum(-1))
    # Children at equal distance (the grid's symmetry makes exact ties) differ in the last bits between devices:
    # rounded, ties break by candidate order everywhere, so the CPU and CUDA searches expand the same children.
    nearest = torch.argsort(torch.round(dist, decimals=9), dim=-1, stable=True)[..., :8]
    return torch.gather(s2_next * n_psi_next + s1_next, -1, nearest)


def nearest_hopf_neighbours(rotations: torch.Tensor, level: int, k: int = 1) -> torch.Tensor:
    """Indices ``(..., k)`` of the ``k`` grid rotations nearest to each rotation (geodesic order).

    Nearness is ``|<q, g>|`` of unit quaternions, a monotone function of the geodesic angle.
    """
    _check_level(level, "nearest_hopf_neighbours")
    n = hopf_grid_size(level)
    if not 1 <= k <= n:
        raise ValueError(f"nearest_hopf_neighbours: k must lie in [1, {n}] at level {level}, got {k}")
    q = matrix_to_quaternion(rotations)
    grid = hopf_grid_quaternions(level, dtype=q.dtype, device=q.device)
    similarity = (q @ grid.T).abs()
    return torch.topk(similarity, k, dim=-1).indices


def hopf_grid_resolution_deg(level: int) -> float:
    """Nominal angular spacing of the level-``level`` grid in degrees: the S¹ step ``60°/2**level``.

    It equals the HEALPix pixel size ``sqrt(4π/N_pix) ≈ 58.6°/2**level`` to within 3 %. Every
    rotation lies within this angle of some grid point (the covering radius is smaller).
    """
    _check_level(level, "hopf_grid_resolution_deg")
    return 360.0 / _n_psi(level)
