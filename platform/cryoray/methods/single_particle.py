"""Evaluation and artifacts shared by the ab-initio single-particle methods (Cryo2SSNet, cryoSPIN).

An ab-initio map lives in its own frame and hand, so every number against ground truth is taken after
``physics.alignment.align_maps``: FSC of the aligned map (resolution at 0.5, the cut-off for a map
against its noiseless ground truth, and at 0.143), its real-space correlation, and the pose error after
the best global rotation (and hand) of the predicted poses onto the true ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
import torch
from pydantic import BaseModel

from cryoray.io.figures import write_fsc_curves
from cryoray.io.manifest import DatasetManifest
from cryoray.io.models import MODEL_FILE, write_model_file
from cryoray.io.mrc import write_mrc
from cryoray.io.star import read_particles_star
from cryoray.physics import (
    fourier_shell_correlation,
    fsc_resolution_angstrom,
    matrix_to_euler_relion,
    rotation_error_after_alignment,
)
from cryoray.physics.alignment import align_maps
from cryoray.physics.symmetry import symmetry_rotations
from cryoray.train.context import TrainContext
from cryoray.train.method import TrainState


@dataclass
class ReconstructionEvaluation:
    """A map (and poses) scored against ground truth after alignment."""

    metrics: dict[str, float]
    aligned_map: torch.Tensor | None = None
    frequency: torch.Tensor | None = None
    fsc: torch.Tensor | None = None
    pose_errors_deg: torch.Tensor | None = field(default=None, repr=False)


def evaluate_reconstruction(
    density: torch.Tensor,
    reference: np.ndarray | None,
    voxel_size_angstrom: float,
    predicted_rotations: torch.Tensor | None = None,
    true_rotations: torch.Tensor | None = None,
    *,
    search_level: int = 2,
    symmetry: str = "C1",
) -> ReconstructionEvaluation:
    """Align ``density`` to ``reference`` (rotation, shift, hand), then FSC resolutions and pose errors.

    Without a reference (real data) only the pose error is reported, and only when true poses are given.
    For a particle of point group ``symmetry`` the pose error is taken modulo the group; the map alignment
    needs nothing more (any of the group's equivalent alignments gives the same FSC).
    """
    metrics: dict[str, float] = {}
    evaluation = ReconstructionEvaluation(metrics=metrics)
    if reference is not None:
        truth = torch.from_numpy(reference).float()
        alignment = align_maps(density.detach().float().cpu(), truth, search_level=search_level)
        frequency, fsc = fourier_shell_correlation(alignment.aligned, truth)
        metrics["fsc_resolution_0.5_angstrom"] = fsc_resolution_angstrom(frequency, fsc, voxel_size_angstrom, 0.5)
        metrics["fsc_resolution_0.143_angstrom"] = fsc_resolution_angstrom(frequency, fsc, voxel_size_angstrom, 0.143)
        metrics["map_correlation"] = alignment.correlation
        metrics["hand_flipped"] = float(alignment.flipped)
        evaluation.aligned_map, evaluation.frequency, evaluation.fsc = alignment.aligned, frequency, fsc
    if predicted_rotations is not None and true_rotations is not None:
        group = None if symmetry == "C1" else symmetry_rotations(symmetry)
        errors = rotation_error_after_alignment(predicted_rotations.detach().cpu(), true_rotations.detach().cpu(), symmetry=group)
        metrics["pose_error_mean_deg"] = errors["mean_deg"]
        metrics["pose_error_median_deg"] = errors["median_deg"]
        evaluation.pose_errors_deg = errors["errors_deg"]
    return evaluation


def _source_image_names(manifest: DatasetManifest, particle_indices: np.ndarray) -> list[str] | None:
    """The RELION image names of imported particles (``particle_index`` is the row of the source STAR)."""
    star = manifest.provenance.get("star")
    if not star or not Path(star).is_file():
        return None
    particles = read_particles_star(star).particles
    rows = particles.iloc[particle_indices]
    return [f"{int(i) + 1:06d}@{p}" for i, p in zip(rows["image_index"], rows["image_path"])]


def write_poses_star(
    path: Path,
    manifest: DatasetManifest,
    particle_indices: np.ndarray,
    rotations: torch.Tensor,
    shifts_angstrom: torch.Tensor | None = None,
) -> Path:
    """RELION 3.1 STAR of the inferred poses (ZYZ Euler degrees, origin shifts in Å), one row per particle.

    ``rlnImageId`` is the dataset's ``particle_index`` + 1; imported datasets also get their original
    ``rlnImageName``, so the file drops into a RELION/cryoDRGN workflow on the same stack.
    """
    order = np.argsort(particle_indices, kind="stable")
    indices = np.asarray(particle_indices)[order]
    rot, tilt, psi = (angle.numpy() for angle in matrix_to_euler_relion(rotations.detach().cpu().double()[order]))
    particles = pd.DataFrame({"rlnImageId": indices.astype(np.int64) + 1})
    names = _source_image_names(manifest, indices)
    if names is not None:
        particles["rlnImageName"] = names
    particles["rlnOpticsGroup"] = 1
    particles["rlnAngleRot"], particles["rlnAngleTilt"], particles["rlnAnglePsi"] = rot, tilt, psi
    shifts = np.zeros((len(indices), 2)) if shifts_angstrom is None else shifts_angstrom.detach().cpu().double().numpy()[order]
    particles["rlnOriginXAngst"], particles["rlnOriginYAngst"] = shifts[:, 0], shifts[:, 1]
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnImagePixelSize": [manifest.voxel_size_angstrom],
            "rlnImageSize": [manifest.box_px],
            "rlnImageDimensionality": [2],
        }
    )
    starfile.write({"optics": optics, "particles": particles}, path, overwrite=True)
    return path


def write_reconstruction_artifacts(
    output_dir: Path,
    density: torch.Tensor,
    manifest: DatasetManifest,
    evaluation: ReconstructionEvaluation | None,
    particle_indices: np.ndarray | None = None,
    rotations: torch.Tensor | None = None,
    shifts_angstrom: torch.Tensor | None = None,
) -> dict[str, str]:
    """``map.mrc`` (the map as learned), ``map_aligned.mrc`` + ``fsc.csv/png`` (with a reference), ``poses.star``."""
    output_dir = Path(output_dir)
    voxel = manifest.voxel_size_angstrom
    artifacts = {"map": str(write_mrc(output_dir / "map.mrc", density.detach().cpu().numpy(), voxel, overwrite=True))}
    if evaluation is not None and evaluation.aligned_map is not None:
        aligned = evaluation.aligned_map.numpy()
        artifacts["map_aligned"] = str(write_mrc(output_dir / "map_aligned.mrc", aligned, voxel, overwrite=True))
        if evaluation.frequency is not None and evaluation.fsc is not None:  # set together with aligned_map
            frequency, fsc = evaluation.frequency.numpy(), evaluation.fsc.numpy()
            artifacts.update(write_fsc_curves(output_dir, frequency, {"fsc": fsc}, voxel))
    if particle_indices is not None and rotations is not None:
        poses = write_poses_star(output_dir / "poses.star", manifest, particle_indices, rotations, shifts_angstrom)
        artifacts["poses"] = str(poses)
    return {name: str(Path(path).resolve()) for name, path in artifacts.items()}


def write_pose_model(output_dir: Path, method: str, state: TrainState, config: BaseModel, ctx: TrainContext) -> dict[str, str]:
    """The model file of an ab-initio method: its pose encoder and map decoder, with the image geometry."""
    path = write_model_file(
        output_dir / MODEL_FILE,
        method,
        {"encoder": state.unwrapped("encoder"), "decoder": state.unwrapped("decoder")},
        {
            "config": config.model_dump(mode="json"),
            "box_px": ctx.manifest.box_px,
            "voxel_size_angstrom": ctx.manifest.voxel_size_angstrom,
        },
    )
    return {"model": str(path.resolve())}
