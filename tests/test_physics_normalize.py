"""Standardisation: zero mean, unit population std per sample, Pearson correlation as a mean, constant samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryoray.physics import STD_FLOOR, standardize


def test_each_sample_gets_mean_zero_and_unit_std_over_its_last_dims() -> None:
    x = 3.0 + 5.0 * torch.randn(4, 2, 9, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = standardize(x, 2)
    assert torch.allclose(z.mean(dim=(-2, -1)), torch.zeros(4, 2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z.std(dim=(-2, -1), correction=0), torch.ones(4, 2, dtype=torch.float64))
    volume = x[0]
    assert torch.allclose(standardize(volume, 3), (volume - volume.mean()) / volume.std(correction=0))


def test_the_mean_product_is_the_pearson_correlation() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(500, generator=g, dtype=torch.float64)
    b = 0.6 * a + torch.randn(500, generator=g, dtype=torch.float64) + 7
    pearson = np.corrcoef(a.numpy(), b.numpy())[0, 1]
    assert float((standardize(a, 1) * standardize(b, 1)).mean()) == pytest.approx(pearson, rel=1e-12)


def test_a_constant_sample_maps_to_zeros_with_finite_gradients() -> None:
    x = torch.full((2, 8, 8), 4.0, requires_grad=True)
    z = standardize(x, 2)
    assert torch.equal(z, torch.zeros_like(z)) and STD_FLOOR > 0
    z.sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError):
        standardize(x, 4)
