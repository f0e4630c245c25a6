"""Simulated particle stacks: shapes, ground truth that survives writing, SNR, seeds, real poses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from cryoray.errors import CryorayInputError
from cryoray.io.mrc import read_mrc
from cryoray.io.star import read_particles_star
from cryoray.physics import euler_relion_to_matrix, project_fourier_slice
from cryoray.simulate import builtin_phantom, simulate_particle_stack, write_particle_dataset

BOX = 32
VOXEL = 4.0


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return builtin_phantom(BOX)


@pytest.fixture(scope="module")
def noisy_stack(volume):
    return simulate_particle_stack(volume, VOXEL, 64, snr_linear=0.5, max_shift_px=3.0, seed=3, batch_size=24)


def test_shapes_and_ground_truth_columns(noisy_stack):
    stack = noisy_stack
    assert len(stack) == 64
    assert stack.images.shape == stack.clean_images.shape == (64, BOX, BOX)
    assert stack.images.dtype == stack.clean_images.dtype == np.float32
    p = stack.particles
    for column in ("rot_deg", "tilt_deg", "psi_deg", "shift_x_angstrom", "defocus_u_angstrom", "voltage_kv", "box_px"):
        assert column in p
    assert list(p["image_index"]) == list(range(64)) and (p["box_px"] == BOX).all()
    assert (p["pixel_size_angstrom"] == VOXEL).all() and stack.voxel_size_angstrom == VOXEL
    assert np.abs(p[["shift_x_angstrom", "shift_y_angstrom"]].to_numpy()).max() <= 3.0 * VOXEL


def test_ctf_parameters_follow_cryo2ssnet(noisy_stack):
    p = noisy_stack.particles
    mean = (p["defocus_u_angstrom"] + p["defocus_v_angstrom"]) / 2
    astigmatism = p["defocus_u_angstrom"] - p["defocus_v_angstrom"]
    assert mean.between(15000, 20000).all() and astigmatism.between(100, 500).all()
    assert p["defocus_angle_deg"].between(np.degrees(0.2), np.degrees(1.4)).all()
    assert (p["voltage_kv"] == 300).all() and (p["cs_mm"] == 2.7).all() and (p["amplitude_contrast"] == 0.07).all()


def test_measured_snr_matches_request(noisy_stack, volume):
    stack = noisy_stack
    noise = stack.images.astype(np.float64) - stack.clean_images
    assert stack.clean_images.var() / noise.var() == pytest.approx(0.5, rel=0.03)
    assert noise.std() == pytest.approx(stack.noise_std, rel=0.02)
    in_db = simulate_particle_stack(volume, VOXEL, 16, snr_db=-10.0, ctf=False, seed=1)
    noise = in_db.images.astype(np.float64) - in_db.clean_images
    assert in_db.clean_images.var() / noise.var() == pytest.approx(0.1, rel=0.05)
    assert in_db.snr_linear == pytest.approx(0.1)


def test_seeded(volume):
    kwargs = dict(snr_linear=1.0, max_shift_px=2.0)
    first = simulate_particle_stack(volume, VOXEL, 8, seed=7, **kwargs)
    again = simulate_particle_stack(volume, VOXEL, 8, seed=7, **kwargs)
    other = simulate_particle_stack(volume, VOXEL, 8, seed=8, **kwargs)
    np.testing.assert_array_equal(first.images, again.images)
    pd.testing.assert_frame_equal(first.particles, again.particles)
    assert not np.allclose(first.images, other.images)
    assert not np.allclose(first.particles["rot_deg"], other.particles["rot_deg"])
    shard_a = simulate_particle_stack(volume, VOXEL, 8, seed=(7, 0), **kwargs)
    shard_b = simulate_particle_stack(volume, VOXEL, 8, seed=(7, 1), **kwargs)
    shard_a_again = simulate_particle_stack(volume, VOXEL, 8, seed=(7, 0), **kwargs)
    np.testing.assert_array_equal(shard_a.images, shard_a_again.images)
    assert not np.allclose(shard_a.images, shard_b.images)


def test_noiseless_and_no_ctf(volume):
    stack = simulate_particle_stack(volume, VOXEL, 4, ctf=False, seed=0)
    np.testing.assert_array_equal(stack.images, stack.clean_images)
    assert stack.noise_std == 0.0 and stack.snr_linear is None
    assert "defocus_u_angstrom" not in stack.particles


def test_shift_follows_relion_sign(volume):
    poses = pd.DataFrame({"rot_deg": [10.0] * 6, "tilt_deg": [70.0] * 6, "psi_deg": [-30.0] * 6})
    centred = simulate_particle_stack(volume, VOXEL, 6, poses=poses, ctf=False)
    shifted = simulate_particle_stack(volume, VOXEL, 6, poses=poses, ctf=False, max_shift_px=4.0, seed=2)

    def centre_of_mass(images):
        grid = np.indices(images.shape[1:])[::-1].reshape(2, -1)  # (x, y)
        flat = images.reshape(len(images), -1)
        return flat @ grid.T / flat.sum(axis=1, keepdims=True)

    moved = centre_of_mass(shifted.clean_images) - centre_of_mass(centred.clean_images)
    shift_px = shifted.particles[["shift_x_angstrom", "shift_y_angstrom"]].to_numpy() / VOXEL
    np.testing.assert_allclose(moved, -shift_px, atol=0.05)  # RELION: the particle sits at centre − origin


def test_poses_from_a_real_star_are_used_exactly(shared_data, volume):
    table = read_particles_star(shared_data / "cryodrgn" / "relion31.star")
    stack = simulate_particle_stack(volume, VOXEL, len(table), poses=table, ctf=False)
    for column in ("rot_deg", "tilt_deg", "psi_deg"):
        np.testing.assert_array_equal(stack.particles[column].to_numpy(), table.particles[column].to_numpy())
    angles_deg = (torch.tensor(table.particles[c].to_numpy()) for c in ("rot_deg", "tilt_deg", "psi_deg"))
    rotations = euler_relion_to_matrix(*angles_deg)
    expected = project_fourier_slice(torch.as_tensor(volume), rotations.to(torch.float32)).numpy()
    np.testing.assert_allclose(stack.clean_images, expected, atol=1e-5 * np.abs(expected).max())
    with pytest.raises(CryorayInputError, match="n_images"):
        simulate_particle_stack(volume, VOXEL, 3, poses=table)


def test_dataset_round_trip(tmp_path, noisy_stack):
    paths = write_particle_dataset(tmp_path / "dataset", noisy_stack)
    images = read_mrc(paths["particles_mrcs"])
    assert images.data.shape == (64, BOX, BOX) and images.voxel_size_angstrom == VOXEL
    np.testing.assert_array_equal(images.data, noisy_stack.images)
    truth = read_mrc(paths["ground_truth_map"])
    assert truth.voxel_size_angstrom == VOXEL and truth.data.shape == (BOX,) * 3
    table = read_particles_star(paths["particles_star"])
    assert table.has_poses and table.has_ctf
    expected = noisy_stack.particles.drop(columns="image_path")
    pd.testing.assert_frame_equal(table.particles.drop(columns="image_path"), expected, check_exact=False, atol=1e-6)
    assert set(table.particles["image_path"]) == {str(paths["particles_mrcs"])}
    with pytest.raises(CryorayInputError, match="overwrite=True"):
        write_particle_dataset(tmp_path / "dataset", noisy_stack)
    write_particle_dataset(tmp_path / "dataset", noisy_stack, overwrite=True)


def test_bad_arguments(volume):
    with pytest.raises(CryorayInputError, match="at most one"):
        simulate_particle_stack(volume, VOXEL, 4, snr_linear=1.0, snr_db=0.0)
    with pytest.raises(CryorayInputError, match="snr_linear"):
        simulate_particle_stack(volume, VOXEL, 4, snr_linear=0.0)
    with pytest.raises(CryorayInputError, match="volume"):
        simulate_particle_stack(np.zeros((8, 8, 9)), VOXEL, 4)
    with pytest.raises(CryorayInputError, match="poses"):
        simulate_particle_stack(volume, VOXEL, 4, poses="sphere")
    with pytest.raises(CryorayInputError, match="voxel_size_angstrom"):
        simulate_particle_stack(volume, 0.0, 4)
    bad = volume.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(CryorayInputError, match="volume"):
        simulate_particle_stack(bad, VOXEL, 4)
