"""Single-particle image stacks with exact ground truth, written as a RELION 3.1 dataset.

Each image is: the central-slice projection of the volume at the particle's pose, shifted in
plane, multiplied by its CTF, plus white Gaussian noise. The SNR is the stack's: one noise level
σ² = var(all clean pixels) / SNR for every image, as in a real dataset where the dose, not the
view, sets the noise. All imaging physics
comes from `cryoray.physics`; this module only draws the parameters and keeps the books.

Conventions (those of `cryoray.physics` and `cryoray.io.star`): poses are RELION ZYZ Euler angles
in degrees, the single source of truth for the rotation used; shifts follow RELION's sign (the
particle sits at the image centre − shift, so image = shift(projection, −shift)); the CTF
is the physics package's (particles dark on a bright background at low frequency).
Default CTF ranges follow Cryo2SSNet (appendix B): 300 kV, Cs 2.7 mm, amplitude contrast 0.07,
mean defocus U(1.5, 2) µm, astigmatism |dfU − dfV| U(100, 500) Å, astigmatism angle U(0.2, 1.4) rad.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryoray.errors import CryorayInputError
from cryoray.io.mrc import write_mrc
from cryoray.io.star import PARTICLE_COLUMNS, ParticleTable, write_particles_star
from cryoray.io.validate import check_can_write, check_finite, check_positive
from cryoray.physics import (
    CTF_PARAMETERS,
    add_gaussian_noise,
    euler_relion_to_matrix,
    form_particle_images,
    matrix_to_euler_relion,
    random_rotations,
    snr_db_to_linear,
    validate_ctf_parameters,
)

STACK_NAME = "particles.mrcs"
STAR_NAME = "particles.star"
MAP_NAME = "ground_truth_map.mrc"


@dataclass(frozen=True)
class SimulatedStack:
    """Noisy `images`, noiseless `clean_images` (n, D, D), the ground-truth particle table and the volume."""

    images: np.ndarray
    clean_images: np.ndarray
    particles: pd.DataFrame
    volume: np.ndarray
    voxel_size_angstrom: float
    noise_std: float
    snr_linear: float | None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _check_volume(volume: np.ndarray | torch.Tensor) -> torch.Tensor:
    array = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if array.ndim != 3 or len(set(array.shape)) != 1:
        raise CryorayInputError(None, "volume", "a cubic (D, D, D) array", f"shape {array.shape}")
    check_finite(array, None, "volume")
    return torch.as_tensor(array, dtype=torch.float32)


def _pose_angles(poses: str | pd.DataFrame | ParticleTable, n_images: int, generator: torch.Generator) -> np.ndarray:
    """(n, 3) rot/tilt/psi in degrees: drawn uniformly on SO(3), or taken as given."""
    if isinstance(poses, str):
        if poses != "uniform":
            raise CryorayInputError(None, "poses", "'uniform' or a table with rot_deg, tilt_deg, psi_deg", repr(poses))
        rot, tilt, psi = matrix_to_euler_relion(random_rotations(n_images, generator=generator, dtype=torch.float64))
        return torch.stack((rot, tilt, psi), dim=1).numpy()
    table = poses.particles if isinstance(poses, ParticleTable) else poses
    missing = [c for c in ("rot_deg", "tilt_deg", "psi_deg") if c not in table]
    if missing:
        raise CryorayInputError(None, "poses", "a table with rot_deg, tilt_deg, psi_deg columns", f"missing {missing}")
    if len(table) != n_images:
        raise CryorayInputError(None, "n_images", f"the number of poses given ({len(table)})", n_images)
    angles = table[["rot_deg", "tilt_deg", "psi_deg"]].to_numpy(dtype=np.float64)
    check_finite(angles, None, "poses")
    return angles


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> np.ndarray:
    return (low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)).numpy()


def simulate_particle_stack(
    volume: np.ndarray | torch.Tensor,
    voxel_size_angstrom: float,
    n_images: int,
    *,
    snr_linear: float | None = None,
    snr_db: float | None = None,
    ctf: bool = True,
    defocus_mean_range_angstrom: tuple[float, float] = (15000.0, 20000.0),
    astigmatism_range_angstrom: tuple[float, float] = (100.0, 500.0),
    astigmatism_angle_range_rad: tuple[float, float] = (0.2, 1.4),
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    poses: str | pd.DataFrame | ParticleTable = "uniform",
    max_shift_px: float = 0.0,
    seed: int | Sequence[int] = 0,
    batch_size: int = 256,
) -> SimulatedStack:
    """Simulate `n_images` projections of `volume` with known poses, shifts and CTFs; seeded and reproducible.

    Give at most one of `snr_linear` / `snr_db`; with neither the images are noiseless. `poses`
    is "uniform" (Haar-random rotations) or a table with rot_deg/tilt_deg/psi_deg (e.g. from
    `read_particles_star`) whose angles are used exactly, one image per row. Shifts are drawn
    uniformly in [−max_shift_px, max_shift_px] along x and y. `seed` may be a sequence such as
    (dataset_seed, shard_index) for independent, reproducible shards.
    """
    voxel = check_positive(voxel_size_angstrom, None, "voxel_size_angstrom")
    if int(n_images) != n_images or n_images < 1:
        raise CryorayInputError(None, "n_images", "a positive integer", n_images)
    if int(batch_size) != batch_size or batch_size < 1:
        raise CryorayInputError(None, "batch_size", "a positive integer", batch_size)
    if snr_linear is not None and snr_db is not None:
        raise CryorayInputError(None, "snr_linear / snr_db", "at most one of them", f"{snr_linear} and {snr_db}")
    if snr_linear is not None:
        check_positive(snr_linear, None, "snr_linear")
    if snr_db is not None and not math.isfinite(snr_db):
        raise CryorayInputError(None, "snr_db", "a finite number", snr_db)
    if not (math.isfinite(max_shift_px) and max_shift_px >= 0):
        raise CryorayInputError(None, "max_shift_px", "a finite number >= 0", max_shift_px)
    if ctf:
        validate_ctf_parameters(voxel, voltage_kv, amplitude_contrast)
    density = _check_volume(volume)
    box = int(density.shape[0])
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
    angles = _pose_angles(poses, int(n_images), generator)
    n = len(angles)
    shifts_px = np.stack([_uniform(generator, n, -max_shift_px, max_shift_px) for _ in range(2)], axis=1)
    table = pd.DataFrame(
        {
            "image_index": np.arange(n, dtype=np.int64),
            "image_path": STACK_NAME,
            "optics_group": np.ones(n, dtype=np.int64),
            "rot_deg": angles[:, 0],
            "tilt_deg": angles[:, 1],
            "psi_deg": angles[:, 2],
            "shift_x_angstrom": shifts_px[:, 0] * voxel,
            "shift_y_angstrom": shifts_px[:, 1] * voxel,
            "pixel_size_angstrom": voxel,
            "box_px": box,
        }
    )
    if ctf:
        mean = _uniform(generator, n, *defocus_mean_range_angstrom)
        astigmatism = _uniform(generator, n, *astigmatism_range_angstrom)
        table["defocus_u_angstrom"] = mean + astigmatism / 2
        table["defocus_v_angstrom"] = mean - astigmatism / 2
        table["defocus_angle_deg"] = np.degrees(_uniform(generator, n, *astigmatism_angle_range_rad))
        table["phase_shift_deg"] = 0.0
        table["voltage_kv"] = float(voltage_kv)
        table["cs_mm"] = float(cs_mm)
        table["amplitude_contrast"] = float(amplitude_contrast)
    table = table[[c for c in PARTICLE_COLUMNS if c in table]]

    clean = torch.empty((n, box, box), dtype=torch.float32)
    for start in range(0, n, int(batch_size)):
        rows = table.iloc[start : start + int(batch_size)]
        angles_deg = (torch.tensor(rows[c].to_numpy()) for c in ("rot_deg", "tilt_deg", "psi_deg"))
        origin = torch.as_tensor(shifts_px[start : start + len(rows)] * voxel, dtype=torch.float32)
        ctf_parameters = {c: torch.tensor(rows[c].to_numpy(), dtype=torch.float32) for c in CTF_PARAMETERS} if ctf else None
        rotations = euler_relion_to_matrix(*angles_deg).to(torch.float32)
        batch = form_particle_images(density, rotations, voxel, origin, ctf_parameters)
        clean[start : start + len(rows)] = batch
    noise_std: torch.Tensor | float  # a 0-d tensor (the stack is one sample) or 0.0 without noise
    if snr_linear is None and snr_db is None:
        noisy, noise_std = clean.clone(), 0.0
    else:
        noisy, noise_std = add_gaussian_noise(clean, snr_linear=snr_linear, snr_db=snr_db, generator=generator, sample_ndim=3)
    snr = float(snr_db_to_linear(snr_db)) if snr_db is not None else snr_linear
    return SimulatedStack(
        images=noisy.numpy(),
        clean_images=clean.numpy(),
        particles=table,
        volume=density.numpy(),
        voxel_size_angstrom=voxel,
        noise_std=float(noise_std),
        snr_linear=snr,
    )


def write_particle_dataset(out_dir: str | Path, stack: SimulatedStack, overwrite: bool = False) -> dict[str, Path]:
    """Write particles.mrcs (noisy images), particles.star (RELION 3.1, ground truth) and ground_truth_map.mrc.

    Nothing is written when any of the three exists, unless `overwrite=True`.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise CryorayInputError(out_dir, "out_dir", "a directory", "an existing file")
    paths = {
        "particles_mrcs": out_dir / STACK_NAME,
        "particles_star": out_dir / STAR_NAME,
        "ground_truth_map": out_dir / MAP_NAME,
    }
    for path in paths.values():
        check_can_write(path, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_mrc(paths["particles_mrcs"], stack.images, stack.voxel_size_angstrom, overwrite=overwrite)
    write_mrc(paths["ground_truth_map"], stack.volume, stack.voxel_size_angstrom, overwrite=overwrite)
    write_particles_star(paths["particles_star"], stack.particles.assign(image_path=STACK_NAME), overwrite=overwrite)
    return paths
