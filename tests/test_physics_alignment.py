"""Map alignment recovers a known rotation, shift and hand; rotate_volume agrees with the projector's convention."""

from __future__ import annotations

import pytest
import torch
from cryoray.physics import geodesic_distance_deg, project_real_space, random_rotations
from cryoray.physics.alignment import align_maps, mirror_volume, rotate_volume
from cryoray.simulate.phantom import builtin_phantom


@pytest.fixture(scope="module")
def phantom() -> torch.Tensor:
    return torch.from_numpy(builtin_phantom(32))


def test_rotate_volume_matches_the_pose_convention(phantom: torch.Tensor) -> None:
    # Projecting V(Rᵀ r) along z is the image of V at pose R.
    R = random_rotations(1, generator=torch.Generator().manual_seed(3))[0]
    rotated = rotate_volume(phantom, R)
    assert torch.allclose(rotated.sum(0), project_real_space(phantom, R), atol=1e-4)
    assert torch.allclose(rotate_volume(phantom, torch.eye(3)), phantom, atol=1e-6)


def test_integer_shift_moves_content_towards_plus_x(phantom: torch.Tensor) -> None:
    shifted = rotate_volume(phantom, torch.eye(3), torch.tensor([2.0, 0.0, 0.0]))
    assert torch.allclose(shifted[:, :, 2:], phantom[:, :, :-2], atol=1e-6)


def test_mirror_is_an_involution_about_the_centre_voxel(phantom: torch.Tensor) -> None:
    mirrored = mirror_volume(phantom)
    assert torch.equal(mirror_volume(mirrored), phantom)
    centre = phantom.shape[0] // 2
    assert torch.equal(mirrored[centre], phantom[centre])  # the z = 0 plane stays
    assert torch.equal(mirrored[centre + 3], phantom[centre - 3])


@pytest.mark.parametrize("mirrored", [False, True])
def test_align_maps_recovers_rotation_shift_and_hand(phantom: torch.Tensor, mirrored: bool) -> None:
    A = random_rotations(1, generator=torch.Generator().manual_seed(11))[0]
    t = torch.tensor([1.5, -2.0, 0.7])
    moving = rotate_volume(phantom, A.T, -(A.T @ t))  # moving(r) = phantom(A r + t): aligning must undo it
    if mirrored:
        moving = mirror_volume(moving)
    alignment = align_maps(moving, phantom)
    assert alignment.flipped == mirrored
    assert float(geodesic_distance_deg(alignment.rotation, A)) < 1.0  # the coarse grid alone is 15° apart
    assert torch.allclose(alignment.shift_px, t, atol=0.1)
    assert alignment.correlation > 0.99


def test_align_maps_rejects_maps_of_different_shapes(phantom: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="equal shape"):
        align_maps(phantom, phantom[:-1, :-1, :-1])
