"""Subtomograms for missing-wedge methods (CryoGEN-II, IsoNet-style), streamed to training.

Extraction follows the CryoGEN-II supplement (§7) and IsoNet v1 (``make_mask``, ``extract``):

- a combined density and standard-deviation mask keeps the regions with biological signal: a voxel is kept
  when the locally averaged density (protein bright, after the contrast sign) is in the top
  ``density_percentage`` % after a maximum filter, and its local standard deviation (``mask_patch_px``-wide
  window) in the top ``std_percentage`` %; IsoNet's defaults are a 4-voxel patch and 50 %/50 %;
- cube centres are drawn uniformly among the mask voxels where the whole cube fits in the tomogram, once and
  seeded (the paper extracts a fixed set, 490 ribosome cubes of 80³); every epoch streams the same set;
- each cube is contrast-inverted when asked (real tomograms show protein dark; simulations without a CTF do
  not) and normalised so that its 5th–95th percentiles map to 0 and 1 (90 % of voxels in [0, 1]).

The ground-truth crop (``clean``, wedge-free and noise-free) is cut at the same place when asked, for
evaluation only; it is left in its own units (metrics fit scale and offset, or are scale-free).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from cryoray.data.patches import _mmap, cut_patch
from cryoray.data.streams import GeneratedRows
from cryoray.errors import CryorayInputError
from cryoray.io.mrc import read_mrc

if TYPE_CHECKING:
    from cryoray.io.manifest import TomogramEntry

DATA_PERCENTILES = (5.0, 95.0)


def percentile_normalise(volume: np.ndarray, low_percent: float = 5.0, high_percent: float = 95.0) -> np.ndarray:
    """``(v − p_low) / (p_high − p_low)`` as float32: with 5/95, 90 % of the voxels fall in [0, 1]."""
    low, high = np.percentile(volume, [low_percent, high_percent])
    scale = high - low if high > low else 1.0
    return ((np.asarray(volume, dtype=np.float32) - low) / scale).astype(np.float32)


def prepare_subtomogram(volume: np.ndarray, invert_contrast: bool) -> np.ndarray:
    """Contrast inversion (optional), then the 5th–95th percentile normalisation of the paper."""
    volume = np.asarray(volume, dtype=np.float32)
    return percentile_normalise(-volume if invert_contrast else volume, *DATA_PERCENTILES)


def density_std_mask(
    tomogram: np.ndarray,
    invert_contrast: bool,
    patch_px: int = 4,
    density_percentage: float = 50.0,
    std_percentage: float = 50.0,
) -> np.ndarray:
    """IsoNet-style signal mask (bool, same shape): high local density AND high local standard deviation."""
    if not (0 < density_percentage <= 100 and 0 < std_percentage <= 100):
        raise ValueError(f"density_std_mask: percentages must lie in (0, 100], got {density_percentage}, {std_percentage}")
    signal = -np.asarray(tomogram, dtype=np.float32) if invert_contrast else np.asarray(tomogram, dtype=np.float32)
    local_mean = ndimage.uniform_filter(signal, size=patch_px)
    density = ndimage.maximum_filter(local_mean, size=patch_px)
    local_var = ndimage.uniform_filter(signal * signal, size=patch_px) - local_mean**2
    local_std = np.sqrt(np.clip(local_var, 0, None))
    keep_density = density >= np.percentile(density, 100 - density_percentage)
    keep_std = local_std >= np.percentile(local_std, 100 - std_percentage)
    return keep_density & keep_std


def sample_cube_centres(
    mask: np.ndarray, n: int, cube_px: int, rng: np.random.Generator, path: str | Path | None = None
) -> np.ndarray:
    """``n`` centres (z, y, x) drawn uniformly among mask voxels whose ``cube_px`` cube lies inside the volume.

    The cube of centre ``c`` spans ``c − cube_px//2 … c − cube_px//2 + cube_px − 1`` (as ``cut_patch``). Along an
    axis shorter than the cube only the middle is allowed (the cube is reflect-padded there).
    """
    half = cube_px // 2
    inside = np.zeros(mask.shape, dtype=bool)
    window = []
    for size in mask.shape:
        first = half if size >= cube_px else size // 2
        last = size - cube_px + half if size >= cube_px else size // 2
        window.append(slice(first, last + 1))
    inside[tuple(window)] = True
    candidates = np.argwhere(mask & inside)
    if len(candidates) == 0:
        raise CryorayInputError(
            path, "mask", f"signal-mask voxels where a {cube_px}³ cube fits (lower the mask percentages or the cube size)", "none"
        )
    return candidates[rng.integers(0, len(candidates), size=n)].astype(np.int64)


@dataclass(frozen=True)
class SubtomogramSource:
    """Where a fixed set of subtomograms comes from: files and cube centres (z, y, x voxels)."""

    tomograms: tuple[str, ...]
    cleans: tuple[str | None, ...]
    centres_zyx: np.ndarray  # (N, 3) int
    tomogram_index: np.ndarray  # (N,) int
    cube_px: int
    invert_contrast: bool

    def __len__(self) -> int:
        return len(self.tomogram_index)


def subtomogram_source(
    dataset_dir: Path,
    entries: list[TomogramEntry],
    n_subtomograms: int,
    cube_px: int,
    invert_contrast: bool,
    seed: int,
    mask_patch_px: int = 4,
    density_percentage: float = 50.0,
    std_percentage: float = 50.0,
) -> SubtomogramSource:
    """Draw ``n_subtomograms`` cube centres over the tomograms (about equally many from each), seeded."""
    if n_subtomograms < 1:
        raise ValueError(f"subtomogram_source: n_subtomograms must be >= 1, got {n_subtomograms}")
    rng = np.random.default_rng(seed)
    counts = np.bincount(rng.permutation(np.arange(n_subtomograms) % len(entries)), minlength=len(entries))
    tomograms, cleans, centres, index = [], [], [], []
    for i, (entry, count) in enumerate(zip(entries, counts)):
        path = (dataset_dir / entry.tomogram).resolve()
        tomograms.append(str(path))
        cleans.append(str((dataset_dir / entry.clean).resolve()) if entry.clean else None)
        if count == 0:
            continue
        mask = density_std_mask(read_mrc(path).data, invert_contrast, mask_patch_px, density_percentage, std_percentage)
        centres.append(sample_cube_centres(mask, int(count), cube_px, rng, path))
        index.append(np.full(int(count), i))
    return SubtomogramSource(
        tuple(tomograms), tuple(cleans), np.concatenate(centres), np.concatenate(index), cube_px, invert_contrast
    )


def extract_subtomograms(ids: np.ndarray, source: SubtomogramSource, with_clean: bool = False) -> dict[str, np.ndarray]:
    """The subtomograms ``ids`` (indices into ``source``), with their ground-truth crops when asked."""
    n, cube = len(ids), source.cube_px
    subtomograms = np.empty((n, cube, cube, cube), dtype=np.float32)
    cleans = np.empty((n, cube, cube, cube), dtype=np.float32) if with_clean else None
    for row, i in enumerate(ids):
        tomo = int(source.tomogram_index[i])
        centre = source.centres_zyx[i]
        subtomograms[row] = prepare_subtomogram(cut_patch(_mmap(source.tomograms[tomo]), centre, cube), source.invert_contrast)
        if cleans is not None:
            clean = source.cleans[tomo]
            if clean is None:
                raise CryorayInputError(source.tomograms[tomo], "clean", "a ground-truth volume for evaluation", "none")
            cleans[row] = cut_patch(_mmap(clean), centre, cube)
    out = {"subtomogram": subtomograms}
    if cleans is not None:
        out["clean"] = cleans
    return out


def _subtomogram_rows(ids: np.ndarray, rng: np.random.Generator, source: SubtomogramSource) -> dict[str, np.ndarray]:
    """A :class:`~cryoray.data.streams.GeneratedRows` block of the fixed set (nothing is drawn: ``rng`` is unused)."""
    return extract_subtomograms(ids, source)


def subtomogram_stream(source: SubtomogramSource, rows_per_block: int = 16) -> GeneratedRows:
    """A stream of the source's subtomograms, re-read from the memory-mapped files each epoch."""
    return GeneratedRows(n_rows=len(source), make=_subtomogram_rows, kwargs={"source": source}, rows_per_block=rows_per_block)
