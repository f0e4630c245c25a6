"""Metrics: FSC (whole and in a region) and resolution, PSNR/SSIM against skimage, pose error after alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cryoray.physics import (
    axis_angle_to_matrix,
    centered_grid,
    fourier_shell_correlation,
    fsc_resolution_angstrom,
    mean_shell_correlation,
    missing_wedge_region,
    psnr,
    random_rotations,
    rotation_error_after_alignment,
    sphere_mask,
    ssim,
)
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

BOX = 32


def _noise(seed: int, shape: tuple[int, ...] = (BOX, BOX, BOX)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _lowpass(vol: torch.Tensor, radius_px: float) -> torch.Tensor:
    r = centered_grid(vol.shape[-1], 3, dtype=torch.float64).norm(dim=-1)
    ft = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(vol)))
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(ft * (r < radius_px)))).real


def test_fsc_of_identical_maps_is_one() -> None:
    vol = _noise(0)
    freq, fsc = fourier_shell_correlation(vol, vol)
    assert freq.shape == fsc.shape == (BOX // 2,)
    assert torch.allclose(freq, torch.arange(BOX // 2, dtype=torch.float64) / BOX)
    assert torch.allclose(fsc, torch.ones_like(fsc))
    _, scaled = fourier_shell_correlation(vol, 3 * vol - 100)  # the opposite mean does not end the curve
    assert torch.allclose(scaled, torch.ones_like(scaled))


def test_fsc_of_independent_noise_is_near_zero() -> None:
    _, fsc = fourier_shell_correlation(_noise(1), _noise(2))
    assert abs(float(fsc[3:].mean())) < 0.1
    assert float(fsc[3:].abs().max()) < 0.35


def test_fsc_matches_an_independent_shell_loop() -> None:
    a, b = _noise(3), _noise(4) + 0.5 * _noise(3)
    fa, fb = (np.fft.fftshift(np.fft.fftn(np.fft.fftshift(v.numpy()))) for v in (a, b))
    x = np.arange(-BOX // 2, BOX // 2)
    zz, yy, xx = np.meshgrid(x, x, x, indexing="ij")
    dist = np.sqrt(xx**2 + yy**2 + zz**2)
    expected = [1.0]
    previous = dist < 0
    for i in range(1, BOX // 2):  # cryoDRGN: shell i is dist < i minus the previous shells
        shell = (dist < i) & ~previous
        num = np.vdot(fb[shell], fa[shell]).real
        expected.append(num / np.sqrt(np.vdot(fa[shell], fa[shell]).real * np.vdot(fb[shell], fb[shell]).real))
        previous = dist < i
    _, fsc = fourier_shell_correlation(a, b)
    assert np.allclose(fsc.numpy()[2:], expected[2:], atol=1e-10)
    assert fsc[0] == 1 and fsc[1] == 1  # entries 0 and 1 are the origin: 1 by convention, not cryoDRGN's ±1


def test_batched_fsc_and_frc() -> None:
    maps = torch.stack((_noise(5), _noise(6)))
    _, batched = fourier_shell_correlation(maps, maps.flip(0))
    _, single = fourier_shell_correlation(maps[0], maps[1])
    assert torch.allclose(batched[0], single) and torch.allclose(batched[1], single)
    img = _noise(7, (4, BOX, BOX))
    freq, frc = fourier_shell_correlation(img, img, ndim=2)
    assert frc.shape == (4, BOX // 2) and torch.allclose(frc, torch.ones_like(frc))
    vol = _noise(8).requires_grad_(True)
    _, f = fourier_shell_correlation(vol, _noise(9))
    f[1:].sum().backward()
    assert torch.isfinite(vol.grad).all()


def test_a_shell_without_data_is_nan_and_ends_the_resolution() -> None:
    a, b = _noise(12), _noise(12) + 0.1 * _noise(13)
    low = sphere_mask(BOX, 6.5, 3, dtype=torch.float64)  # a Fourier region: shells 1..7 (r < 7) meet it, 8.. do not
    freq, fsc = fourier_shell_correlation(a, b, region=low)
    assert float(fsc[:8].min()) > 0.95 and torch.isnan(fsc[8:]).all()  # empty: NaN, neither 0 nor 1
    assert fsc_resolution_angstrom(freq, fsc, 1.0, 0.5) == pytest.approx(BOX / 7)  # no interpolation into a NaN shell
    assert fsc_resolution_angstrom(freq, fsc, 1.0, 0.5, "last_above") == pytest.approx(BOX / 7)
    _, zero = fourier_shell_correlation(torch.zeros(BOX, BOX, BOX, dtype=torch.float64), a)  # 0/0 in every shell
    assert torch.equal(zero[:2], torch.ones(2, dtype=torch.float64)) and torch.isnan(zero[2:]).all()


def test_region_fsc_is_the_whole_fsc_restricted_and_the_origin_follows_the_region() -> None:
    a, b = _noise(13), _noise(14) + _noise(13)
    _, whole = fourier_shell_correlation(a, b)
    _, everywhere = fourier_shell_correlation(a, b, region=torch.ones(BOX, BOX, BOX))
    assert torch.allclose(whole, everywhere, atol=0, rtol=0)  # one binning, one rule for entries 0 and 1
    wedge = missing_wedge_region(BOX)
    _, inside = fourier_shell_correlation(a, b, region=wedge)
    _, measured = fourier_shell_correlation(a, b, region=1 - wedge)
    assert torch.isnan(inside[:2]).all() and torch.isfinite(inside[2:]).all()  # the origin is measured, not in the wedge
    assert torch.equal(measured[:2], torch.ones(2, dtype=torch.float64))
    # a shell's numerator and powers split over the two regions
    f1, f2 = (torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(v))) for v in (a, b))
    r = centered_grid(BOX, 3, dtype=torch.float64).norm(dim=-1)
    shell = (r >= 4) & (r < 5) & (wedge > 0)
    g1, g2 = f1[shell], f2[shell]
    expected = (g1 * g2.conj()).real.sum() / torch.sqrt(g1.abs().square().sum() * g2.abs().square().sum())
    assert float(inside[5]) == pytest.approx(float(expected), rel=1e-10)
    assert float(mean_shell_correlation(inside)) == pytest.approx(float(inside[2:].mean()))
    with pytest.raises(ValueError):
        fourier_shell_correlation(a, b, region=torch.ones(BOX, BOX))
    meta = torch.empty(2, BOX, BOX, BOX, device="meta")  # no values to read back: any host sync would raise
    assert fourier_shell_correlation(meta, meta, region=wedge.to("meta"))[1].shape == (2, BOX // 2)


def test_resolution_of_a_low_passed_map() -> None:
    vol = _noise(10)
    cut = 8  # px radius: 8/32 = 0.25 cycles/px, i.e. 8 Å at 2 Å/px
    blurred = _lowpass(vol, cut) + 1e-3 * _noise(11)  # a little noise keeps the empty shells at ~0, not 0/0
    freq, fsc = fourier_shell_correlation(blurred, vol)
    assert float(fsc[: cut + 1].min()) > 0.99 and float(fsc[cut + 1 :].abs().max()) < 0.1
    first = fsc_resolution_angstrom(freq, fsc, 2.0, threshold=0.5, rule="first_crossing")
    last = fsc_resolution_angstrom(freq, fsc, 2.0, threshold=0.143, rule="last_above")
    assert first == pytest.approx(2.0 * BOX / 8.5, rel=0.01)  # shell 9 (8 <= r < 9) is empty: crossing halfway
    assert last == pytest.approx(8.0)
    assert abs(first - 8.0) < 1.0


def test_resolution_rules_on_a_bumpy_curve() -> None:
    freq = torch.arange(7, dtype=torch.float64) / 14
    fsc = torch.tensor([1.0, 0.9, 0.6, 0.4, 0.55, 0.3, 0.1], dtype=torch.float64)
    assert fsc_resolution_angstrom(freq, fsc, 1.0, 0.5, "first_crossing") == pytest.approx(14 / 2.5)
    assert fsc_resolution_angstrom(freq, fsc, 1.0, 0.5, "last_above") == pytest.approx(14 / 4)
    assert fsc_resolution_angstrom(freq, torch.ones(7), 1.0, 0.5) == pytest.approx(14 / 6)
    assert math.isinf(fsc_resolution_angstrom(freq, torch.tensor([1.0, 0.2, 0, 0, 0, 0, 0]), 1.0, 0.5, "last_above"))
    with pytest.raises(ValueError):
        fsc_resolution_angstrom(freq, fsc, 1.0, 0.5, "max")
    with pytest.raises(ValueError):
        fsc_resolution_angstrom(freq, fsc[:-1], 1.0)


def test_psnr_matches_skimage() -> None:
    ref = torch.rand(48, 48, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    x = ref + 0.05 * _noise(12, (48, 48))
    expected = peak_signal_noise_ratio(ref.numpy(), x.numpy(), data_range=1.0)
    assert float(psnr(x, ref, 1.0)) == pytest.approx(expected, rel=1e-10)
    batch = torch.stack((x, ref + 0.1 * _noise(13, (48, 48))))
    per_image = psnr(batch, ref.expand(2, 48, 48), 1.0, ndim=2)
    assert float(per_image[0]) == pytest.approx(expected, rel=1e-10) and per_image[1] < per_image[0]


@pytest.mark.parametrize("shape", [(40, 48), (24, 24, 24)])
def test_ssim_matches_skimage(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(14)
    ref = torch.rand(shape, generator=gen, dtype=torch.float64).cumsum(0) / shape[0]
    x = ref + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
    expected = structural_similarity(
        x.numpy(), ref.numpy(), data_range=2.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert float(ssim(x, ref, 2.0, ndim=len(shape))) == pytest.approx(expected, abs=1e-10)
    assert float(ssim(ref, ref, 2.0, ndim=len(shape))) == pytest.approx(1.0)


def test_pose_error_is_zero_after_global_rotation_and_hand_flip() -> None:
    gt = random_rotations(300, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    Q = axis_angle_to_matrix(torch.tensor([0.7, -1.2, 2.0], dtype=torch.float64))
    F = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    same_hand = rotation_error_after_alignment(gt @ Q, gt)
    assert same_hand["mean_deg"] < 1e-4 and not same_hand["flipped"]
    assert torch.allclose(same_hand["alignment"], Q.T, atol=1e-8)
    other_hand = rotation_error_after_alignment(F @ gt @ F @ Q, gt)
    assert other_hand["mean_deg"] < 1e-4 and other_hand["flipped"]
    assert torch.allclose(other_hand["aligned"], gt, atol=1e-8)
    no_flip = rotation_error_after_alignment(F @ gt @ F @ Q, gt, flip=False)
    assert no_flip["mean_deg"] > 20


def test_pose_error_equals_the_injected_angle() -> None:
    gen = torch.Generator().manual_seed(16)
    gt = random_rotations(400, generator=gen, dtype=torch.float64)
    axes = torch.nn.functional.normalize(torch.randn(400, 3, generator=gen, dtype=torch.float64), dim=-1)
    Q = axis_angle_to_matrix(torch.tensor([-0.3, 0.4, 1.1], dtype=torch.float64))
    for angle_deg in (2.0, 10.0):
        perturbed = gt @ axis_angle_to_matrix(axes * math.radians(angle_deg)) @ Q
        result = rotation_error_after_alignment(perturbed, gt)
        assert result["mean_deg"] == pytest.approx(angle_deg, abs=0.1 * angle_deg)
        assert result["median_deg"] == pytest.approx(angle_deg, abs=0.1 * angle_deg)
    # 30 % wrong poses: the median alignment ignores them.
    wrong = gt.clone()
    wrong[:120] = random_rotations(120, generator=gen, dtype=torch.float64)
    robust = rotation_error_after_alignment(wrong @ Q, gt)
    assert robust["median_deg"] < 1e-4 and float(robust["errors_deg"][120:].max()) < 1e-4
