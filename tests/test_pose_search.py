"""The shared pose search: matrix-product costs against brute force, soft assignment, point groups and the pose
error modulo a group."""

from __future__ import annotations

import pytest
import torch
from cryoray.physics import (
    ctf_2d,
    ht2_centered,
    ht3_centered,
    iht2_centered,
    random_rotations,
    rotation_error_after_alignment,
    sample_central_slices,
    slice_volume_fourier,
    standardize,
)
from cryoray.physics.pose_search import (
    FourierDisc,
    PoseSearch,
    annealed_temperature,
    band_limit_px,
    disc_costs,
    soft_assignment,
)
from cryoray.physics.symmetry import symmetry_rotations
from cryoray.simulate.phantom import builtin_phantom

BOX = 24


@pytest.fixture(scope="module")
def setting() -> dict:
    g = torch.Generator().manual_seed(0)
    hartley = ht3_centered(torch.from_numpy(builtin_phantom(BOX)))
    rotations = random_rotations(6, generator=g)
    n = 5
    ctf = ctf_2d(
        BOX,
        4.0,
        defocus_u_angstrom=torch.full((n,), 15000.0) + 3000 * torch.rand(n, generator=g),
        defocus_v_angstrom=torch.full((n,), 14500.0),
        defocus_angle_deg=torch.zeros(n),
        voltage_kv=torch.full((n,), 300.0),
        cs_mm=torch.full((n,), 2.7),
        amplitude_contrast=torch.full((n,), 0.1),
        phase_shift_deg=torch.zeros(n),
    )
    images = standardize(torch.randn(n, BOX, BOX, generator=g), 2)
    return {"hartley": hartley, "rotations": rotations, "ctf": ctf, "images": images}


def test_sampled_disc_equals_the_full_slice(setting: dict) -> None:
    disc = FourierDisc.build(BOX, 9.0)
    full = slice_volume_fourier(setting["hartley"], setting["rotations"])
    assert torch.allclose(
        sample_central_slices(setting["hartley"], setting["rotations"], disc.plane_px), disc.take(full), atol=1e-5
    )


def test_matrix_costs_equal_the_image_l2(setting: dict) -> None:
    """The disc covering every frequency but the origin: 1 − correlation is half the mean squared difference of
    the standardised images, and the "l2" cost is ‖x − c·t‖² itself, whether templates are shared or per image."""
    hartley, rotations, ctf, images = setting["hartley"], setting["rotations"], setting["ctf"], setting["images"]
    disc = FourierDisc.build(BOX, BOX)  # the whole grid except the origin
    templates = disc.take(slice_volume_fourier(hartley, rotations))  # (K, P)
    observed = disc.take(ht2_centered(images))
    correlation = disc_costs(observed, disc.take(ctf), templates, "correlation")
    rendered = iht2_centered(slice_volume_fourier(hartley, rotations)[None] * ctf[:, None])  # (B, K, D, D)
    brute = ((standardize(rendered, 2) - images[:, None]) ** 2).mean(dim=(-2, -1)) / 2
    assert torch.allclose(correlation, brute, atol=1e-4)
    l2 = disc_costs(observed, disc.take(ctf), templates, "l2")
    direct = ((observed[:, None] - disc.take(ctf)[:, None] * templates[None]) ** 2).sum(-1)
    assert torch.allclose(l2, direct, rtol=1e-4, atol=1e-3)
    per_image = disc_costs(observed, disc.take(ctf), templates[None].expand(len(images), -1, -1), "l2")
    assert torch.allclose(per_image, l2, rtol=1e-4, atol=1e-3)


def test_soft_assignment_weights(setting: dict) -> None:
    hartley = setting["hartley"]
    truth = random_rotations(4, generator=torch.Generator().manual_seed(5))
    images = iht2_centered(slice_volume_fourier(hartley, truth))
    disc = FourierDisc.build(BOX, 8.0)
    problem = PoseSearch(hartley, disc, disc.take(ht2_centered(images)), None, "correlation")
    rotations, weights, costs = soft_assignment(problem, 1, 8, 0.05)
    assert rotations.shape == (4, 8, 3, 3) and torch.allclose(weights.sum(1), torch.ones(4))
    assert (costs[:, 1:] >= costs[:, :-1]).all() and (weights[:, 1:] <= weights[:, :-1] + 1e-7).all()
    assert torch.allclose(problem.cost(rotations), costs, atol=1e-5)  # the candidates are the scored ones
    _, cold, _ = soft_assignment(problem, 1, 8, 1e-6)
    assert torch.equal(cold[:, 0], torch.ones(4))  # T → 0: hard assignment
    assert band_limit_px(32, 0.4, 0.5, 0.0) == pytest.approx(6.4) and band_limit_px(32, 0.4, 0.5, 0.5) == 16
    assert annealed_temperature(0.05, 0.002, 0.0) == 0.05 and annealed_temperature(0.05, 0.002, 1.0) == pytest.approx(0.002)


@pytest.mark.parametrize(("name", "order"), [("C1", 1), ("C4", 4), ("D2", 4), ("D7", 14), ("T", 12), ("O", 24), ("I", 60)])
def test_point_groups_are_closed_groups_of_rotations(name: str, order: int) -> None:
    group = symmetry_rotations(name, dtype=torch.float64)
    assert len(group) == order and torch.equal(group[0], torch.eye(3, dtype=torch.float64))
    assert torch.allclose(group @ group.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(group), atol=1e-9)
    assert torch.allclose(torch.linalg.det(group), torch.ones(order, dtype=torch.float64))
    products = (group[:, None] @ group[None]).reshape(-1, 9)
    distance = torch.cdist(products, group.reshape(-1, 9))
    assert float(distance.min(dim=1).values.max()) < 1e-6  # closed under products


def test_symmetry_pattern_refuses_unknown_groups() -> None:
    with pytest.raises(ValueError, match="point group"):
        symmetry_rotations("D1")


def test_pose_error_modulo_the_group() -> None:
    """Poses right, up to a random element of D2 per image and one global rotation: 0° modulo D2, ~120° without."""
    g = torch.Generator().manual_seed(0)
    group = symmetry_rotations("D2")
    truth = random_rotations(400, generator=g)
    global_rotation = random_rotations(1, generator=g)[0]
    element = torch.randint(1, len(group), (400,), generator=g)  # never the identity
    predicted = truth @ group[element] @ global_rotation.T
    assert rotation_error_after_alignment(predicted, truth, symmetry=group)["median_deg"] < 1e-3
    assert rotation_error_after_alignment(predicted, truth)["median_deg"] > 60
