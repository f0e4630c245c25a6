"""Hopf-fibration SO(3) grid: sizes, HEALPix pixel centres, covering, refinement."""

from __future__ import annotations

import math

import pytest
import torch
from cryoray.physics import (
    geodesic_distance_deg,
    healpix_pix2ang_nested,
    hopf_children,
    hopf_grid_quaternions,
    hopf_grid_resolution_deg,
    hopf_grid_rotations,
    hopf_grid_size,
    nearest_hopf_neighbours,
    quaternion_distance,
    random_rotations,
)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_grid_sizes_and_distinct_rotations(level: int) -> None:
    q = hopf_grid_quaternions(level, dtype=torch.float64)
    assert q.shape == (72 * 8**level, 4) == (hopf_grid_size(level), 4)
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(q), dtype=torch.float64))
    rows = torch.arange(0, len(q), max(1, len(q) // 500))
    overlap = (q[rows] @ q.T).abs()
    overlap[torch.arange(len(rows)), rows] = 0
    assert overlap.max() < 1 - 1e-6  # no rotation appears twice (q and -q are one rotation)
    assert hopf_grid_rotations(level).shape == (len(q), 3, 3)


def test_healpix_nested_pixel_centres() -> None:
    # Nside = 1: four rings of pixel centres at z = 2/3, 0, -2/3 with longitudes (2j+1)π/4 or jπ/2.
    theta, phi = healpix_pix2ang_nested(1, torch.arange(12))
    polar = math.acos(2 / 3)
    assert torch.allclose(theta, torch.tensor([polar] * 4 + [math.pi / 2] * 4 + [math.pi - polar] * 4, dtype=torch.float64))
    quarter = [math.pi / 4 + j * math.pi / 2 for j in range(4)]
    assert torch.allclose(phi, torch.tensor(quarter + [j * math.pi / 2 for j in range(4)] + quarter, dtype=torch.float64))
    # Values of healpy.pix2ang(nside, ipix, nest=True) for a few pixels.
    theta, phi = healpix_pix2ang_nested(2, torch.tensor([0, 1, 3, 18, 35]))
    assert torch.allclose(
        theta,
        torch.tensor(
            [1.2309594173407747, 0.8410686705679303, 0.4111378623223478, 1.5707963267948966, 1.9106332362490186],
            dtype=torch.float64,
        ),
    )
    assert torch.allclose(
        phi,
        torch.tensor(
            [0.7853981633974483, 1.1780972450961724, 0.7853981633974483, 5.890486225480862, 0.7853981633974483],
            dtype=torch.float64,
        ),
    )
    theta, phi = healpix_pix2ang_nested(4, torch.tensor([7, 11, 15, 64, 66]))
    assert torch.allclose(
        theta,
        torch.tensor(
            [0.6223684885550206, 0.6223684885550206, 0.20448019896853498, 2.0943951023931957, 1.9106332362490186],
            dtype=torch.float64,
        ),
    )
    assert torch.allclose(
        phi,
        torch.tensor([1.3089969389957472, 0.2617993877991494, 0.7853981633974483, 0.0, 6.086835766330223], dtype=torch.float64),
    )


def test_healpix_pixels_are_equal_area_and_nested() -> None:
    theta4, phi4 = healpix_pix2ang_nested(4, torch.arange(192))
    z = torch.cos(theta4)
    assert abs(float(z.mean())) < 1e-12  # symmetric rings, equal areas
    theta8, phi8 = healpix_pix2ang_nested(8, torch.arange(768))
    parent = torch.stack((torch.sin(theta4) * torch.cos(phi4), torch.sin(theta4) * torch.sin(phi4), z), -1)
    child = torch.stack((torch.sin(theta8) * torch.cos(phi8), torch.sin(theta8) * torch.sin(phi8), torch.cos(theta8)), -1)
    nearest = (child @ parent.T).argmax(dim=1)
    assert torch.equal(nearest, torch.arange(768) // 4)  # children of pixel i are 4i .. 4i+3


@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_rotation_has_a_near_grid_point(level: int) -> None:
    R = random_rotations(500, generator=torch.Generator().manual_seed(level), dtype=torch.float64)
    grid = hopf_grid_rotations(level, dtype=torch.float64)
    nearest = nearest_hopf_neighbours(R, level, k=3)
    assert nearest.shape == (500, 3)
    dist = geodesic_distance_deg(R[:, None], grid[nearest])
    assert float(dist[:, 0].max()) < hopf_grid_resolution_deg(level)
    assert bool((dist[:, :-1] <= dist[:, 1:] + 1e-9).all())  # sorted nearest first
    brute = geodesic_distance_deg(R[:50, None], grid[None]).min(dim=1).values
    assert torch.allclose(dist[:50, 0], brute, atol=1e-6)


def test_resolution_halves_per_level() -> None:
    assert [hopf_grid_resolution_deg(level) for level in range(4)] == [60.0, 30.0, 15.0, 7.5]


@pytest.mark.parametrize("level", [0, 1, 2])
def test_children_are_near_their_parent(level: int) -> None:
    parents = torch.arange(hopf_grid_size(level))
    if level == 2:
        parents = parents[::7]
    children = hopf_children(parents, level)
    assert children.shape == (len(parents), 8)
    assert bool((children >= 0).all()) and bool((children < hopf_grid_size(level + 1)).all())
    assert all(len(set(row)) == 8 for row in children.tolist())
    q_parent = hopf_grid_quaternions(level, dtype=torch.float64)[parents]
    q_child = hopf_grid_quaternions(level + 1, dtype=torch.float64)[children]
    dist = quaternion_distance(q_parent[:, None], q_child)
    assert bool((dist[:, :-1] <= dist[:, 1:] + 1e-12).all())
    angle = geodesic_distance_deg(
        hopf_grid_rotations(level, dtype=torch.float64)[parents][:, None],
        hopf_grid_rotations(level + 1, dtype=torch.float64)[children],
    )
    assert float(angle.max()) < 1.25 * hopf_grid_resolution_deg(level)
    assert float(angle.mean()) < hopf_grid_resolution_deg(level + 1)


def test_children_refine_the_nearest_point() -> None:
    # Refining from the nearest level-1 point reaches a level-2 point about as close as the best one.
    R = random_rotations(200, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    coarse = nearest_hopf_neighbours(R, 1, k=1)[:, 0]
    kids = hopf_children(coarse, 1)
    fine = hopf_grid_rotations(2, dtype=torch.float64)
    refined = geodesic_distance_deg(R[:, None], fine[kids]).min(dim=1).values
    assert float(refined.median()) < hopf_grid_resolution_deg(2)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        hopf_grid_quaternions(-1)
    with pytest.raises(ValueError):
        hopf_children(torch.tensor([72]), 0)
    with pytest.raises(ValueError):
        nearest_hopf_neighbours(torch.eye(3)[None], 0, k=0)
    with pytest.raises(ValueError):
        healpix_pix2ang_nested(3, torch.tensor([0]))
