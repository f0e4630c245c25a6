"""Gaussian noise at a requested SNR (variance ratio)."""

from __future__ import annotations

import pytest
import torch
from cryoray.physics import add_gaussian_noise, snr_db_to_linear, snr_linear_to_db


def _signal() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(8, 128, 128, generator=gen, dtype=torch.float64).cumsum(-1)
        * torch.linspace(0.5, 2.0, 8, dtype=torch.float64)[:, None, None]
    )


def test_db_linear_conversions() -> None:
    assert float(snr_db_to_linear(10.0)) == pytest.approx(10.0)
    assert float(snr_db_to_linear(-10.0)) == pytest.approx(0.1)
    assert float(snr_linear_to_db(0.01)) == pytest.approx(-20.0)
    x = torch.tensor([0.05, 0.5, 3.0], dtype=torch.float64)
    assert torch.allclose(snr_db_to_linear(snr_linear_to_db(x)), x)
    with pytest.raises(ValueError):
        snr_linear_to_db(0.0)


@pytest.mark.parametrize("snr", [0.05, 1.0, 4.0])
def test_measured_snr_matches_request(snr: float) -> None:
    clean = _signal()
    noisy, std = add_gaussian_noise(clean, snr_linear=snr, generator=torch.Generator().manual_seed(1))
    noise = noisy - clean
    measured = clean.var(dim=(-1, -2), unbiased=False) / noise.var(dim=(-1, -2), unbiased=False)
    assert torch.allclose(measured, torch.full_like(measured, snr), rtol=0.03)
    assert torch.allclose(noise.std(dim=(-1, -2)), std, rtol=0.02)
    assert float(noise.mean().abs()) < 0.01 * float(std.mean())


def test_snr_in_db_and_per_sample_snr() -> None:
    clean = _signal()
    noisy_db, std_db = add_gaussian_noise(clean, snr_db=-10.0, generator=torch.Generator().manual_seed(2))
    noisy_lin, std_lin = add_gaussian_noise(clean, snr_linear=0.1, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(noisy_db, noisy_lin) and torch.allclose(std_db, std_lin)
    per_sample = torch.linspace(0.1, 2.0, 8, dtype=torch.float64)
    noisy, _ = add_gaussian_noise(clean, snr_linear=per_sample, generator=torch.Generator().manual_seed(3))
    measured = clean.var(dim=(-1, -2)) / (noisy - clean).var(dim=(-1, -2))
    assert torch.allclose(measured, per_sample, rtol=0.03)


def test_signal_mask_and_volumes() -> None:
    clean = torch.zeros(2, 32, 32, 32, dtype=torch.float64)
    clean[:, 8:24, 8:24, 8:24] = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    mask = torch.zeros(32, 32, 32, dtype=torch.bool)
    mask[8:24, 8:24, 8:24] = True
    noisy, std = add_gaussian_noise(
        clean, snr_linear=2.0, signal_mask=mask, sample_ndim=3, generator=torch.Generator().manual_seed(5)
    )
    inside_var = clean[:, mask].var(dim=-1, unbiased=False)
    assert torch.allclose(std**2, inside_var / 2.0)
    assert torch.allclose((noisy - clean).var(dim=(1, 2, 3)), inside_var / 2.0, rtol=0.03)


def test_exactly_one_snr_and_bad_values() -> None:
    clean = _signal()
    with pytest.raises(ValueError):
        add_gaussian_noise(clean)
    with pytest.raises(ValueError):
        add_gaussian_noise(clean, snr_linear=1.0, snr_db=0.0)
    with pytest.raises(ValueError):
        add_gaussian_noise(clean, snr_linear=-1.0)
    with pytest.raises(ValueError):
        add_gaussian_noise(clean, snr_linear=1.0, signal_mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError):
        add_gaussian_noise(clean.long(), snr_linear=1.0)
