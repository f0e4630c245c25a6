"""Tomogram simulator: placement, exact clean density, missing wedge, SNR, label maps and annotation noise."""

from __future__ import annotations

import math

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch
from cryoray.errors import CryorayInputError
from cryoray.io.mrc import read_mrc, write_mrc
from cryoray.physics import (
    ctf_2d,
    euler_relion_to_matrix,
    fft3_centered,
    missing_wedge_mask,
)
from cryoray.physics.wedge import tilt_series_mask
from cryoray.simulate.tomogram import (
    BUILTIN_SPECIES,
    Species,
    TomogramCtf,
    annotation_noise,
    builtin_species,
    convex_hull_mask,
    instance_map,
    isotropic_ctf,
    rotate_species,
    shape_label_map,
    simulate_tomogram,
    species_from_atomic_model,
    species_from_map,
    species_from_mask,
    sphere_label_map,
)
from scipy import ndimage

SHAPE = (40, 80, 96)  # non-cubic on purpose


@pytest.fixture(scope="module")
def species():
    return builtin_species(["tiny_dimer", "small_tripod", "medium_helix", "large_cluster"])


@pytest.fixture(scope="module")
def simulated(species):
    return simulate_tomogram(species, SHAPE, [6, 5, 4, 3], seed=[7, 0], tilt_step_deg=None, snr_linear=0.5)


def _centres_zyx(particles: pd.DataFrame) -> np.ndarray:
    return particles[["z_px", "y_px", "x_px"]].to_numpy().astype(int)


def _by_class(species):
    return {s.class_id: s for s in species}


def test_builtin_species_span_tiny_to_large_and_are_anisotropic():
    all_species = builtin_species()
    assert [s.name for s in all_species] == list(BUILTIN_SPECIES) and len(all_species) == 6
    assert [s.class_id for s in all_species] == [1, 2, 3, 4, 5, 6]
    assert {s.size_group for s in all_species} == {"tiny", "small", "medium", "large"}
    radii = [s.radius_px for s in all_species]
    assert 2.0 < radii[0] < 3.5 and radii[-1] > 8.5 and radii == sorted(radii)
    assert all(s.bounding_radius_px >= s.radius_px for s in all_species)
    assert max(s.bounding_radius_px for s in all_species) == pytest.approx(12.0, abs=1.5)
    for s in all_species:  # no two equal principal moments: every orientation looks different
        points = np.argwhere(s.mask).astype(float)
        moments = np.linalg.eigvalsh(np.cov(points.T))
        assert np.min(np.diff(moments)) / moments.max() > 0.02, s.name
        assert s.density.max() == pytest.approx(1.0) and s.box_px % 2 == 1


def test_rotation_follows_the_pose_convention():
    """rot = -90 is R = Rz(+90): the pose moves the particle's +x arm to +y."""
    box = 15
    density = np.zeros((box,) * 3, dtype=np.float32)
    density[7, 7, 7] = 1.0
    density[7, 7, 11] = 0.5  # an arm along +x
    s = Species(1, "arm", ndimage.gaussian_filter(density, 0.8), density > 0, 10.0)
    c = s.box_px // 2
    turned, mask = rotate_species(s, -90.0, 0.0, 0.0)
    rotation = euler_relion_to_matrix(-90.0, 0.0, 0.0).double().numpy()
    assert np.allclose(rotation @ [1, 0, 0], [0, 1, 0], atol=1e-6)
    assert turned[c, c + 4, c] == pytest.approx(s.density[c, c, c + 4], abs=1e-5)
    assert mask[c, c + 4, c] and not mask[c, c, c + 4]


def test_particles_lie_inside_and_their_bounding_spheres_do_not_intersect(simulated, species):
    table = simulated.particles
    assert list(table.columns) == ["x_px", "y_px", "z_px", "class_id", "rot_deg", "tilt_deg", "psi_deg"]
    assert np.bincount(table["class_id"], minlength=5)[1:].tolist() == [6, 5, 4, 3]
    radii = np.array([_by_class(species)[k].bounding_radius_px for k in table["class_id"]])
    centres = _centres_zyx(table)
    assert (centres - radii[:, None] >= 0).all() and (centres + radii[:, None] <= np.array(SHAPE) - 1).all()
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=2)
    np.fill_diagonal(distance, np.inf)
    assert (distance > radii[:, None] + radii[None, :]).all()
    # orientations: RELION ranges, spread over the sphere
    assert table["tilt_deg"].between(0, 180).all() and table["rot_deg"].between(-180, 180).all()


def test_clean_tomogram_is_the_sum_of_the_rotated_densities(simulated, species):
    """Rebuilt independently with scipy's affine_transform: V_placed(r) = V(Rᵀ (r - centre))."""
    expected = np.zeros(SHAPE, dtype=np.float64)
    flip = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    for row, centre in zip(simulated.particles.itertuples(), _centres_zyx(simulated.particles)):
        s = _by_class(species)[row.class_id]
        rotation = euler_relion_to_matrix(row.rot_deg, row.tilt_deg, row.psi_deg).double().numpy()
        matrix = flip @ rotation.T @ flip
        c = np.full(3, s.box_px // 2, dtype=float)
        placed = ndimage.affine_transform(s.density.astype(np.float64), matrix, offset=c - matrix @ c, order=1, cval=0.0)
        padded = np.zeros(np.array(SHAPE) + 2 * s.box_px)
        start = centre - s.box_px // 2 + s.box_px
        padded[tuple(slice(a, a + s.box_px) for a in start)] += placed
        expected += padded[s.box_px : -s.box_px, s.box_px : -s.box_px, s.box_px : -s.box_px]
    np.testing.assert_allclose(simulated.clean, expected, atol=1e-5)
    for row, centre in zip(simulated.particles.itertuples(), _centres_zyx(simulated.particles)):
        s = _by_class(species)[row.class_id]
        own = s.density[(s.box_px // 2,) * 3]  # the centre maps onto itself exactly
        assert simulated.clean[tuple(centre)] >= own - 1e-6
        if s.name in ("tiny_dimer", "large_cluster"):  # compact shapes: dense at the centre of mass
            assert simulated.clean[tuple(centre)] > 0.5


def test_continuous_wedge_for_a_cube_is_the_existing_mask():
    for axis in ("x", "y"):
        for box in (32, 33):
            assert torch.equal(tilt_series_mask((box,) * 3, -50.0, 60.0, None, axis), missing_wedge_mask(box, -50.0, 60.0, axis))


def test_tilt_series_mask_uses_physical_directions_and_discrete_planes():
    # Non-cubic: (kz, kx) = (10/32, 10/64) cycles/px points 63.4° from kx: missing for ±60°.
    mask = tilt_series_mask((32, 16, 64), -60.0, 60.0)
    assert mask[16 + 10, 8, 32 + 10] == 0 and mask[16 + 5, 8, 32 + 10] == 1 and mask[16 + 10, 3, 32] == 0
    # Discrete tilts every 2°: (kx, kz) = (26, 15) is 29.98° (on the 30° plane), (24, 15) is 32.005°;
    # (30, 18) is 30.96° at radius 35, 0.59 and 0.64 voxel from the 30° and 32° planes: unmeasured.
    cube = 65
    stepped = tilt_series_mask((cube,) * 3, -60.0, 60.0, 2.0)
    c = cube // 2
    assert stepped[c + 15, c + 3, c + 26] == 1 and stepped[c + 15, c - 7, c + 24] == 1 and stepped[c - 15, c, c - 24] == 1
    assert stepped[c + 18, c + 3, c + 30] == 0 and stepped[c - 18, c, c - 30] == 0 and stepped[c + 19, c, c + 5] == 0
    assert stepped[c + 2, c, c + 3] == 1  # low frequencies: the planes overlap
    assert float(stepped.mean()) < float(tilt_series_mask((cube,) * 3, -60.0, 60.0).mean())


@pytest.mark.parametrize("step", [None, 2.0])
def test_wedge_removes_the_missing_region_and_keeps_the_rest(species, step):
    tomo = simulate_tomogram(species[:2], SHAPE, 4, seed=3, tilt_step_deg=step, snr_linear=None)
    mask = tilt_series_mask(SHAPE, -60.0, 60.0, step, dtype=torch.float64).numpy().astype(bool)
    measured = fft3_centered(torch.from_numpy(tomo.noiseless.astype(np.float64))).numpy()
    truth = fft3_centered(torch.from_numpy(tomo.clean.astype(np.float64))).numpy()
    scale = np.abs(truth).max()
    assert np.abs(measured[~mask]).max() < 1e-5 * scale
    np.testing.assert_allclose(measured[mask], truth[mask], atol=1e-5 * scale)
    assert np.abs(truth[~mask]).max() > 0.01 * scale  # there was signal to remove
    np.testing.assert_array_equal(tomo.tomogram, tomo.noiseless)


@pytest.mark.parametrize("ctf", [None, TomogramCtf(defocus_angstrom=25000.0)])
def test_snr_is_the_one_requested_and_noise_lives_on_the_measured_planes(species, ctf):
    tomo = simulate_tomogram(species, SHAPE, 3, seed=5, snr_linear=0.25, ctf=ctf)
    noise = tomo.tomogram.astype(np.float64) - tomo.noiseless
    assert np.var(tomo.noiseless) / np.var(noise) == pytest.approx(0.25, rel=0.03)
    assert tomo.noise_std == pytest.approx(noise.std(), rel=1e-4)
    mask = tilt_series_mask(SHAPE, -60.0, 60.0, 2.0, dtype=torch.float64).numpy().astype(bool)
    spectrum = np.abs(fft3_centered(torch.from_numpy(noise)).numpy())
    assert spectrum[~mask].max() < 1e-4 * spectrum[mask].max()


def test_isotropic_ctf_is_the_2d_ctf_along_any_direction():
    ctf = TomogramCtf(defocus_angstrom=30000.0, bfactor_angstrom2=50.0)
    box, voxel = 64, 10.0
    volume_ctf = isotropic_ctf((box, box, box), voxel, ctf).numpy()
    image_ctf = ctf_2d(box, voxel, 30000.0, 30000.0, 0.0, 300.0, 2.7, 0.07, bfactor_angstrom2=50.0, dtype=torch.float64)[
        0
    ].numpy()
    c = box // 2
    np.testing.assert_allclose(volume_ctf[c, :, :], image_ctf, atol=1e-10)  # the kz = 0 plane
    np.testing.assert_allclose(volume_ctf[:, c, c], image_ctf[:, c], atol=1e-10)  # along kz as along ky
    assert volume_ctf[c, c, c] == pytest.approx(-0.07)  # dark protein at low frequency


def test_shape_labels_are_the_rotated_masks_and_instances_number_the_rows(simulated, species):
    table = simulated.particles
    shape_labels = shape_label_map(table, species, SHAPE)
    instances = instance_map(table, species, SHAPE)
    assert shape_labels.dtype == np.uint8 and instances.dtype == np.int32
    assert set(np.unique(instances)) == set(range(len(table) + 1))
    for j, (row, centre) in enumerate(zip(table.itertuples(), _centres_zyx(table))):
        s = _by_class(species)[row.class_id]
        _, mask = rotate_species(s, row.rot_deg, row.tilt_deg, row.psi_deg)
        pad, half = s.box_px, s.box_px // 2
        window = tuple(slice(a + pad - half, a + pad + half + 1) for a in centre)
        hit_box = np.pad(instances, pad)[window] == j + 1
        assert np.all(hit_box[mask]) and hit_box[half, half, half]  # the mask, and the centre even if hollow
        np.testing.assert_array_equal(np.pad(shape_labels, pad)[window][mask], row.class_id)
        assert mask.sum() == pytest.approx(s.mask_volume_px, rel=0.15)  # rotation keeps the volume
        assert hit_box.sum() == pytest.approx(s.hit_box.sum(), rel=0.15)
        voxels = np.argwhere(instances == j + 1)
        assert np.linalg.norm(voxels - centre, axis=1).max() <= s.bounding_radius_px
    # masks never overlap, and each lies in its own hit box
    assert np.all(instances[shape_labels > 0] > 0)
    for k in range(1, 5):
        assert (shape_labels == k).sum() == sum(
            ((instances == j + 1) & (shape_labels == k)).sum() for j in np.flatnonzero(table["class_id"] == k)
        )


def test_hit_boxes_are_convex_hulls_that_hold_a_hollow_particles_centre():
    ring = np.zeros((15, 15, 15), dtype=bool)
    z, y, x = np.indices(ring.shape) - 7
    ring[(np.abs(z) <= 1) & (np.hypot(y, x) >= 4) & (np.hypot(y, x) <= 6)] = True
    hull = convex_hull_mask(ring)
    assert not ring[7, 7, 7] and hull[7, 7, 7] and np.all(hull[ring])
    assert hull.sum() == pytest.approx(3 * np.pi * 6**2, rel=0.15) and not hull[0].any()  # the filled disc, no more
    flat = np.zeros((5, 5, 5), dtype=bool)
    flat[2, 1:4, 1:4] = True
    np.testing.assert_array_equal(convex_hull_mask(flat), flat)


def test_sphere_labels_have_the_species_radius(species):
    s = species[2]
    particles = pd.DataFrame({"x_px": [30.3], "y_px": [20.0], "z_px": [14.6], "class_id": [s.class_id]})
    labels = sphere_label_map(particles, species, SHAPE)
    inside = np.argwhere(labels == s.class_id)
    distance = np.linalg.norm(inside - [14.6, 20.0, 30.3], axis=1)
    assert distance.max() <= s.radius_px
    assert len(inside) == pytest.approx(4 / 3 * math.pi * s.radius_px**3, rel=0.1)
    grid = np.indices(SHAPE).reshape(3, -1).T
    outside = grid[labels.ravel() == 0]
    assert np.linalg.norm(outside - [14.6, 20.0, 30.3], axis=1).min() > s.radius_px
    # later rows overwrite earlier ones; a ball at the border is clipped, not an error
    two = pd.DataFrame({"x_px": [30.0, 32.0, 0.0], "y_px": [20.0, 20.0, 0.0], "z_px": [14.0, 14.0, 0.0], "class_id": [1, 3, 2]})
    both = sphere_label_map(two, species, SHAPE)
    assert both[14, 20, 31] == 3 and both[0, 0, 0] == 2


def test_annotation_noise_drops_the_fraction_and_jitters_by_the_std():
    rng = np.random.default_rng(0)
    truth = pd.DataFrame(
        {
            "x_px": rng.uniform(0, 100, 4000),
            "y_px": rng.uniform(0, 100, 4000),
            "z_px": rng.uniform(0, 50, 4000),
            "class_id": rng.integers(1, 4, 4000),
            "rot_deg": 0.0,
            "tilt_deg": 0.0,
            "psi_deg": 0.0,
            "row": np.arange(4000),
        }
    )
    noisy = annotation_noise(truth, 0.2, 1.5, np.random.default_rng(1))
    assert len(noisy) == 3200 and noisy["row"].is_monotonic_increasing
    matched = truth.set_index("row").loc[noisy["row"]]
    shifts = noisy[["x_px", "y_px", "z_px"]].to_numpy() - matched[["x_px", "y_px", "z_px"]].to_numpy()
    assert shifts.std(axis=0) == pytest.approx([1.5, 1.5, 1.5], rel=0.05)
    assert np.abs(shifts.mean(axis=0)).max() < 0.1
    np.testing.assert_array_equal(noisy["class_id"], matched["class_id"])
    same = annotation_noise(truth, 0.0, 0.0, 3)
    pd.testing.assert_frame_equal(same, truth)
    with pytest.raises(CryorayInputError, match="missing_fraction"):
        annotation_noise(truth, 1.5, 1.0, 0)


def test_simulation_is_reproducible_from_its_seed(species):
    a = simulate_tomogram(species, SHAPE, 2, seed=[4, 1])
    b = simulate_tomogram(species, SHAPE, 2, seed=[4, 1])
    c = simulate_tomogram(species, SHAPE, 2, seed=[4, 2])
    np.testing.assert_array_equal(a.tomogram, b.tomogram)
    pd.testing.assert_frame_equal(a.particles, b.particles)
    assert not np.array_equal(a.particles[["x_px", "y_px"]].to_numpy(), c.particles[["x_px", "y_px"]].to_numpy())


def test_slab_keeps_particles_within_its_z_range(species):
    tomo = simulate_tomogram(species[:2], SHAPE, 5, seed=2, slab_thickness_px=24, snr_linear=None)
    radii = np.array([_by_class(species)[k].bounding_radius_px for k in tomo.particles["class_id"]])
    z = tomo.particles["z_px"].to_numpy()
    assert (z - radii >= 8).all() and (z + radii <= 31).all()


def test_bad_inputs_name_the_field(species):
    with pytest.raises(CryorayInputError, match="counts"):
        simulate_tomogram(species[:2], (16, 32, 32), 40, seed=0)  # cannot fit
    with pytest.raises(CryorayInputError, match="shape_zyx"):
        simulate_tomogram(species, (16, 64, 64), 1, seed=0)  # the large species is taller than the volume
    with pytest.raises(CryorayInputError, match="counts"):
        simulate_tomogram(species, SHAPE, [1, 2], seed=0)
    with pytest.raises(CryorayInputError, match="snr_linear"):
        simulate_tomogram(species, SHAPE, 1, snr_linear=-1.0)
    with pytest.raises(CryorayInputError, match="tilt_range_deg"):
        simulate_tomogram(species, SHAPE, 1, tilt_range_deg=(60.0, -60.0))
    with pytest.raises(CryorayInputError, match="class ids"):
        simulate_tomogram([species[0], species[0]], SHAPE, 1)
    with pytest.raises(CryorayInputError, match="class_id"):
        sphere_label_map(pd.DataFrame({"x_px": [1.0], "y_px": [1.0], "z_px": [1.0], "class_id": [9]}), species, SHAPE)


def test_species_from_a_map_is_resampled_and_takes_a_mask_in_its_frame(tmp_path, species):
    """A 5 Å map of a built-in shape read at 10 Å: half the size; a mask file in the map's frame is kept."""
    source = species[3]  # large_cluster at "5 Å"
    big = np.zeros((48, 48, 48), dtype=np.float32)
    big[tuple(slice(24 - source.box_px // 2, 24 + source.box_px // 2 + 1) for _ in range(3))] = source.density
    map_path = write_mrc(tmp_path / "shape.mrc", big, 5.0)
    resampled = species_from_map(map_path, 2, 10.0)
    assert resampled.name == "shape" and resampled.class_id == 2
    assert resampled.radius_px == pytest.approx(source.radius_px / 2, rel=0.15)
    mask = np.zeros_like(big)
    mask[18:30, 18:30, 18:30] = 1.0  # a 12³ cube at 5 Å -> 6³ voxels at 10 Å
    mask_path = write_mrc(tmp_path / "mask.mrc.gz", mask, 1.0)
    masked = species_from_map(map_path, 3, 10.0, mask_path=mask_path, mask_voxel_size_angstrom=5.0)
    assert masked.mask_volume_px == 216
    assert "mask" in masked.source
    with pytest.raises(CryorayInputError, match="no such file"):
        species_from_map(tmp_path / "absent.mrc", 1, 10.0)


def test_write_mrc_stores_label_maps_as_integers(tmp_path):
    labels = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    path = write_mrc(tmp_path / "labels.mrc", labels, 10.0, dtype=np.int8)
    with mrcfile.open(path) as mrc:
        assert mrc.header.mode == 0 and mrc.data.dtype == np.int8
    np.testing.assert_array_equal(read_mrc(path).data, labels)
    instances = np.full((2, 2, 2), 30000, dtype=np.int32)
    with mrcfile.open(write_mrc(tmp_path / "instances.mrc", instances, 10.0, dtype=np.int16)) as mrc:
        assert mrc.header.mode == 1 and int(mrc.data.max()) == 30000
    with pytest.raises(CryorayInputError, match="int8"):
        write_mrc(tmp_path / "bad.mrc", instances, 10.0, dtype=np.int8)
    with pytest.raises(CryorayInputError, match="dtype"):
        write_mrc(tmp_path / "bad.mrc", labels, 10.0, dtype=np.int32)


def test_template_model_and_shrec_mask_species_agree(shared_data):
    """The same protein from its 10 Å template and from its atomic model; a SHREC mask kept voxel for voxel."""
    template = species_from_map(shared_data / "polnet" / "templates_10A" / "3qm1.mrc.gz", 1, 10.0)
    model = species_from_atomic_model(shared_data / "polnet" / "pdb" / "3qm1.pdb.gz", 2, 10.0)
    assert template.size_group == "tiny" and template.radius_px >= 2.0
    assert model.radius_px == pytest.approx(template.radius_px, rel=0.3)
    mask_path = shared_data / "deepfinder_shrec19" / "masks" / "4b4t.mrc.gz"
    ribosome = species_from_mask(mask_path, 3, 10.0, mask_voxel_size_angstrom=10.0)
    assert ribosome.mask_volume_px == int((read_mrc(mask_path, voxel_size_angstrom=10.0).data > 0.5).sum())
    assert ribosome.size_group == "large"
