"""Centred FFT / Hartley transforms: round trips, origin placement, Hartley-Fourier consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryoray.physics import (
    centered_grid,
    fft2_centered,
    fft3_centered,
    fourier_to_hartley,
    frequency_grid,
    hartley_to_fourier,
    ht2_centered,
    ht3_centered,
    ifft2_centered,
    ifft3_centered,
    iht2_centered,
    iht3_centered,
    negate_frequencies,
    radial_frequency_grid,
)


@pytest.mark.parametrize("box", [8, 9])
@pytest.mark.parametrize("norm", ["ortho", "backward", "forward"])
def test_fft_round_trips(box: int, norm: str) -> None:
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(3, box, box, generator=gen, dtype=torch.float64)
    vol = torch.randn(2, box, box, box, generator=gen, dtype=torch.float64)
    assert torch.allclose(ifft2_centered(fft2_centered(img, norm), norm).real, img, atol=1e-12)
    assert torch.allclose(ifft3_centered(fft3_centered(vol, norm), norm).real, vol, atol=1e-12)
    assert torch.allclose(iht2_centered(ht2_centered(img, norm), norm), img, atol=1e-12)
    assert torch.allclose(iht3_centered(ht3_centered(vol, norm), norm), vol, atol=1e-12)


@pytest.mark.parametrize("box", [8, 9])
def test_ortho_hartley_is_its_own_inverse(box: int) -> None:
    img = torch.randn(box, box, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(ht2_centered(ht2_centered(img)), img, atol=1e-12)


@pytest.mark.parametrize("box", [8, 9])
def test_centred_fft_matches_numpy_definition(box: int) -> None:
    img = np.random.default_rng(2).standard_normal((box, box))
    expected = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img))) / box
    assert np.allclose(fft2_centered(torch.from_numpy(img)).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("box", [8, 9])
def test_origin_at_half_box(box: int) -> None:
    delta = torch.zeros(box, box, box, dtype=torch.float64)
    delta[box // 2, box // 2, box // 2] = 1.0
    ft = fft3_centered(delta, norm="backward")
    assert torch.allclose(ft, torch.ones_like(ft))  # a centred delta has a flat, real spectrum
    constant = torch.ones(box, box, dtype=torch.float64)
    ft2 = fft2_centered(constant, norm="backward")
    assert ft2[box // 2, box // 2].real == pytest.approx(box * box)
    ft2[box // 2, box // 2] = 0
    assert ft2.abs().max() < 1e-9  # a constant image has only the DC term, at D//2


def test_plane_wave_lands_on_its_frequency() -> None:
    box = 16
    grid = centered_grid(box, 2, dtype=torch.float64)
    kx, ky = 3, -2
    wave = torch.cos(2 * torch.pi * (kx * grid[..., 0] + ky * grid[..., 1]) / box)
    power = fft2_centered(wave).abs()
    peaks = {tuple(p) for p in torch.nonzero(power > 0.5 * power.max()).tolist()}
    c = box // 2
    assert peaks == {(c + ky, c + kx), (c - ky, c - kx)}  # array index is (y, x)


@pytest.mark.parametrize("box", [8, 9])
def test_hartley_fourier_consistency(box: int) -> None:
    vol = torch.randn(2, box, box, box, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    f = fft3_centered(vol)
    h = ht3_centered(vol)
    assert torch.allclose(fourier_to_hartley(f), h, atol=1e-12)
    assert torch.allclose(hartley_to_fourier(h, 3), f, atol=1e-12)
    img = vol[0, 0]
    assert torch.allclose(hartley_to_fourier(ht2_centered(img), 2), fft2_centered(img), atol=1e-12)


@pytest.mark.parametrize("box", [6, 7])
def test_negate_frequencies(box: int) -> None:
    x = torch.arange(box * box, dtype=torch.float64).reshape(box, box)
    neg = negate_frequencies(x, 2)
    c = box // 2
    for iy in range(box):
        for ix in range(box):
            jy, jx = (2 * c - iy) % box, (2 * c - ix) % box
            assert neg[iy, ix] == x[jy, jx]


def test_frequency_grids() -> None:
    k = frequency_grid(8, 2)
    assert k.shape == (8, 8, 2)
    assert k[4, 4].tolist() == [0.0, 0.0]
    assert k[4, 0, 0] == pytest.approx(-0.5) and k[0, 4, 1] == pytest.approx(-0.5)  # x on the last axis
    r = radial_frequency_grid(8, 3, pixel_size_angstrom=2.0)
    assert r.shape == (8, 8, 8)
    assert r[4, 4, 0] == pytest.approx(0.25)  # Nyquist of a 2 Å pixel: 1/(4 Å)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        fft3_centered(torch.zeros(4, 4))
    with pytest.raises(ValueError):
        fft2_centered(torch.zeros(4, 4), norm="unitary")
    with pytest.raises(ValueError):
        ht2_centered(torch.zeros(4, 4, dtype=torch.complex64))
    with pytest.raises(ValueError):
        fourier_to_hartley(torch.zeros(4, 4))
    with pytest.raises(ValueError):
        frequency_grid(0, 2)
    with pytest.raises(ValueError):
        radial_frequency_grid(8, 2, pixel_size_angstrom=0.0)
