"""Contrast transfer function (weak-phase approximation) on the centred 2D frequency grid.

Sign convention, written once: with ``s`` the spatial frequency in 1/Å, ``λ`` the electron
wavelength, defocus ``Δf(α)`` in Å positive for UNDERfocus, ``α`` the azimuth of ``k`` from the
x axis and ``w`` the amplitude contrast,

    Δf(α) = ½ (Δf_u + Δf_v + (Δf_u − Δf_v) cos 2(α − α_ast))      (α_ast = defocus_angle_deg)
    χ(k)  = π λ Δf(α) s² − (π/2) C_s λ³ s⁴ + φ + arcsin(w)          (φ = phase_shift_deg)
    CTF   = −sin χ · exp(−B s² / 4)

which is exactly cryoDRGN's ``compute_ctf`` (``sqrt(1−w²) sin γ − w cos γ`` with ``γ = −χ +
arcsin w``): the CTF is negative at low frequency (``CTF(0) = −w``), i.e. particles are dark on a
bright background as in raw micrographs. RELION's ``CTF::getCTF`` uses the same χ and astigmatism
but returns ``+sin χ`` (RELION works with contrast-inverted, white particles): multiply by −1 to
get RELION's values.
"""

from __future__ import annotations

import math

import torch

from .fourier import fft2_centered, frequency_grid, ifft2_centered

__all__ = ["electron_wavelength_angstrom", "ctf_2d", "apply_ctf"]

# λ = h / sqrt(2 m e V (1 + e V / (2 m c²))) = _WAVELENGTH_SCALE / sqrt(V (1 + _RELATIVISTIC_PER_VOLT V)),
# with the constants folded in double precision so that the tensor formula is well scaled in float32.
_PLANCK_J_S = 6.62607015e-34
_ELECTRON_MASS_KG = 9.1093837015e-31
_ELEMENTARY_CHARGE_C = 1.602176634e-19
_SPEED_OF_LIGHT_M_S = 299792458.0
_WAVELENGTH_SCALE = _PLANCK_J_S / math.sqrt(2 * _ELECTRON_MASS_KG * _ELEMENTARY_CHARGE_C) * 1e10  # Å·V^½
_RELATIVISTIC_PER_VOLT = _ELEMENTARY_CHARGE_C / (2 * _ELECTRON_MASS_KG * _SPEED_OF_LIGHT_M_S**2)


def electron_wavelength_angstrom(voltage_kv: torch.Tensor | float) -> torch.Tensor:
    """Relativistic electron wavelength in Å (0.025079 Å at 200 kV, 0.019687 Å at 300 kV).

    Python numbers are computed in float64; tensors keep their dtype and stay differentiable.
    """
    if not isinstance(voltage_kv, torch.Tensor):
        voltage_kv = torch.as_tensor(voltage_kv, dtype=torch.float64)
    if bool((voltage_kv <= 0).any()):
        raise ValueError(f"electron_wavelength_angstrom: voltage_kv must be > 0, got {voltage_kv}")
    voltage_v = voltage_kv * 1e3
    return _WAVELENGTH_SCALE / torch.sqrt(voltage_v * (1 + _RELATIVISTIC_PER_VOLT * voltage_v))


def _batch_param(value: torch.Tensor | float, name: str, dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)  # Python numbers go straight to `dtype`
    if t.ndim > 1:
        raise ValueError(f"ctf_2d: {name} must be a scalar or a tensor of shape (B,), got shape {tuple(t.shape)}")
    return t.reshape(-1)


def ctf_2d(
    box: int,
    pixel_size_angstrom: torch.Tensor | float,
    defocus_u_angstrom: torch.Tensor | float,
    defocus_v_angstrom: torch.Tensor | float,
    defocus_angle_deg: torch.Tensor | float,
    voltage_kv: torch.Tensor | float,
    cs_mm: torch.Tensor | float,
    amplitude_contrast: torch.Tensor | float,
    phase_shift_deg: torch.Tensor | float = 0.0,
    bfactor_angstrom2: torch.Tensor | float = 0.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """CTF on the centred ``box × box`` grid, shape (B, box, box); convention in the module docstring.

    Every parameter is a scalar or a (B,) tensor; they broadcast to a common B (1 if all are
    scalars). The frequency of pixel ``(iy, ix)`` is ``((ix, iy) − box//2) / (box · pixel_size)``.
    Differentiable with respect to every tensor parameter.
    """
    if isinstance(box, bool) or not isinstance(box, int) or box < 1:
        raise ValueError(f"ctf_2d: box must be a positive integer, got {box!r}")
    device = torch.device(device) if device is not None else None
    named = {
        "pixel_size_angstrom": pixel_size_angstrom,
        "defocus_u_angstrom": defocus_u_angstrom,
        "defocus_v_angstrom": defocus_v_angstrom,
        "defocus_angle_deg": defocus_angle_deg,
        "voltage_kv": voltage_kv,
        "cs_mm": cs_mm,
        "amplitude_contrast": amplitude_contrast,
        "phase_shift_deg": phase_shift_deg,
        "bfactor_angstrom2": bfactor_angstrom2,
    }
    params = {name: _batch_param(v, name, dtype, device) for name, v in named.items()}
    try:
        batch = torch.broadcast_shapes(*(p.shape for p in params.values()))
    except RuntimeError as err:
        shapes = {name: tuple(p.shape) for name, p in params.items()}
        raise ValueError(f"ctf_2d: parameter batch sizes do not broadcast: {shapes}") from err
    p = {name: t.expand(batch)[:, None, None] for name, t in params.items()}
    if bool((p["pixel_size_angstrom"] <= 0).any()):
        raise ValueError("ctf_2d: pixel_size_angstrom must be > 0")
    w = p["amplitude_contrast"]
    if bool(((w < 0) | (w >= 1)).any()):
        raise ValueError("ctf_2d: amplitude_contrast must lie in [0, 1)")

    k_px = frequency_grid(box, 2, dtype=dtype, device=device)  # cycles/pixel, (kx, ky)
    kx = k_px[..., 0] / p["pixel_size_angstrom"]
    ky = k_px[..., 1] / p["pixel_size_angstrom"]
    s2 = kx * kx + ky * ky
    azimuth = torch.atan2(ky, kx)
    astig = torch.deg2rad(p["defocus_angle_deg"])
    defocus = 0.5 * (
        p["defocus_u_angstrom"]
        + p["defocus_v_angstrom"]
        + (p["defocus_u_angstrom"] - p["defocus_v_angstrom"]) * torch.cos(2 * (azimuth - astig))
    )
    wavelength = electron_wavelength_angstrom(p["voltage_kv"])
    cs_angstrom = p["cs_mm"] * 1e7
    chi = (
        math.pi * wavelength * defocus * s2
        - 0.5 * math.pi * cs_angstrom * wavelength**3 * s2 * s2
        + torch.deg2rad(p["phase_shift_deg"])
        + torch.asin(w)
    )
    return -torch.sin(chi) * torch.exp(-p["bfactor_angstrom2"] * s2 / 4)


def apply_ctf(images: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply the centred 2D FFT of real ``images`` (..., D, D) by ``ctf`` (broadcastable) and return to real space."""
    if images.is_complex():
        raise ValueError("apply_ctf: expected real images, got a complex tensor")
    if images.ndim < 2 or ctf.ndim < 2 or tuple(images.shape[-2:]) != tuple(ctf.shape[-2:]):
        raise ValueError(
            f"apply_ctf: images {tuple(images.shape)} and ctf {tuple(ctf.shape)} must share the last two dims"
        )
    return ifft2_centered(fft2_centered(images) * ctf).real
