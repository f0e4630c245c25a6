"""Sphere/disc masks: volume and area against πr², 4/3πr³, the centre convention, the soft edge, dtype and device."""

from __future__ import annotations

import math

import pytest
import torch
from cryoray.physics import centered_grid, sphere_mask


@pytest.mark.parametrize("radius_px", [5.0, 8.5, 12.0])
def test_hard_sphere_and_disc_hold_the_analytic_volume(radius_px: float) -> None:
    ball = sphere_mask(32, radius_px, 3)
    assert float(ball.sum()) == pytest.approx(4 / 3 * math.pi * radius_px**3, rel=0.05)
    disc = sphere_mask(32, radius_px, 2)
    assert float(disc.sum()) == pytest.approx(math.pi * radius_px**2, rel=0.05)
    assert set(torch.unique(ball).tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("box", [16, 17])
def test_centre_is_the_fourier_origin_and_the_boundary_is_inside(box: int) -> None:
    disc = sphere_mask(box, 3.0, 2)
    c = box // 2
    assert disc[c, c] == 1 and disc[c, c + 3] == 1 and disc[c, c + 4] == 0 and disc[c - 3, c] == 1
    r = centered_grid(box, 3, dtype=torch.float64).norm(dim=-1)
    assert torch.equal(sphere_mask(box, 4.0, 3, dtype=torch.bool), r <= 4.0)
    assert sphere_mask(box, 0.0, 3).sum() == 1  # the origin alone


def test_soft_edge_is_a_monotone_raised_cosine_in_0_1() -> None:
    box, radius, edge = 40, 8.0, 6.0
    soft = sphere_mask(box, radius, 3, soft_edge_px=edge, dtype=torch.float64)
    assert float(soft.min()) >= 0 and float(soft.max()) <= 1
    r = centered_grid(box, 3, dtype=torch.float64).norm(dim=-1)
    assert torch.all(soft[r <= radius] == 1) and torch.all(soft[r >= radius + edge] == 0)
    order = torch.argsort(r.flatten())
    values = soft.flatten()[order]
    assert torch.all(values[1:] <= values[:-1])  # never rises with the distance
    ring = (r > radius) & (r < radius + edge)
    expected = 0.5 + 0.5 * torch.cos(math.pi * (r[ring] - radius) / edge)
    assert torch.allclose(soft[ring], expected, atol=1e-12)
    half = sphere_mask(box, radius, 2, soft_edge_px=edge, dtype=torch.float64)[box // 2, box // 2 + 11]
    assert float(half) == pytest.approx(0.5)  # halfway through the edge


def test_dtype_and_device_follow_the_request() -> None:
    for dtype in (torch.float32, torch.float64, torch.bool):
        assert sphere_mask(8, 2.0, 3, dtype=dtype).dtype == dtype
    assert sphere_mask(8, 2.0, 3, soft_edge_px=1.0, device="meta").device.type == "meta"
    if torch.cuda.is_available():
        assert sphere_mask(8, 2.0, 2, device="cuda").is_cuda
    with pytest.raises(ValueError):
        sphere_mask(8, -1.0, 3)
