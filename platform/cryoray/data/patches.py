"""Streams of subtomogram patches with their label patches, cut from memory-mapped tomograms.

A stream (:func:`patch_stream`, a ``GeneratedRows`` spec) makes its rows block by block with :func:`draw_patches`:
each row draws a particle, centres a cubic patch on it plus a random integer shift, cuts the tomogram and the
label map (memory-mapped, so only the patch is read), applies a random wedge-preserving rotation and normalises
the patch. The stream is re-executed every epoch, so every epoch sees fresh patches; a block's draws are seeded
by the run seed, the epoch, the replica, the sampling mode and the block's first row id
(``cryoray.data.streams.block_rng``), so a run with the same seed cuts the same patches whichever task runs a block.

Sampling: ``"particles"`` draws uniformly over the annotated particles (DeepFinder's scheme, paper:
"random shift"); ``"class_balanced"`` first picks a class uniformly, then a particle of it (the paper's
resampling of the validation/meta stream, so rare species weigh as much as abundant ones).

Rotation augmentation uses only the four proper rotations that map an axis-aligned missing wedge onto
itself (identity and the 180° turns about x, y, z): any other rotation would teach the net a wedge
orientation that never occurs in a tomogram, and a mirror would flip the hand of chiral particles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import mrcfile
import numpy as np
import pandas as pd
import torch

from cryoray.data.streams import GeneratedRows
from cryoray.errors import CryorayInputError
from cryoray.io.manifest import DatasetManifest
from cryoray.io.star import read_coordinates
from cryoray.physics.normalize import standardize

if TYPE_CHECKING:
    from cryoray.io.manifest import TomogramEntry

Sampling = Literal["particles", "class_balanced"]
# Axis pairs flipped by the 180° rotations about z, y and x of a (z, y, x) array; () is the identity.
WEDGE_PRESERVING_FLIPS: tuple[tuple[int, ...], ...] = ((), (1, 2), (0, 2), (0, 1))
_MMAPS: dict[str, np.ndarray] = {}
# A block of patches is tens of milliseconds of work: a whole-CPU reservation per task queued the train and
# meta streams behind each other and behind the Train workers' reservations (data wait 47 % of a 2-core RobPicker
# epoch at 1 CPU, measured in benchmarks/RESULTS.md), so the tasks reserve a quarter.
PATCH_TASK_CPUS = 0.25


@dataclass(frozen=True)
class PatchSource:
    """Where patches come from: tomogram/label files and the particle centres (z, y, x voxels) to draw from."""

    tomograms: tuple[str, ...]
    label_maps: tuple[str, ...]
    centres_zyx: np.ndarray  # (N, 3) float
    tomogram_index: np.ndarray  # (N,) int
    class_id: np.ndarray  # (N,) int


def split_entries(manifest: DatasetManifest, split: str) -> list[TomogramEntry]:
    """The manifest's tomograms of one split (``train``/``val``/``test``), refusing an empty split."""
    entries = [t for t in manifest.tomograms if t.split == split]
    if not entries:
        raise CryorayInputError(None, f"{manifest.name}: tomograms[split={split}]", "at least one tomogram", "none")
    return entries


def patch_source(dataset_dir: Path, entries: list[TomogramEntry], labels: str, particles: str) -> PatchSource:
    """Collect files and centres; ``particles`` is ``"annotations"`` (what a user labelled) or ``"particles"`` (truth)."""
    tomograms, label_maps, centres, index, classes = [], [], [], [], []
    for i, entry in enumerate(entries):
        if labels not in entry.labels:
            raise CryorayInputError(
                dataset_dir, f"tomograms[{entry.name}].labels", f"a {labels!r} label map", sorted(entry.labels)
            )
        tomograms.append(str((dataset_dir / entry.tomogram).resolve()))
        label_maps.append(str((dataset_dir / entry.labels[labels]).resolve()))
        table: pd.DataFrame = read_coordinates(dataset_dir / getattr(entry, particles))
        centres.append(table[["z_px", "y_px", "x_px"]].to_numpy(np.float64))
        index.append(np.full(len(table), i))
        classes.append(table["class_id"].to_numpy(np.int64))
    source = PatchSource(
        tuple(tomograms), tuple(label_maps), np.concatenate(centres), np.concatenate(index), np.concatenate(classes)
    )
    if len(source.class_id) == 0:
        raise CryorayInputError(dataset_dir, particles, "at least one particle to centre patches on", "an empty list")
    return source


def _mmap(path: str) -> np.ndarray:
    """A cached read-only memory map per worker process (tasks reuse processes, so files open once)."""
    if path not in _MMAPS:
        _MMAPS[path] = mrcfile.mmap(path, mode="r", permissive=True).data
    return _MMAPS[path]


def cut_patch(volume: np.ndarray, centre_zyx: np.ndarray, patch_px: int) -> np.ndarray:
    """The patch of ``volume`` whose corner is ``centre − patch//2``, clamped inside; edges reflect-padded if too small."""
    corner = np.rint(centre_zyx).astype(np.int64) - patch_px // 2
    slices, pads = [], []
    for start, size in zip(corner, volume.shape):
        if size >= patch_px:
            start = int(np.clip(start, 0, size - patch_px))
            slices.append(slice(start, start + patch_px))
            pads.append((0, 0))
        else:
            slices.append(slice(0, size))
            pads.append((0, patch_px - size))
    patch = np.asarray(volume[tuple(slices)])
    if any(p != (0, 0) for p in pads):
        patch = np.pad(patch, pads, mode="reflect" if min(volume.shape) > 1 else "edge")
    return patch


def normalise_patch(patch: np.ndarray) -> np.ndarray:
    """Zero mean, unit std per patch (DeepFinder), so patches from tomograms of any contrast look alike."""
    return standardize(torch.from_numpy(patch.astype(np.float32)), ndim=patch.ndim).numpy()


def draw_patches(
    source: PatchSource,
    rng: np.random.Generator,
    n: int,
    patch_px: int,
    max_shift_px: int,
    sampling: Sampling,
    augment: bool,
) -> dict[str, np.ndarray]:
    """``n`` random (patch, labels) pairs drawn with ``rng`` (the sampling of every stream, Ray-free)."""
    if sampling == "class_balanced":
        classes = np.unique(source.class_id)
        chosen = rng.choice(classes, size=n)
        picks = np.array([rng.choice(np.flatnonzero(source.class_id == c)) for c in chosen])
    else:
        picks = rng.integers(0, len(source.class_id), size=n)
    shifts = rng.integers(-max_shift_px, max_shift_px + 1, size=(n, 3))
    flips = rng.integers(0, len(WEDGE_PRESERVING_FLIPS), size=n) if augment else np.zeros(n, dtype=np.int64)
    patches = np.empty((n, patch_px, patch_px, patch_px), dtype=np.float32)
    labels = np.empty((n, patch_px, patch_px, patch_px), dtype=np.uint8)
    for row, (pick, shift, flip) in enumerate(zip(picks, shifts, flips)):
        tomo = source.tomogram_index[pick]
        centre = source.centres_zyx[pick] + shift
        patch = cut_patch(_mmap(source.tomograms[tomo]), centre, patch_px)
        label = cut_patch(_mmap(source.label_maps[tomo]), centre, patch_px)
        axes = WEDGE_PRESERVING_FLIPS[flip]
        if axes:
            patch, label = np.flip(patch, axes), np.flip(label, axes)
        patches[row] = normalise_patch(patch)
        labels[row] = label
    return {"patch": patches, "labels": labels}


def patch_rows(
    ids: np.ndarray,
    rng: np.random.Generator,
    source: PatchSource,
    patch_px: int,
    max_shift_px: int,
    sampling: Sampling,
    augment: bool,
) -> dict[str, np.ndarray]:
    """A :class:`~cryoray.data.streams.GeneratedRows` block: one random (patch, labels) pair per row id."""
    return draw_patches(source, rng, len(ids), patch_px, max_shift_px, sampling, augment)


def patch_stream(
    source: PatchSource,
    n_patches: int,
    patch_px: int,
    max_shift_px: int,
    sampling: Sampling,
    augment: bool,
    seed: int = 0,
    rows_per_block: int = 32,
) -> GeneratedRows:
    """A stream of ``n_patches`` random (patch, labels) rows, re-drawn (seeded) every epoch; the sampling mode keys
    the draws, so a run's train and meta streams differ."""
    settings = {"source": source, "patch_px": patch_px, "max_shift_px": max_shift_px, "sampling": sampling, "augment": augment}
    return GeneratedRows(
        n_rows=n_patches,
        make=patch_rows,
        kwargs=settings,
        seed=seed,
        key=get_args(Sampling).index(sampling),
        rows_per_block=rows_per_block,
        task_cpus=PATCH_TASK_CPUS,
    )
