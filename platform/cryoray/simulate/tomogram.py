"""Simulated cryo-ET tomograms with exact ground truth: particle lists, label maps and the clean density.

Image model (one tomogram):

1. ``clean``: the sum of the species densities, each rotated to a uniform random pose and placed at
   a random voxel centre so that no two bounding spheres intersect and every particle's mask lies
   inside the volume (inside the slab when ``slab_thickness_px`` is given; only the faint density
   beyond a mask can be cut at the border). Wedge-free and noise-free: the ground truth for picking
   and for missing-wedge methods.
2. ``noiseless``: ``clean`` filtered in 3D Fourier space by the tilt-series mask
   (`cryoray.physics.wedge.tilt_series_mask`: beam along z, tilt axis y; discrete tilt planes, or
   a continuous wedge when ``tilt_step_deg`` is None) and, optionally, by the CTF.
3. ``tomogram``: ``noiseless`` plus Gaussian noise at ``snr_linear = var(noiseless) / var(noise)``
   (variances over the whole volume). The noise is filtered by the same tilt-series mask, as in a
   real reconstruction where noise, like signal, exists only on the measured planes; it is drawn
   white by `cryoray.physics.add_gaussian_noise` at ``snr_linear × measured fraction`` so that the
   variance left after the mask is the one asked for.

CTF: one isotropic 3D CTF, ``CTF(|k|)`` with `cryoray.physics.ctf`'s formula and sign (negative at
low frequency, so protein is dark as in raw tomograms). For a tilt series without astigmatism and
without defocus gradient across a tilted image, every tilt's CTF on its central plane is this same
radial function, so the 3D approximation equals the per-tilt CTF. Without a CTF the density keeps
its sign (protein bright); pickers normalise each patch, and the label maps do not depend on it.

Conventions: volumes are (z, y, x); particle positions are voxel indices (x_px, y_px, z_px) of
the particle's centre (whole numbers: the half-voxel quantisation is far below any picking
tolerance); orientations are RELION ZYZ (rot_deg, tilt_deg, psi_deg), the columns
`cryoray.io.star.write_coordinates` writes. The pose R = `euler_relion_to_matrix(rot, tilt, psi)`
maps particle coordinates into the tomogram: the placed density is ``V(Rᵀ (r − centre))``. The
density is rotated with trilinear interpolation, the mask with nearest-neighbour sampling.

Species: a density cube whose centre (voxel D//2) is the density's centre of mass, scaled to a peak of
1 (protein density is about constant at this resolution, so species differ in shape and size, not
in file units), and a boolean shape mask in the same box. Unless a mask is given, the mask is where
the density exceeds `MASK_THRESHOLD_FRACTION` of its peak. Two radii:

* ``radius_px``: the equivalent-volume radius of the mask, ``(3 V / 4π)^⅓``: the particle's size,
  used for sphere labels and for ``size_group`` (`SIZE_GROUP_UPPER_RADIUS_ANGSTROM`, in Å; for the
  SHREC'19 classes it groups by mass: tiny 1s3x 3qm1, small 3gl1 3h84, medium 1bxn 1qvr 1u6g 2cg9
  3cf3 3d2f, large 4b4t 4d8q, where a bounding radius would call elongated 1qvr and 3d2f large);
* ``bounding_radius_px``: the largest distance of a mask voxel centre from the centre plus half a
  voxel diagonal (√3/2), which bounds the mask under any rotation with nearest-neighbour sampling:
  placement keeps these spheres apart, so placed masks (and sphere labels) never overlap.

SHREC'19 masks (``deepfinder_shrec19/masks/*.mrc.gz``, 40³ at 10 Å, header voxel size unset) do not
line up with the polnet 10 Å templates: over all 48 axis permutations/flips and ±1 voxel shifts,
with the template thresholded to the mask's volume, the best Dice is 0.66–0.89 and the best frame
differs from species to species. Species built from those templates therefore derive their masks
from the density; a mask file is used only as given (`species_from_map(mask_path=...)`) or, for
4b4t and 4d8q which have no template, as the species itself (`species_from_mask`: the density is
the mask blurred by a Gaussian).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage
from scipy.spatial import ConvexHull, Delaunay, QhullError

from cryoray.errors import CryorayInputError
from cryoray.io.atomic import atomic_model_to_density
from cryoray.io.manifest import SizeGroup
from cryoray.io.mrc import read_mrc
from cryoray.io.validate import check_finite, check_positive
from cryoray.physics import (
    add_gaussian_noise,
    compute_ctf,
    euler_relion_to_matrix,
    matrix_to_euler_relion,
    random_rotations,
)
from cryoray.physics.wedge import tilt_series_mask

SIZE_GROUPS: tuple[SizeGroup, ...] = ("tiny", "small", "medium", "large")
# Upper bounds (Å, exclusive) of the equivalent-volume radius for tiny, small, medium; larger is "large".
SIZE_GROUP_UPPER_RADIUS_ANGSTROM = (32.0, 42.0, 70.0)
MASK_THRESHOLD_FRACTION = 0.2
# Density below this fraction of the peak, outside the mask, is cut to keep species boxes small.
SUPPORT_FRACTION = 0.01
MAX_CLASS_ID = 127  # label maps are stored as int8
PARTICLE_TABLE_COLUMNS = ("x_px", "y_px", "z_px", "class_id", "rot_deg", "tilt_deg", "psi_deg")
_HALF_VOXEL_DIAGONAL = math.sqrt(3.0) / 2.0


def size_group_for_radius(radius_angstrom: float) -> SizeGroup:
    """The SHREC-like size group of a particle from its equivalent-volume radius in Å."""
    for group, upper in zip(SIZE_GROUPS, SIZE_GROUP_UPPER_RADIUS_ANGSTROM):
        if radius_angstrom < upper:
            return group
    return SIZE_GROUPS[-1]


@functools.lru_cache(maxsize=32)
def _box_offsets(box_px: int) -> np.ndarray:
    """(box³, 3) offsets (x, y, z) of every voxel from the centre box//2, rows in array (z, y, x) order; cached."""
    axis = np.arange(box_px, dtype=np.float64) - box_px // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    offsets = np.stack((x.ravel(), y.ravel(), z.ravel()), axis=1)
    offsets.flags.writeable = False
    return offsets


@dataclass(frozen=True)
class Species:
    """One particle species: density and shape mask in a cubic box centred on voxel D//2 (see module doc)."""

    class_id: int
    name: str
    density: np.ndarray
    mask: np.ndarray
    voxel_size_angstrom: float
    source: str = ""
    radius_px: float = field(init=False)
    bounding_radius_px: float = field(init=False)
    size_group: SizeGroup = field(init=False)

    def __post_init__(self) -> None:
        where = f"species {self.name!r}"
        if (
            isinstance(self.class_id, bool)
            or not isinstance(self.class_id, (int, np.integer))
            or not 1 <= self.class_id <= MAX_CLASS_ID
        ):
            raise CryorayInputError(None, f"{where}: class_id", f"an integer in [1, {MAX_CLASS_ID}]", self.class_id)
        density = np.ascontiguousarray(self.density, dtype=np.float32)
        mask = np.ascontiguousarray(self.mask, dtype=bool)
        if density.ndim != 3 or len(set(density.shape)) != 1:
            raise CryorayInputError(None, f"{where}: density", "a cubic (D, D, D) array", f"shape {density.shape}")
        if mask.shape != density.shape:
            raise CryorayInputError(None, f"{where}: mask", f"the density's shape {density.shape}", f"shape {mask.shape}")
        check_finite(density, None, f"{where}: density")
        check_positive(self.voxel_size_angstrom, None, f"{where}: voxel_size_angstrom")
        if not mask.any():
            raise CryorayInputError(None, f"{where}: mask", "at least one voxel inside the particle", "an empty mask")
        box = density.shape[0]
        distance = np.linalg.norm(_box_offsets(box)[mask.ravel()], axis=1).max()
        if distance > box // 2 - 1:
            raise CryorayInputError(
                None,
                f"{where}: mask",
                f"a mask inside the sphere inscribed in the {box}³ box (so rotations keep it)",
                f"a voxel {distance:.1f} px from the centre",
            )
        radius = float((3.0 * mask.sum() / (4.0 * math.pi)) ** (1.0 / 3.0))
        object.__setattr__(self, "class_id", int(self.class_id))
        object.__setattr__(self, "density", density)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "voxel_size_angstrom", float(self.voxel_size_angstrom))
        object.__setattr__(self, "radius_px", radius)
        object.__setattr__(self, "bounding_radius_px", float(distance + _HALF_VOXEL_DIAGONAL))
        object.__setattr__(self, "size_group", size_group_for_radius(radius * float(self.voxel_size_angstrom)))

    @property
    def box_px(self) -> int:
        return int(self.density.shape[0])

    @property
    def mask_volume_px(self) -> int:
        """Number of voxels inside the (unrotated) mask."""
        return int(self.mask.sum())

    @functools.cached_property
    def hit_box(self) -> np.ndarray:
        """The (unrotated) convex hull of the mask: the particle's boundary for SHREC's hit-box rule, which contains
        the particle's centre even where the mask is hollow there (a ring, a barrel, a pore)."""
        return convex_hull_mask(self.mask)


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask``'s box inside the convex hull of its voxel centres (the mask itself if flat)."""
    points = np.argwhere(mask).astype(np.float64)
    try:
        hull = Delaunay(points[ConvexHull(points).vertices])
    except (QhullError, ValueError):  # fewer than 4 voxels, or all in one plane or line
        return mask.copy()
    grid = np.indices(mask.shape).reshape(3, -1).T
    return (hull.find_simplex(grid) >= 0).reshape(mask.shape) | mask


# ---------------------------------------------------------------------------------------------- builders


def species_from_density(
    class_id: int,
    name: str,
    density: np.ndarray,
    voxel_size_angstrom: float,
    mask: np.ndarray | None = None,
    threshold_fraction: float = MASK_THRESHOLD_FRACTION,
    source: str = "",
) -> Species:
    """A species from a density (and optionally a mask in the same box) at the tomogram's voxel size.

    The density is scaled to a peak of 1 and re-centred on its centre of mass (mask moved with it),
    then cropped to the smallest odd cube whose inscribed sphere holds the mask and every voxel
    above `SUPPORT_FRACTION` of the peak; the density outside that sphere is set to 0, so a rotation
    loses nothing. Without a mask, the mask is ``density > threshold_fraction`` (of the peak).
    """
    where = f"species {name!r}"
    volume = np.asarray(density, dtype=np.float64)
    if volume.ndim != 3:
        raise CryorayInputError(None, f"{where}: density", "a (z, y, x) volume", f"shape {volume.shape}")
    check_finite(volume, None, f"{where}: density")
    peak = volume.max()
    if not peak > 0:
        raise CryorayInputError(None, f"{where}: density", "positive density somewhere", f"max {peak}")
    if not 0 < threshold_fraction < 1:
        raise CryorayInputError(None, f"{where}: threshold_fraction", "a number in (0, 1)", threshold_fraction)
    volume = volume / peak
    if mask is None:
        mask = volume > threshold_fraction
    else:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != volume.shape:
            raise CryorayInputError(None, f"{where}: mask", f"the density's shape {volume.shape}", f"shape {mask.shape}")
        if not mask.any():
            raise CryorayInputError(None, f"{where}: mask", "at least one voxel inside the particle", "an empty mask")
    centre = np.round(ndimage.center_of_mass(np.clip(volume, 0, None))).astype(int)
    kept = np.argwhere((volume > SUPPORT_FRACTION) | mask)
    half = math.ceil(np.linalg.norm(kept - centre, axis=1).max()) + 2
    box = 2 * half + 1
    cropped_density = _crop_centred(volume, centre, box)
    cropped_mask = _crop_centred(mask, centre, box)
    outside = np.linalg.norm(_box_offsets(box), axis=1).reshape(box, box, box) > half
    cropped_density[outside] = 0.0
    return Species(class_id, name, cropped_density.astype(np.float32), cropped_mask, voxel_size_angstrom, source)


def _window(
    centre_zyx: Sequence[int] | np.ndarray, box_shape: Sequence[int], shape_zyx: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of a volume and of a box whose voxel n//2 sits on `centre_zyx`, clipped at the volume's borders."""
    volume_slices, box_slices = [], []
    for c, n, size in zip(centre_zyx, box_shape, shape_zyx):
        start = int(c) - n // 2
        lo, hi = max(start, 0), min(start + n, size)
        volume_slices.append(slice(lo, hi))
        box_slices.append(slice(lo - start, hi - start))
    return tuple(volume_slices), tuple(box_slices)


def _crop_centred(volume: np.ndarray, centre_zyx: np.ndarray, box: int) -> np.ndarray:
    """The box³ cube of `volume` centred on voxel `centre_zyx` (at index box//2), zero-padded outside."""
    out = np.zeros((box,) * 3, dtype=volume.dtype)
    volume_slices, box_slices = _window(centre_zyx, (box,) * 3, volume.shape)
    out[box_slices] = volume[volume_slices]
    return out


def _read_at_voxel_size(path: Path, target_voxel_angstrom: float, file_voxel_angstrom: float | None, order: int) -> np.ndarray:
    """A map or mask resampled (scipy.ndimage.zoom, `order`) from its voxel size to the target one."""
    mrc = read_mrc(path, voxel_size_angstrom=file_voxel_angstrom)
    if mrc.data.ndim != 3:
        raise CryorayInputError(path, "data", "a (z, y, x) volume", f"shape {mrc.data.shape}")
    factor = mrc.voxel_size_angstrom / target_voxel_angstrom
    if abs(factor - 1.0) < 1e-3:
        return mrc.data
    return ndimage.zoom(mrc.data, factor, order=order, grid_mode=True, mode="grid-constant")


def _paste_centred(small: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`small` placed in a zero array of `shape` with their centre voxels (n//2) on top of each other."""
    out = np.zeros(shape, dtype=small.dtype)
    volume_slices, box_slices = _window([n // 2 for n in shape], small.shape, shape)
    out[volume_slices] = small[box_slices]
    return out


def species_from_map(
    path: str | Path,
    class_id: int,
    voxel_size_angstrom: float,
    name: str | None = None,
    map_voxel_size_angstrom: float | None = None,
    mask_path: str | Path | None = None,
    mask_voxel_size_angstrom: float | None = None,
    threshold_fraction: float = MASK_THRESHOLD_FRACTION,
) -> Species:
    """A species from a density map (.mrc/.mrc.gz), resampled to `voxel_size_angstrom` when needed.

    `map_voxel_size_angstrom` / `mask_voxel_size_angstrom` override the headers (the SHREC'19 masks
    say 1 Å but are 10 Å). A mask file must be in the map's frame: the two are aligned on their
    box centres (voxel D//2) after resampling (nearest neighbour for the mask). Without one, the mask
    is the density above `threshold_fraction` of its peak.
    """
    path = Path(path)
    name = name or path.name.split(".")[0]
    density = _read_at_voxel_size(path, voxel_size_angstrom, map_voxel_size_angstrom, order=1)
    mask = None
    if mask_path is not None:
        mask_path = Path(mask_path)
        raw = _read_at_voxel_size(mask_path, voxel_size_angstrom, mask_voxel_size_angstrom, order=0)
        mask = _paste_centred(raw > 0.5, density.shape)
        if not mask.any():
            raise CryorayInputError(mask_path, "data", "a mask overlapping the map's box", "no voxel > 0.5 inside it")
    source = f"map {path}" + (f", mask {mask_path}" if mask_path is not None else "")
    return species_from_density(class_id, name, density, voxel_size_angstrom, mask, threshold_fraction, source)


def species_from_atomic_model(
    path: str | Path,
    class_id: int,
    voxel_size_angstrom: float,
    name: str | None = None,
    resolution_angstrom: float | None = None,
    threshold_fraction: float = MASK_THRESHOLD_FRACTION,
) -> Species:
    """A species from a PDB/mmCIF model rendered by `cryoray.io.atomic.atomic_model_to_density`."""
    path = Path(path)
    name = name or path.name.split(".")[0]
    density = atomic_model_to_density(path, voxel_size_angstrom, resolution_angstrom=resolution_angstrom)
    return species_from_density(class_id, name, density, voxel_size_angstrom, None, threshold_fraction, f"atomic model {path}")


def species_from_mask(
    path: str | Path,
    class_id: int,
    voxel_size_angstrom: float,
    name: str | None = None,
    mask_voxel_size_angstrom: float | None = None,
    blur_sigma_px: float = 1.0,
) -> Species:
    """A species known only by its shape mask: the density is the mask blurred by a Gaussian of `blur_sigma_px`.

    A uniform blob without internal structure: a stand-in for classes with no map or model
    (SHREC'19 4b4t and 4d8q); the mask is kept exactly as given.
    """
    path = Path(path)
    name = name or path.name.split(".")[0]
    sigma_px = check_positive(blur_sigma_px, path, "blur_sigma_px")
    mask = _read_at_voxel_size(path, voxel_size_angstrom, mask_voxel_size_angstrom, order=0) > 0.5
    if not mask.any():
        raise CryorayInputError(path, "data", "a mask with voxels > 0.5", "none")
    mask = np.pad(mask, math.ceil(4 * sigma_px) + 1)  # room for the blur
    density = ndimage.gaussian_filter(mask.astype(np.float64), sigma_px)
    return species_from_density(class_id, name, density, voxel_size_angstrom, mask, source=f"blurred mask {path}")


# Built-in shapes, in voxels (designed for 10 Å/voxel): Gaussian blobs (x, y, z, sigma, weight)
# sampled along segments, arcs and helices, each without symmetry so orientation matters.


def _along(points: np.ndarray, sigma: float, weight: float = 1.0) -> list[tuple[float, float, float, float, float]]:
    return [(float(x), float(y), float(z), sigma, weight) for x, y, z in points]


def _segment(start: Sequence[float], end: Sequence[float], spacing: float = 0.7) -> np.ndarray:
    first, last = np.asarray(start, dtype=float), np.asarray(end, dtype=float)
    n = max(int(np.ceil(np.linalg.norm(last - first) / spacing)), 1) + 1
    return first + np.linspace(0.0, 1.0, n)[:, None] * (last - first)


def _helix(radius: float, pitch: float, turns: float, spacing: float = 0.7) -> np.ndarray:
    length = turns * math.hypot(2 * math.pi * radius, pitch)
    t = np.linspace(0.0, turns * 2 * math.pi, max(int(length / spacing), 2))
    z = pitch * t / (2 * math.pi)
    return np.stack((radius * np.cos(t), radius * np.sin(t), z - z.mean()), axis=1)


def _ring(radius: float, z: float = 0.0, spacing: float = 0.7, start_deg: float = 0.0, end_deg: float = 360.0) -> np.ndarray:
    span = math.radians(end_deg - start_deg)
    t = math.radians(start_deg) + np.linspace(
        0.0, span, max(int(abs(span) * radius / spacing), 3), endpoint=end_deg - start_deg < 360
    )
    return np.stack((radius * np.cos(t), radius * np.sin(t), np.full_like(t, z)), axis=1)


def _builtin_blobs() -> dict[str, list[tuple[float, float, float, float, float]]]:
    return {
        # tiny: an unequal dimer with a side knob
        "tiny_dimer": [(-1.2, 0.0, 0.0, 1.3, 1.0), (1.5, 0.4, 0.0, 1.1, 0.9), (0.2, -0.3, 1.4, 0.9, 0.7)],
        # small: three arms of different lengths from a core, not coplanar
        "small_tripod": [(0.0, 0.0, 0.0, 1.6, 1.0)]
        + _along(_segment((1.6, 0.0, 0.2), (4.6, 0.0, 0.6)), 1.2, 0.3)
        + _along(_segment((-0.7, 1.4, -0.35), (-1.8, 3.6, -0.9)), 1.2, 0.3)
        + _along(_segment((-0.5, -0.9, 1.3), (-1.1, -2.0, 3.0)), 1.2, 0.3),
        # medium: a left-handed helix (chiral)
        "medium_helix": _along(_helix(radius=3.2, pitch=-6.5, turns=1.6), 1.5),
        # medium: an open ring (C shape) with a knob above one end
        "medium_ring": _along(_ring(5.5, start_deg=0.0, end_deg=290.0), 1.6) + [(4.4, -1.6, 2.8, 2.0, 4.0)],
        # large: six blobs of different sizes at non-coplanar positions (as the built-in phantom)
        "large_cluster": [
            (0.0, 0.0, 0.0, 3.2, 1.0),
            (6.5, 1.0, -0.6, 2.4, 0.9),
            (-1.8, 5.6, 1.0, 2.2, 0.85),
            (0.6, -1.4, 5.8, 2.0, 0.9),
            (-6.4, -2.0, -1.2, 1.8, 0.8),
            (3.2, 4.2, 3.0, 1.6, 0.8),
        ],
        # large: a barrel (stacked rings) capped on one end, with a side arm
        "large_barrel": _along(np.concatenate([_ring(6.0, z) for z in np.arange(-8.0, 8.1, 1.0)]), 1.5, 0.2)
        + _along(_ring(3.0, 9.0), 1.8, 0.5)
        + _along(_segment((6.0, 0.0, 3.0), (10.5, 2.5, 5.5)), 1.6, 0.6),
    }


BUILTIN_SPECIES = tuple(_builtin_blobs())


def builtin_species(
    names: Sequence[str] | None = None, voxel_size_angstrom: float = 10.0, first_class_id: int = 1
) -> list[Species]:
    """Built-in species needing no file, tiny to large (bounding radius ~3.5 to ~12 px), class ids in order.

    The shapes are defined in voxels; `voxel_size_angstrom` only labels them (and sets their size groups).
    """
    names = list(BUILTIN_SPECIES if names is None else names)
    unknown = [n for n in names if n not in BUILTIN_SPECIES]
    if unknown:
        raise CryorayInputError(None, "species", f"built-in names among {BUILTIN_SPECIES}", unknown)
    shapes = _builtin_blobs()
    species = []
    for offset, name in enumerate(names):
        blobs = np.array(shapes[name], dtype=np.float64)
        extent = np.linalg.norm(blobs[:, :3], axis=1).max() + 4 * blobs[:, 3].max()
        box = 2 * math.ceil(extent) + 1
        density = np.zeros((box,) * 3)
        for x, y, z, sigma, weight in blobs:  # separable Gaussian in a ±4σ window around each blob
            reach = math.ceil(4 * sigma)
            window = []
            for coordinate in (z, y, x):
                centre = round(coordinate) + box // 2
                axis = np.arange(centre - reach, centre + reach + 1)
                window.append((slice(axis[0], axis[-1] + 1), np.exp(-((axis - box // 2 - coordinate) ** 2) / (2 * sigma**2))))
            (sz, gz), (sy, gy), (sx, gx) = window
            density[sz, sy, sx] += weight * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]
        species.append(species_from_density(first_class_id + offset, name, density, voxel_size_angstrom, source="builtin"))
    return species


# ---------------------------------------------------------------------------------------------- poses


def _rotation_matrices(rot_deg: np.ndarray, tilt_deg: np.ndarray, psi_deg: np.ndarray) -> np.ndarray:
    angles = (torch.tensor(np.asarray(a, dtype=np.float64)) for a in (rot_deg, tilt_deg, psi_deg))
    return euler_relion_to_matrix(*angles).numpy()


def _rotate(volume: np.ndarray, rotation: np.ndarray, order: int) -> np.ndarray:
    """``out(r) = volume(Rᵀ r)`` about the box centre D//2 (zero outside the box)."""
    box = volume.shape[0]
    source = _box_offsets(box) @ rotation + box // 2  # row vector r @ R = (Rᵀ r)ᵀ, still (x, y, z)
    coordinates = source[:, ::-1].T  # (z, y, x) rows for map_coordinates
    data = volume.astype(np.float32) if volume.dtype == bool else volume
    out = ndimage.map_coordinates(data, coordinates, order=order, mode="constant", cval=0.0, prefilter=False)
    return out.reshape(volume.shape)


def rotate_species(species: Species, rot_deg: float, tilt_deg: float, psi_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """The species' density (trilinear) and mask (nearest neighbour) turned to the pose (rot, tilt, psi)."""
    rotation = _rotation_matrices(np.array([rot_deg]), np.array([tilt_deg]), np.array([psi_deg]))[0]
    return _rotate(species.density, rotation, order=1), _rotate(species.mask, rotation, order=0) > 0.5


# ---------------------------------------------------------------------------------------------- simulation


class TomogramCtf(BaseModel):
    """CTF of the tilt series (see the module doc: one isotropic 3D CTF, cryoray's sign convention)."""

    model_config = ConfigDict(extra="forbid")
    defocus_angstrom: float = Field(30000.0, gt=0, description="underfocus, Å")
    voltage_kv: float = Field(300.0, gt=0)
    cs_mm: float = Field(2.7, ge=0)
    amplitude_contrast: float = Field(0.07, ge=0, lt=1)
    bfactor_angstrom2: float = Field(0.0, ge=0)


def isotropic_ctf(shape_zyx: Sequence[int], voxel_size_angstrom: float, ctf: TomogramCtf) -> torch.Tensor:
    """``CTF(|k|)`` on the centred 3D grid of a (Z, Y, X) volume, float64 (`cryoray.physics.ctf.compute_ctf`)."""
    axes = [(torch.arange(n, dtype=torch.float64) - n // 2) / (n * voxel_size_angstrom) for n in shape_zyx]
    kz, ky, kx = torch.meshgrid(*axes, indexing="ij")
    return compute_ctf(
        torch.sqrt(kx**2 + ky**2 + kz**2),
        defocus_u_angstrom=ctf.defocus_angstrom,
        voltage_kv=ctf.voltage_kv,
        cs_mm=ctf.cs_mm,
        amplitude_contrast=ctf.amplitude_contrast,
        bfactor_angstrom2=ctf.bfactor_angstrom2,
    )


def _fourier_filter(volume: torch.Tensor, transfer_centred: torch.Tensor) -> torch.Tensor:
    """``Re F⁻¹(T · F volume)`` for a transfer function T on the centred grid with T(k) = T(−k).

    Real FFTs on the uncentred grid: filtering commutes with the centring shifts, and a symmetric
    T keeps the result real; several times faster than `apply_fourier_mask`'s complex centred FFTs.
    """
    half = torch.fft.ifftshift(transfer_centred)[..., : volume.shape[-1] // 2 + 1]
    return torch.fft.irfftn(torch.fft.rfftn(volume) * half, s=volume.shape)


@dataclass(frozen=True)
class SimulatedTomogram:
    """A simulated tomogram (z, y, x) float32 with its ground truth (see the module doc for the model)."""

    tomogram: np.ndarray
    clean: np.ndarray
    noiseless: np.ndarray
    particles: pd.DataFrame
    voxel_size_angstrom: float
    noise_std: float
    measured_fraction: float


def _check_species(species: Sequence[Species]) -> dict[int, Species]:
    if not species:
        raise CryorayInputError(None, "species", "at least one species", "none")
    by_class = {s.class_id: s for s in species}
    if len(by_class) != len(species):
        raise CryorayInputError(None, "species", "distinct class ids", [s.class_id for s in species])
    voxels = {s.voxel_size_angstrom for s in species}
    if len(voxels) != 1:
        raise CryorayInputError(None, "species", "one voxel size for every species", sorted(voxels))
    return by_class


def _check_shape(shape_zyx: Sequence[int]) -> tuple[int, int, int]:
    if len(shape_zyx) != 3 or any(isinstance(n, bool) or int(n) != n or n < 8 for n in shape_zyx):
        raise CryorayInputError(None, "shape_zyx", "three integers >= 8 (z, y, x)", list(shape_zyx))
    z, y, x = (int(n) for n in shape_zyx)
    return z, y, x


def _counts_per_class(counts: int | Sequence[int] | Mapping[int, int], species: Sequence[Species]) -> dict[int, int]:
    if isinstance(counts, Mapping):
        unknown = sorted(set(counts) - {s.class_id for s in species})
        if unknown:
            raise CryorayInputError(None, "counts", "class ids of the given species", unknown)
        per_class = {s.class_id: counts.get(s.class_id, 0) for s in species}
    elif isinstance(counts, bool):
        raise CryorayInputError(None, "counts", "whole numbers >= 0", counts)
    elif isinstance(counts, (int, np.integer)):
        per_class = {s.class_id: int(counts) for s in species}
    else:
        counts = list(counts)
        if len(counts) != len(species):
            raise CryorayInputError(None, "counts", f"one count per species ({len(species)})", counts)
        per_class = {s.class_id: c for s, c in zip(species, counts)}
    if any(isinstance(c, bool) or int(c) != c or c < 0 for c in per_class.values()):
        raise CryorayInputError(None, "counts", "whole numbers >= 0", list(per_class.values()))
    return {k: int(v) for k, v in per_class.items()}


def _place(
    radii_px: np.ndarray, shape_zyx: tuple[int, int, int], z_limits: tuple[int, int], rng: np.random.Generator, max_attempts: int
) -> np.ndarray:
    """Random sequential addition of non-intersecting spheres, in the given order: (n, 3) voxel centres (z, y, x)."""
    centres = np.zeros((len(radii_px), 3), dtype=np.int64)
    batch = 64
    for i, radius in enumerate(radii_px):
        margin = math.ceil(radius)
        low = np.array([z_limits[0] + margin, margin, margin])
        high = np.array([z_limits[1] - margin, shape_zyx[1] - 1 - margin, shape_zyx[2] - 1 - margin])
        if (low > high).any():
            raise CryorayInputError(
                None, "shape_zyx", f"room for a particle of radius {radius:.1f} px (slab z in {list(z_limits)})", list(shape_zyx)
            )
        placed = False
        for _ in range(0, max_attempts, batch):
            candidates = rng.integers(low, high + 1, size=(batch, 3))
            distance = np.linalg.norm(candidates[:, None, :] - centres[None, :i, :], axis=2)
            free = (distance > radii_px[None, :i] + radius).all(axis=1)
            if free.any():
                centres[i], placed = candidates[int(np.argmax(free))], True
                break
        if not placed:
            raise CryorayInputError(
                None,
                "counts",
                f"particles that fit without overlapping in {list(shape_zyx)} (fewer or a larger volume)",
                f"no room for particle {i + 1} of {len(radii_px)} after {max_attempts} tries",
            )
    return centres


def simulate_tomogram(
    species: Sequence[Species],
    shape_zyx: Sequence[int],
    counts: int | Sequence[int] | Mapping[int, int],
    *,
    seed: int | Sequence[int] = 0,
    tilt_range_deg: tuple[float, float] = (-60.0, 60.0),
    tilt_step_deg: float | None = 2.0,
    snr_linear: float | None = 1.0,
    ctf: TomogramCtf | None = None,
    slab_thickness_px: int | None = None,
    max_attempts_per_particle: int = 4096,
) -> SimulatedTomogram:
    """Simulate one tomogram with `counts` particles per species (an int, one per species, or {class_id: n}).

    Seeded and reproducible: `seed` may be a sequence such as (dataset seed, tomogram index).
    `snr_linear=None` leaves the tomogram noiseless. Large species are placed first (random
    sequential addition); a volume too crowded to place everyone raises `CryorayInputError`.
    """
    by_class = _check_species(species)
    shape = _check_shape(shape_zyx)
    per_class = _counts_per_class(counts, species)
    low_deg, high_deg = (float(t) for t in tilt_range_deg)
    if not -90.0 <= low_deg < high_deg <= 90.0:
        raise CryorayInputError(None, "tilt_range_deg", "-90 <= min < max <= 90", list(tilt_range_deg))
    if tilt_step_deg is not None:
        check_positive(tilt_step_deg, None, "tilt_step_deg")
    if snr_linear is not None:
        check_positive(snr_linear, None, "snr_linear")
    if slab_thickness_px is None:
        z_limits = (0, shape[0] - 1)
    else:
        if (
            isinstance(slab_thickness_px, bool)
            or int(slab_thickness_px) != slab_thickness_px
            or not 1 <= slab_thickness_px <= shape[0]
        ):
            raise CryorayInputError(
                None, "slab_thickness_px", f"a whole number in [1, {shape[0]}] (the z size)", slab_thickness_px
            )
        start = (shape[0] - int(slab_thickness_px)) // 2
        z_limits = (start, start + int(slab_thickness_px) - 1)
    voxel = next(iter(by_class.values())).voxel_size_angstrom

    sequence = np.random.SeedSequence(seed)
    rng = np.random.default_rng(sequence.spawn(1)[0])
    generator = torch.Generator().manual_seed(int(sequence.generate_state(1)[0]))
    class_ids = np.array([k for k, n in per_class.items() for _ in range(n)], dtype=np.int64)
    radii = np.array([by_class[k].bounding_radius_px for k in class_ids])
    order = np.argsort(-radii, kind="stable")
    class_ids, radii = class_ids[order], radii[order]
    centres = _place(radii, shape, z_limits, rng, int(max_attempts_per_particle))
    rot, tilt, psi = (a.numpy() for a in matrix_to_euler_relion(random_rotations(len(class_ids), generator, torch.float64)))
    particles = pd.DataFrame(
        {
            "x_px": centres[:, 2].astype(np.float64),
            "y_px": centres[:, 1].astype(np.float64),
            "z_px": centres[:, 0].astype(np.float64),
            "class_id": class_ids,
            "rot_deg": rot,
            "tilt_deg": tilt,
            "psi_deg": psi,
        }
    )

    clean = np.zeros(shape, dtype=np.float32)
    rotations = _rotation_matrices(rot, tilt, psi)  # from the stored angles: the table is the truth
    for k, centre, rotation in zip(class_ids, centres, rotations):
        kind = by_class[int(k)]
        placed = _rotate(kind.density, rotation, order=1)
        volume_slices, box_slices = _window(centre, kind.density.shape, shape)
        clean[volume_slices] += placed[box_slices]

    mask = tilt_series_mask(shape, low_deg, high_deg, tilt_step_deg, dtype=torch.float64)
    transfer = mask if ctf is None else mask * isotropic_ctf(shape, voxel, ctf)
    noiseless = _fourier_filter(torch.from_numpy(clean).double(), transfer)
    measured_fraction = float(mask.mean())
    if snr_linear is None:
        noisy, noise_std = noiseless, 0.0
    else:
        white, _ = add_gaussian_noise(noiseless, snr_linear=snr_linear * measured_fraction, generator=generator, sample_ndim=3)
        noisy = _fourier_filter(white, mask)
        noise_std = float((noisy - noiseless).std())
    return SimulatedTomogram(
        tomogram=noisy.numpy().astype(np.float32),
        clean=clean,
        noiseless=noiseless.numpy().astype(np.float32),
        particles=particles,
        voxel_size_angstrom=voxel,
        noise_std=noise_std,
        measured_fraction=measured_fraction,
    )


# ---------------------------------------------------------------------------------------------- labels


def _particle_species(particles: pd.DataFrame, species: Sequence[Species]) -> list[Species]:
    missing = [c for c in ("x_px", "y_px", "z_px", "class_id") if c not in particles]
    if missing:
        raise CryorayInputError(None, "particles", "columns x_px, y_px, z_px, class_id", f"missing {missing}")
    by_class = _check_species(species)
    unknown = sorted(set(particles["class_id"].astype(int)) - set(by_class))
    if unknown:
        raise CryorayInputError(None, "particles.class_id", f"class ids of the species {sorted(by_class)}", unknown)
    return [by_class[int(k)] for k in particles["class_id"]]


def _centres_zyx(particles: pd.DataFrame) -> np.ndarray:
    return np.rint(particles[["z_px", "y_px", "x_px"]].to_numpy(dtype=np.float64)).astype(np.int64)


def sphere_label_map(particles: pd.DataFrame, species: Sequence[Species], shape_zyx: Sequence[int]) -> np.ndarray:
    """uint8 (z, y, x): a ball of the species' `radius_px` around each particle, filled with its class id.

    Positions may be fractional (noisy annotations): a voxel is inside when its centre lies within
    the radius. Later rows overwrite earlier ones where balls overlap.
    """
    shape = _check_shape(shape_zyx)
    labels = np.zeros(shape, dtype=np.uint8)
    positions = particles[["z_px", "y_px", "x_px"]].to_numpy(dtype=np.float64)
    for kind, position in zip(_particle_species(particles, species), positions):
        radius = kind.radius_px
        low = np.maximum(np.floor(position - radius).astype(int), 0)
        high = np.minimum(np.ceil(position + radius).astype(int) + 1, shape)
        if (low >= high).any():
            continue
        z, y, x = (np.arange(lo, hi, dtype=np.float64) - p for lo, hi, p in zip(low, high, position))
        ball = z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2 <= radius**2
        labels[low[0] : high[0], low[1] : high[1], low[2] : high[2]][ball] = kind.class_id
    return labels


def _paint_masks(
    particles: pd.DataFrame,
    species: Sequence[Species],
    shape_zyx: Sequence[int],
    values: np.ndarray,
    dtype: type,
    hit_boxes: bool = False,
) -> np.ndarray:
    shape = _check_shape(shape_zyx)
    out: np.ndarray = np.zeros(shape, dtype=dtype)
    kinds = _particle_species(particles, species)
    missing = [c for c in ("rot_deg", "tilt_deg", "psi_deg") if c not in particles]
    if missing:
        raise CryorayInputError(None, "particles", "orientations rot_deg, tilt_deg, psi_deg", f"missing {missing}")
    rotations = _rotation_matrices(*(particles[c].to_numpy() for c in ("rot_deg", "tilt_deg", "psi_deg")))
    for kind, centre, rotation, value in zip(kinds, _centres_zyx(particles), rotations, values):
        placed = _rotate(kind.hit_box if hit_boxes else kind.mask, rotation, order=0) > 0.5
        volume_slices, box_slices = _window(centre, kind.density.shape, shape)
        out[volume_slices][placed[box_slices]] = value
    return out


def shape_label_map(particles: pd.DataFrame, species: Sequence[Species], shape_zyx: Sequence[int]) -> np.ndarray:
    """uint8 (z, y, x): each particle's mask, rotated to its pose and placed at its (rounded) position, = class id.

    Later rows overwrite earlier ones where masks overlap (never for a simulated truth list).
    """
    return _paint_masks(particles, species, shape_zyx, particles["class_id"].to_numpy(), np.uint8)


def instance_map(particles: pd.DataFrame, species: Sequence[Species], shape_zyx: Sequence[int]) -> np.ndarray:
    """int32 (z, y, x): j + 1 inside the placed hit box of row j (its mask's convex hull), 0 elsewhere: SHREC's
    hit-box scoring, "the pick within the particle's boundary". With the mask itself, a pick at the exact centre
    of a hollow particle (a ring, a barrel) would miss it.

    Later rows win where hit boxes overlap (never for a simulated truth list: they lie within the bounding spheres,
    which placement keeps apart).
    """
    return _paint_masks(particles, species, shape_zyx, np.arange(1, len(particles) + 1), np.int32, hit_boxes=True)


def annotation_noise(
    particles: pd.DataFrame,
    missing_fraction: float,
    jitter_px: float,
    rng: np.random.Generator | int | Sequence[int],
) -> pd.DataFrame:
    """A noisy annotation list: round(missing_fraction · n) rows dropped at random, positions jittered.

    Jitter is Gaussian with standard deviation `jitter_px` on each axis independently. The kept rows
    keep their order and other columns; the index is reset.
    """
    if not 0.0 <= missing_fraction <= 1.0:
        raise CryorayInputError(None, "missing_fraction", "a number in [0, 1]", missing_fraction)
    if not (math.isfinite(jitter_px) and jitter_px >= 0):
        raise CryorayInputError(None, "jitter_px", "a finite number >= 0", jitter_px)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    n = len(particles)
    dropped = rng.choice(n, size=round(missing_fraction * n), replace=False)
    keep = np.setdiff1d(np.arange(n), dropped)
    noisy = particles.iloc[keep].reset_index(drop=True).copy()
    for column in ("x_px", "y_px", "z_px"):
        noisy[column] = noisy[column].to_numpy(dtype=np.float64) + rng.normal(0.0, jitter_px, len(noisy))
    return noisy


__all__ = [
    "BUILTIN_SPECIES",
    "PARTICLE_TABLE_COLUMNS",
    "SIZE_GROUPS",
    "SimulatedTomogram",
    "Species",
    "TomogramCtf",
    "annotation_noise",
    "builtin_species",
    "instance_map",
    "isotropic_ctf",
    "rotate_species",
    "shape_label_map",
    "simulate_tomogram",
    "size_group_for_radius",
    "species_from_atomic_model",
    "species_from_density",
    "species_from_map",
    "species_from_mask",
    "sphere_label_map",
]
