"""Atomic model -> density: centred, scaled with the atoms, sized to fit."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest
from cryoray.errors import CryorayInputError
from cryoray.io.atomic import atomic_model_to_density


def _centre_of_density(volume: np.ndarray) -> np.ndarray:
    grid = np.indices(volume.shape).reshape(3, -1)
    return (grid * volume.reshape(-1)).sum(axis=1) / volume.sum()


def _heavy_atoms(path) -> int:
    structure = gemmi.read_structure(str(path))
    structure.remove_hydrogens()
    structure.remove_waters()
    return structure[0].count_atom_sites()


@pytest.mark.parametrize("name", ["mdanalysis_workshop/4ake.pdb.gz", "cryojax/8zpm.cif.gz"])
def test_density_is_centred_and_sized(shared_data, name):
    voxel = 2.0
    density = atomic_model_to_density(shared_data / name, voxel_size_angstrom=voxel)
    box = density.shape[0]
    assert density.shape == (box, box, box) and box % 2 == 0 and density.dtype == np.float32
    assert 40 <= box <= 90  # ~70-100 Å proteins plus margin at 2 Å/px
    np.testing.assert_allclose(_centre_of_density(density), box // 2, atol=0.5)
    assert density.min() >= 0 and np.isfinite(density).all()
    edge = np.concatenate([density[0].ravel(), density[-1].ravel(), density[:, 0].ravel(), density[:, :, -1].ravel()])
    assert edge.max() < 1e-3 * density.max()


def test_total_is_proportional_to_atom_count(shared_data):
    totals = {}
    for name in ("mdanalysis_workshop/4ake.pdb.gz", "cryojax/8zpm.cif.gz", "cryojax/1uao.pdb"):
        density = atomic_model_to_density(shared_data / name, voxel_size_angstrom=1.5)
        totals[name] = density.sum() * 1.5**3 / _heavy_atoms(shared_data / name)
    per_atom = np.array(list(totals.values()))
    np.testing.assert_allclose(per_atom, per_atom.mean(), rtol=0.05)
    assert 1.5 < per_atom.mean() < 3.5  # f_e(0) of C/N/O is ~2-2.5 Å


def test_resolution_blurs_and_box_is_respected(shared_data):
    path = shared_data / "mdanalysis_workshop" / "4ake.pdb.gz"
    sharp = atomic_model_to_density(path, 2.0, box_px=64)
    blurred = atomic_model_to_density(path, 2.0, box_px=64, resolution_angstrom=10.0)
    assert sharp.shape == blurred.shape == (64, 64, 64)
    assert blurred.max() < 0.5 * sharp.max()
    np.testing.assert_allclose(blurred.sum(), sharp.sum(), rtol=0.02)
    with pytest.raises(CryorayInputError, match="box_px: expected at least"):
        atomic_model_to_density(path, 2.0, box_px=24)


def test_bad_models_fail_clearly(tmp_path):
    not_a_model = tmp_path / "model.pdb"
    not_a_model.write_text("HEADER    nothing here\nEND\n")
    with pytest.raises(CryorayInputError, match="model.pdb: atoms"):
        atomic_model_to_density(not_a_model, 1.0)
    waters_only = tmp_path / "water.pdb"
    waters_only.write_text("HETATM    1  O   HOH A   1      10.000  10.000  10.000  1.00 20.00           O\nEND\n")
    with pytest.raises(CryorayInputError, match="water.pdb: atoms"):
        atomic_model_to_density(waters_only, 1.0)
    with pytest.raises(CryorayInputError, match="no such file"):
        atomic_model_to_density(tmp_path / "absent.cif", 1.0)
    with pytest.raises(CryorayInputError, match="voxel_size_angstrom"):
        atomic_model_to_density(not_a_model, 0.0)
