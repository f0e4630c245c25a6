"""CTF: wavelength, analytic zeros, amplitude contrast, phase shift, astigmatism, batching, validation, any grid, application."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cryoray.physics import apply_ctf, compute_ctf, ctf_2d, electron_wavelength_angstrom, fft2_centered, validate_ctf_parameters

BOX = 65  # odd: the grid is symmetric under k -> -k and under transposition
C = BOX // 2


def test_wavelength() -> None:
    assert float(electron_wavelength_angstrom(300.0)) == pytest.approx(0.01969, abs=5e-6)
    assert float(electron_wavelength_angstrom(200.0)) == pytest.approx(0.02508, abs=5e-6)
    kv = torch.tensor([100.0, 200.0, 300.0], dtype=torch.float64)
    relion_formula = 12.2643247 / torch.sqrt(kv * 1e3 * (1 + kv * 1e3 * 0.978466e-6))
    assert torch.allclose(electron_wavelength_angstrom(kv), relion_formula, rtol=2e-5)  # RELION's rounded constants
    with pytest.raises(ValueError):
        electron_wavelength_angstrom(0.0)


def _zero_radius(n: int, defocus_angstrom: float, cs_mm: float, voltage_kv: float) -> float:
    """Smallest s > 0 (1/Å) with χ(s) = nπ for w = 0, no phase shift: a quadratic in s²."""
    lam = float(electron_wavelength_angstrom(voltage_kv))
    cs = cs_mm * 1e7
    a, b = 0.5 * cs * lam**3, lam * defocus_angstrom
    return math.sqrt((b - math.sqrt(b * b - 4 * a * n)) / (2 * a))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_zeros_sit_at_the_analytic_radius(n: int) -> None:
    defocus, cs, kv, m = 15000.0, 2.7, 300.0, 20
    s_n = _zero_radius(n, defocus, cs, kv)
    pixel = m / (BOX * s_n)  # puts the n-th zero exactly on pixel (C, C + m)
    ctf = ctf_2d(BOX, pixel, defocus, defocus, 0.0, kv, cs, 0.0, dtype=torch.float64)[0]
    ring = [ctf[C, C + m], ctf[C + m, C], ctf[C, C - m], ctf[C - m, C]]
    assert max(abs(float(v)) for v in ring) < 1e-9
    assert abs(float(ctf[C, C + m - 1])) > 1e-3 and abs(float(ctf[C, C + m + 1])) > 1e-3
    assert float(ctf[C, C + m - 1]) * float(ctf[C, C + m + 1]) < 0  # a sign change, not a touch


def test_sign_amplitude_contrast_and_phase_shift() -> None:
    base = dict(
        box=BOX,
        pixel_size_angstrom=1.0,
        defocus_u_angstrom=20000.0,
        defocus_v_angstrom=20000.0,
        defocus_angle_deg=0.0,
        voltage_kv=300.0,
        cs_mm=2.7,
        dtype=torch.float64,
    )
    assert float(ctf_2d(**base, amplitude_contrast=0.1)[0, C, C]) == pytest.approx(-0.1)  # CTF(0) = -w
    assert float(ctf_2d(**base, amplitude_contrast=0.0, phase_shift_deg=90.0)[0, C, C]) == pytest.approx(-1.0)
    low = ctf_2d(**base, amplitude_contrast=0.07)[0, C, C + 1]
    assert float(low) < 0  # underfocus: negative (dark-particle) contrast at low frequency


def test_matches_cryodrgn_formula() -> None:
    rng = np.random.default_rng(0)
    batch = 4
    params = dict(
        pixel_size_angstrom=rng.uniform(0.8, 3.0, batch),
        defocus_u_angstrom=rng.uniform(8000, 30000, batch),
        defocus_v_angstrom=rng.uniform(8000, 30000, batch),
        defocus_angle_deg=rng.uniform(-90, 90, batch),
        voltage_kv=np.array([300.0, 200.0, 300.0, 120.0]),
        cs_mm=rng.uniform(0.01, 2.7, batch),
        amplitude_contrast=rng.uniform(0.0, 0.2, batch),
        phase_shift_deg=rng.uniform(0, 120, batch),
        bfactor_angstrom2=rng.uniform(0, 100, batch),
    )
    ours = ctf_2d(BOX, **{k: torch.from_numpy(v) for k, v in params.items()}, dtype=torch.float64).numpy()
    # cryoDRGN's compute_ctf written out: sqrt(1-w²) sin γ - w cos γ, γ = 2π(-Δf λ s²/2 + Cs λ³ s⁴/4) - φ.
    freq = (np.arange(BOX) - C) / BOX
    for b in range(batch):
        p = {k: v[b] for k, v in params.items()}
        ky, kx = np.meshgrid(freq / p["pixel_size_angstrom"], freq / p["pixel_size_angstrom"], indexing="ij")
        lam = float(electron_wavelength_angstrom(float(p["voltage_kv"])))  # tested on its own above
        s2 = kx**2 + ky**2
        df = 0.5 * (
            p["defocus_u_angstrom"]
            + p["defocus_v_angstrom"]
            + (p["defocus_u_angstrom"] - p["defocus_v_angstrom"])
            * np.cos(2 * (np.arctan2(ky, kx) - np.deg2rad(p["defocus_angle_deg"])))
        )
        gamma = 2 * np.pi * (-0.5 * df * lam * s2 + 0.25 * p["cs_mm"] * 1e7 * lam**3 * s2**2) - np.deg2rad(p["phase_shift_deg"])
        w = p["amplitude_contrast"]
        expected = (np.sqrt(1 - w**2) * np.sin(gamma) - w * np.cos(gamma)) * np.exp(-p["bfactor_angstrom2"] / 4 * s2)
        assert np.allclose(ours[b], expected, atol=1e-6)


def test_astigmatism_rotates_with_the_angle() -> None:
    args = dict(
        pixel_size_angstrom=1.5,
        defocus_u_angstrom=25000.0,
        defocus_v_angstrom=15000.0,
        voltage_kv=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.07,
        dtype=torch.float64,
    )
    at0 = ctf_2d(BOX, defocus_angle_deg=0.0, **args)[0]
    at90 = ctf_2d(BOX, defocus_angle_deg=90.0, **args)[0]
    assert torch.allclose(at90, at0.T, atol=1e-12)  # turning the ellipse by 90° swaps x and y
    assert not torch.allclose(at0, at0.T, atol=1e-3)
    at45 = ctf_2d(BOX, defocus_angle_deg=45.0, **args)[0]
    # Along the 45° diagonal the defocus is defocus_u, along -45° it is defocus_v.
    lam = float(electron_wavelength_angstrom(300.0))
    for m in (3, 7, 11):
        s2 = 2 * (m / (BOX * 1.5)) ** 2
        for pixel, defocus in (((C + m, C + m), 25000.0), ((C - m, C + m), 15000.0)):
            chi = math.pi * lam * defocus * s2 - 0.5 * math.pi * 2.7e7 * lam**3 * s2**2 + math.asin(0.07)
            assert float(at45[pixel]) == pytest.approx(-math.sin(chi), abs=1e-9)


def test_batching_gradients_and_errors() -> None:
    defocus = torch.tensor([10000.0, 20000.0, 30000.0], requires_grad=True)
    ctf = ctf_2d(32, 1.2, defocus, defocus, 0.0, 300.0, 2.7, 0.1)
    assert ctf.shape == (3, 32, 32)
    ctf.pow(2).sum().backward()
    assert torch.isfinite(defocus.grad).all() and defocus.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        ctf_2d(32, 1.2, torch.ones(3), torch.ones(2), 0.0, 300.0, 2.7, 0.1)
    with pytest.raises(ValueError):
        ctf_2d(32, 1.0, torch.ones(2, 2), 1e4, 0.0, 300.0, 2.7, 0.1)


def test_physical_parameters_are_validated_once_up_front() -> None:
    validate_ctf_parameters(1.0, torch.tensor([200.0, 300.0]), np.array([0.0, 0.07]))
    for pixel, voltage, contrast in ((0.0, 300.0, 0.1), (1.0, torch.tensor([300.0, -1.0]), 0.1), (1.0, 300.0, 1.0)):
        with pytest.raises(ValueError):
            validate_ctf_parameters(pixel, voltage, contrast)


def test_one_formula_on_any_grid_follows_its_dtype_and_device() -> None:
    k = torch.linspace(0.0, 0.2, 50, dtype=torch.float64)
    params = dict(defocus_u_angstrom=15000.0, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.07)
    radial = compute_ctf(k, **params)
    assert radial.dtype == torch.float64 and radial.shape == k.shape
    # astigmatism with u = v is no astigmatism; float32 grids give float32 CTFs even from float64 parameters
    same = compute_ctf(
        k.float(),
        **params | {"defocus_u_angstrom": torch.tensor(15000.0, dtype=torch.float64)},
        azimuth_rad=torch.zeros(50),
        defocus_v_angstrom=15000.0,
        defocus_angle_deg=30.0,
    )
    assert same.dtype == torch.float32 and torch.allclose(same.double(), radial, atol=1e-5)
    with pytest.raises(ValueError, match="azimuth"):
        compute_ctf(k, **params, defocus_v_angstrom=14000.0)
    # no host sync: meta tensors have no values to read back, so any .item()/bool() would raise
    meta = {"device": "meta"}
    defocus = torch.empty(3, **meta)
    ctf = ctf_2d(16, 1.0, defocus, defocus, torch.empty(3, **meta), torch.empty(3, **meta), 2.7, torch.empty(3, **meta))
    assert ctf.shape == (3, 16, 16) and ctf.device.type == "meta" and ctf.dtype == torch.float32
    assert ctf_2d(16, 1.0, 1e4, 1e4, 0.0, 300.0, 2.7, 0.1).shape == (1, 16, 16)


def test_apply_ctf_multiplies_the_spectrum() -> None:
    ctf = ctf_2d(BOX, 1.0, 12000.0, 14000.0, 30.0, 300.0, 2.7, 0.07, dtype=torch.float64)
    images = torch.randn(2, BOX, BOX, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = apply_ctf(images, ctf)
    assert out.shape == images.shape and not out.is_complex()
    assert torch.allclose(fft2_centered(out), fft2_centered(images) * ctf, atol=1e-10)  # CTF is real and even
    with pytest.raises(ValueError):
        apply_ctf(images, ctf[..., :-1])
