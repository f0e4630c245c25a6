"""The 3D UNet++ of residual blocks (CryoGEN-II's generator and critic): shapes, normalisation, equivariance."""

from __future__ import annotations

import pytest
import torch
from cryoray.nn.unetpp import ResidualBlock3d, UNetPlusPlus3d, percentile_minmax


@pytest.mark.parametrize("box", [16, 24])
def test_shapes_for_cubes_divisible_by_8(box: int) -> None:
    net = UNetPlusPlus3d([2, 4, 4, 8])
    assert net(torch.randn(2, box, box, box)).shape == (2, box, box, box)
    assert net(torch.randn(2, 1, box, box, box)).shape == (2, 1, box, box, box)
    critic = UNetPlusPlus3d([2, 4, 4, 8], rescale_output=False)
    assert critic(torch.randn(3, box, box, 2 * box)).shape == (3, box, box, 2 * box)


def test_sides_not_divisible_by_8_are_refused() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        UNetPlusPlus3d([2, 4, 4, 8])(torch.randn(1, 12, 16, 16))


def test_paper_widths_give_the_nested_topology() -> None:
    net = UNetPlusPlus3d()  # 32-64-128-256, 4 levels: 10 nested nodes
    assert sorted(net.nodes) == sorted(f"{i}_{j}" for j in range(4) for i in range(4 - j))
    # X[0][3] concatenates X[0][0..2] and the upsampled X[1][2]: 3 x 32 + 64 input channels
    assert net.nodes["0_3"].body[0].in_channels == 3 * 32 + 64
    assert 9e6 < sum(p.numel() for p in net.parameters()) < 11e6  # ≈ 10 M, as the struc2mapGAN analysis
    block = ResidualBlock3d(4, 8)
    assert isinstance(block.skip[0], torch.nn.Conv3d) and block.skip[0].kernel_size == (3, 3, 3)


def test_percentile_minmax_maps_the_4th_and_96th_percentiles_to_0_and_1() -> None:
    x = torch.randn(3, 1, 10, 10, 10) * torch.tensor([1.0, 5.0, 0.1]).view(3, 1, 1, 1, 1) + 7
    y, low, scale = percentile_minmax(x, sample_ndim=4)
    flat = y.flatten(1)
    assert torch.allclose(torch.quantile(flat, 0.04, dim=1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(torch.quantile(flat, 0.96, dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(y * scale + low, x, atol=1e-5)
    constant, _, unit = percentile_minmax(torch.full((1, 4, 4, 4), 3.0))
    assert torch.all(constant == 0) and torch.all(unit == 1)


def test_generator_is_equivariant_to_a_positive_affine_intensity_change() -> None:
    torch.manual_seed(0)
    net = UNetPlusPlus3d([2, 4, 4, 8]).eval()
    x = torch.randn(2, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(3.5 * x - 2.0), 3.5 * net(x) - 2.0, atol=1e-4)
