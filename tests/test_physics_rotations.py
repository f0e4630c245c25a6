"""Rotation representations against independent constructions and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cryoray.physics import (
    axis_angle_to_matrix,
    euler_relion_to_matrix,
    geodesic_distance_deg,
    matrix_to_axis_angle,
    matrix_to_euler_relion,
    matrix_to_quaternion,
    matrix_to_s2s2,
    quaternion_distance,
    quaternion_to_matrix,
    random_quaternions,
    random_rotations,
    s2s2_to_matrix,
)
from scipy.spatial.transform import Rotation


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rz(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _ry(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _is_rotation(R: torch.Tensor, atol: float = 1e-5) -> bool:
    eye = torch.eye(3, dtype=R.dtype).expand(R.shape)
    return torch.allclose(R @ R.transpose(-1, -2), eye, atol=atol) and torch.allclose(
        torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=R.dtype), atol=atol
    )


def test_quaternion_matches_scipy_and_round_trips() -> None:
    q = random_quaternions(200, generator=_gen(0), dtype=torch.float64)
    assert bool((q[:, 0] >= 0).all())
    R = quaternion_to_matrix(q)
    scipy_R = Rotation.from_quat(q[:, [1, 2, 3, 0]].numpy()).as_matrix()  # scipy is scalar-last
    assert np.allclose(R.numpy(), scipy_R, atol=1e-12)
    assert torch.allclose(matrix_to_quaternion(R), q, atol=1e-10)
    assert torch.allclose(quaternion_to_matrix(-q), R, atol=1e-12)


def test_matrix_to_quaternion_near_180_degrees() -> None:
    axes = torch.nn.functional.normalize(torch.randn(50, 3, generator=_gen(1), dtype=torch.float64), dim=-1)
    R = axis_angle_to_matrix(axes * (math.pi - 1e-9))
    back = quaternion_to_matrix(matrix_to_quaternion(R))
    assert torch.allclose(back, R, atol=1e-8)


def test_quaternion_hamilton_product_composes_like_matrices() -> None:
    q1, q2 = random_quaternions(2, generator=_gen(2), dtype=torch.float64)
    w1, v1 = q1[0], q1[1:]
    w2, v2 = q2[0], q2[1:]
    product = torch.cat(((w1 * w2 - v1 @ v2)[None], w1 * v2 + w2 * v1 + torch.linalg.cross(v1, v2)))
    assert torch.allclose(quaternion_to_matrix(product), quaternion_to_matrix(q1) @ quaternion_to_matrix(q2), atol=1e-12)


def test_euler_relion_matches_elementary_composition_and_scipy() -> None:
    rng = np.random.default_rng(3)
    angles = np.stack((rng.uniform(-180, 180, 100), rng.uniform(0, 180, 100), rng.uniform(-180, 180, 100)), -1)
    R = euler_relion_to_matrix(*torch.from_numpy(angles).unbind(-1)).numpy()
    for (rot, tilt, psi), A in zip(angles, R):
        assert np.allclose(A, (_rz(rot) @ _ry(tilt) @ _rz(psi)).T, atol=1e-12)
    scipy_R = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix()  # intrinsic Rz(rot)Ry(tilt)Rz(psi)
    assert np.allclose(R, scipy_R.transpose(0, 2, 1), atol=1e-12)


def test_euler_relion_known_values() -> None:
    # RELION's Euler_angles2matrix written out for rot=90, tilt=0, psi=0 and for tilt=90 alone.
    assert torch.allclose(euler_relion_to_matrix(90.0, 0.0, 0.0), torch.tensor([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]]), atol=1e-6)
    assert torch.allclose(euler_relion_to_matrix(0.0, 90.0, 0.0), torch.tensor([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]]), atol=1e-6)


def test_euler_round_trip_including_gimbal_lock() -> None:
    R = random_rotations(300, generator=_gen(4), dtype=torch.float64)
    back = euler_relion_to_matrix(*matrix_to_euler_relion(R))
    assert torch.allclose(back, R, atol=1e-9)
    rot, tilt, psi = matrix_to_euler_relion(R)
    assert bool(((tilt >= 0) & (tilt <= 180)).all())
    locked = euler_relion_to_matrix(
        torch.tensor([30.0, -50.0], dtype=torch.float64),
        torch.tensor([0.0, 180.0], dtype=torch.float64),
        torch.tensor([20.0, 10.0], dtype=torch.float64),
    )
    assert torch.allclose(euler_relion_to_matrix(*matrix_to_euler_relion(locked)), locked, atol=1e-9)


def test_axis_angle_round_trip_and_scipy() -> None:
    R = random_rotations(200, generator=_gen(5), dtype=torch.float64)
    omega = matrix_to_axis_angle(R)
    assert bool((omega.norm(dim=-1) <= math.pi + 1e-9).all())
    assert np.allclose(omega.numpy(), Rotation.from_matrix(R.numpy()).as_rotvec(), atol=1e-9)
    assert torch.allclose(axis_angle_to_matrix(omega), R, atol=1e-10)
    small = torch.tensor([[1e-5, -2e-5, 3e-6], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert np.allclose(axis_angle_to_matrix(small).numpy(), Rotation.from_rotvec(small.numpy()).as_matrix(), atol=1e-15)
    assert torch.allclose(matrix_to_axis_angle(axis_angle_to_matrix(small)), small, atol=1e-12)


def test_axis_angle_gradient_finite_at_zero() -> None:
    omega = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 3, generator=_gen(6), dtype=torch.float64)
    (axis_angle_to_matrix(omega) * target).sum().backward()
    assert torch.isfinite(omega.grad).all()
    expected = torch.tensor(  # d/dω <I + hat(ω), T> = (T32 - T23, T13 - T31, T21 - T12)
        [target[2, 1] - target[1, 2], target[0, 2] - target[2, 0], target[1, 0] - target[0, 1]], dtype=torch.float64
    )
    assert torch.allclose(omega.grad, expected, atol=1e-12)
    assert torch.autograd.gradcheck(
        axis_angle_to_matrix, (torch.tensor([1e-4, 2e-4, -1e-4], dtype=torch.float64, requires_grad=True),)
    )
    assert torch.autograd.gradcheck(
        axis_angle_to_matrix, (torch.tensor([0.3, -1.0, 0.7], dtype=torch.float64, requires_grad=True),)
    )


def test_s2s2_gram_schmidt_rows() -> None:
    x6 = torch.randn(100, 6, generator=_gen(7), dtype=torch.float64)
    R = s2s2_to_matrix(x6)
    assert _is_rotation(R, atol=1e-12)
    assert torch.allclose(R[:, 0], torch.nn.functional.normalize(x6[:, :3], dim=-1))  # first ROW = a1/|a1|
    assert torch.allclose(s2s2_to_matrix(matrix_to_s2s2(R)), R, atol=1e-12)


def test_random_rotations_are_uniform() -> None:
    R = random_rotations(20000, generator=_gen(8), dtype=torch.float64)
    assert _is_rotation(R)
    assert R.mean(0).abs().max() < 0.02  # E[R] = 0 under the Haar measure
    # The rotation angle θ has density (1 - cos θ)/π on [0, π]: check its CDF at a few points.
    theta = torch.deg2rad(geodesic_distance_deg(torch.eye(3, dtype=torch.float64), R))
    for t in (0.5, 1.0, 2.0, 2.8):
        expected = (t - math.sin(t)) / math.pi
        assert float((theta <= t).double().mean()) == pytest.approx(expected, abs=0.015)


def test_geodesic_and_quaternion_distance() -> None:
    axes = torch.nn.functional.normalize(torch.randn(20, 3, generator=_gen(9), dtype=torch.float64), dim=-1)
    angles = torch.linspace(0.0, math.pi, 20, dtype=torch.float64)
    R0 = random_rotations(20, generator=_gen(10), dtype=torch.float64)
    R1 = R0 @ axis_angle_to_matrix(axes * angles[:, None])
    assert torch.allclose(geodesic_distance_deg(R0, R1), torch.rad2deg(angles), atol=1e-6)
    q0, q1 = matrix_to_quaternion(R0), matrix_to_quaternion(R1)
    # |q0 ± q1| = 2 sin(θ/4) for the nearer sign.
    assert torch.allclose(quaternion_distance(q0, q1), 2 * torch.sin(angles / 4), atol=1e-9)
    assert torch.allclose(quaternion_distance(q0, -q1), quaternion_distance(q0, q1))


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError):
        quaternion_to_matrix(torch.zeros(3))
    with pytest.raises(ValueError):
        matrix_to_quaternion(torch.zeros(3, 4))
    with pytest.raises(ValueError):
        s2s2_to_matrix(torch.zeros(2, 5))
    with pytest.raises(ValueError):
        axis_angle_to_matrix(torch.zeros(4))
    with pytest.raises(ValueError):
        random_rotations(-1)
