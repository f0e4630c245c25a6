"""Atomic models (PDB / mmCIF, optionally .gz) to density maps, through gemmi.

Density model: the electron-scattering potential, from gemmi's `DensityCalculatorE` (the
5-Gaussian electron scattering factors of International Tables C 4.3.2.2). This is what the
microscope images, it is a well-kept library routine, and it needs no hand-written splatting.
Each atom is blurred by one Gaussian set by `resolution_angstrom` (σ = 0.225 · resolution, the
convention of Chimera's molmap, added as B = 8π²σ²); the model's own B-factors are ignored so
that the map depends on the resolution asked for, not on refinement noise. The default
resolution is Nyquist (2 × voxel size), which keeps the map free of aliasing. Values integrate to
Σ f_e(0) over the atoms (Å; values are Å per Å³), so the total is proportional to the atom count
for a given composition.

Model handling: only the first model is used (NMR ensembles), hydrogens (and deuterium) and
waters are removed (their presence varies between depositions and they are not part of the
particle), alternative conformations keep the first, ligands are kept, occupancy weights atoms.
The centre of mass is placed on voxel (D//2, D//2, D//2), the origin used for projection.
"""

from __future__ import annotations

import math
from pathlib import Path

import gemmi
import numpy as np

from cryoray.errors import CryorayInputError
from cryoray.io.validate import check_positive

SIGMA_PER_RESOLUTION = 0.225
MIN_MARGIN_ANGSTROM = 10.0


def _load_model(path: Path) -> gemmi.Model:
    if not path.is_file():
        raise CryorayInputError(path, "file", "an existing PDB or mmCIF file", "no such file")
    try:
        structure = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as err:
        raise CryorayInputError(path, "atomic model", "a readable PDB or mmCIF file", str(err)) from None
    if len(structure) == 0:
        raise CryorayInputError(path, "atoms", "at least one model with atoms", "no models")
    structure.setup_entities()
    structure.remove_hydrogens()
    structure.remove_waters()
    structure.remove_alternative_conformations()
    model = structure[0]
    if model.count_atom_sites() == 0:
        raise CryorayInputError(path, "atoms", "at least one non-hydrogen, non-water atom", "none")
    return model


def _atom_positions(model: gemmi.Model) -> np.ndarray:
    return np.array([[cra.atom.pos.x, cra.atom.pos.y, cra.atom.pos.z] for cra in model.all()], dtype=np.float64)


def atomic_model_to_density(
    path: str | Path,
    voxel_size_angstrom: float,
    box_px: int | None = None,
    resolution_angstrom: float | None = None,
) -> np.ndarray:
    """A (z, y, x) float32 potential map of an atomic model, centred on its centre of mass in a cubic box.

    Without `box_px` the box is the smallest even size that holds the model's bounding sphere
    plus a margin of max(10 Å, 2 × resolution), so any rotation of it stays inside.
    """
    path = Path(path)
    voxel = check_positive(voxel_size_angstrom, path, "voxel_size_angstrom")
    resolution = 2.0 * voxel if resolution_angstrom is None else check_positive(resolution_angstrom, path, "resolution_angstrom")
    model = _load_model(path)
    com = model.calculate_center_of_mass()
    offsets = _atom_positions(model) - np.array([com.x, com.y, com.z])
    if box_px is None:
        radius = float(np.linalg.norm(offsets, axis=1).max()) + max(MIN_MARGIN_ANGSTROM, 2.0 * resolution)
        box_px = 2 * math.ceil(radius / voxel)
    else:
        box_px = int(check_positive(box_px, path, "box_px"))
        low, high = -(box_px // 2) * voxel, (box_px - 1 - box_px // 2) * voxel
        if offsets.min() < low or offsets.max() > high:
            needed = 2 * math.ceil(np.abs(offsets).max() / voxel) + 2
            raise CryorayInputError(path, "box_px", f"at least {needed} px to hold the model at {voxel} Å/px", box_px)
    centre = (box_px // 2) * voxel
    to_centre = gemmi.Vec3(centre - com.x, centre - com.y, centre - com.z)
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), to_centre))
    for cra in model.all():
        cra.atom.b_iso = 0.0
    side = box_px * voxel
    calculator = gemmi.DensityCalculatorE()
    calculator.d_min = 0.0
    calculator.grid.unit_cell = gemmi.UnitCell(side, side, side, 90.0, 90.0, 90.0)
    calculator.grid.spacegroup = gemmi.SpaceGroup("P 1")
    calculator.grid.set_size(box_px, box_px, box_px)
    calculator.blur = 8.0 * math.pi**2 * (SIGMA_PER_RESOLUTION * resolution) ** 2
    calculator.put_model_density_on_grid(model)
    density = np.array(calculator.grid, copy=True).transpose(2, 1, 0)
    if not np.isfinite(density).all() or density.sum() <= 0:
        raise CryorayInputError(path, "atoms", "elements with known electron scattering factors", "an empty map")
    return np.ascontiguousarray(density, dtype=np.float32)
