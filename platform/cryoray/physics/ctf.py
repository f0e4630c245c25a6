"""Contrast transfer function (weak-phase approximation), one formula for 2D images and 3D tomograms.

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

import numpy as np
import torch

from .fourier import fft2_centered, frequency_grid, ifft2_centered

__all__ = ["electron_wavelength_angstrom", "validate_ctf_parameters", "compute_ctf", "ctf_2d", "apply_ctf"]

# λ = h / sqrt(2 m e V (1 + e V / (2 m c²))) = _WAVELENGTH_SCALE / sqrt(V (1 + _RELATIVISTIC_PER_VOLT V)),
# with the constants folded in double precision so that the tensor formula is well scaled in float32.
_PLANCK_J_S = 6.62607015e-34
_ELECTRON_MASS_KG = 9.1093837015e-31
_ELEMENTARY_CHARGE_C = 1.602176634e-19
_SPEED_OF_LIGHT_M_S = 299792458.0
_WAVELENGTH_SCALE = _PLANCK_J_S / math.sqrt(2 * _ELECTRON_MASS_KG * _ELEMENTARY_CHARGE_C) * 1e10  # Å·V^½
_RELATIVISTIC_PER_VOLT = _ELEMENTARY_CHARGE_C / (2 * _ELECTRON_MASS_KG * _SPEED_OF_LIGHT_M_S**2)

Parameter = torch.Tensor | float


def electron_wavelength_angstrom(voltage_kv: Parameter) -> Parameter:
    """Relativistic electron wavelength in Å (0.025079 Å at 200 kV, 0.019687 Å at 300 kV).

    A Python number gives a float (checked > 0); a tensor gives a tensor of its dtype and device, differentiable
    and unchecked, so that no host sync runs per batch (check once with :func:`validate_ctf_parameters`).
    """
    if not isinstance(voltage_kv, torch.Tensor) and not voltage_kv > 0:
        raise ValueError(f"electron_wavelength_angstrom: voltage_kv must be > 0, got {voltage_kv}")
    voltage_v = voltage_kv * 1e3
    return _WAVELENGTH_SCALE / (voltage_v * (1 + _RELATIVISTIC_PER_VOLT * voltage_v)) ** 0.5


def validate_ctf_parameters(
    pixel_size_angstrom: torch.Tensor | np.ndarray | float,
    voltage_kv: torch.Tensor | np.ndarray | float,
    amplitude_contrast: torch.Tensor | np.ndarray | float,
) -> None:
    """Raise ValueError unless pixel size and voltage are > 0 and the amplitude contrast lies in [0, 1).

    Call it once where the parameters enter (a STAR file, a simulation's arguments): the CTF functions
    themselves do not check tensors, as a check reads values back from the device on every batch.
    """
    checks = (
        ("pixel_size_angstrom", pixel_size_angstrom, lambda v: v > 0, "> 0"),
        ("voltage_kv", voltage_kv, lambda v: v > 0, "> 0"),
        ("amplitude_contrast", amplitude_contrast, lambda v: (v >= 0) & (v < 1), "in [0, 1)"),
    )
    for name, value, valid, expected in checks:
        values = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
        if not np.all(valid(values)):
            raise ValueError(f"{name} must be {expected}, got {values[~valid(values)].reshape(-1)[:4].tolist()}")


def _like(value: Parameter, grid: torch.Tensor) -> Parameter:
    """Tensors move to the grid's dtype and device; numbers stay Python numbers (no host-to-device copy)."""
    return value.to(dtype=grid.dtype, device=grid.device) if isinstance(value, torch.Tensor) else float(value)


def compute_ctf(
    frequency_per_angstrom: torch.Tensor,
    *,
    defocus_u_angstrom: Parameter,
    voltage_kv: Parameter,
    cs_mm: Parameter,
    amplitude_contrast: Parameter,
    phase_shift_deg: Parameter = 0.0,
    bfactor_angstrom2: Parameter = 0.0,
    azimuth_rad: torch.Tensor | None = None,
    defocus_v_angstrom: Parameter | None = None,
    defocus_angle_deg: Parameter = 0.0,
) -> torch.Tensor:
    """The CTF at spatial frequencies ``|k|`` (1/Å) of any grid: the one χ of images and tomograms alike.

    The caller builds the grid (cryoJAX's design), so a 2D image and a 3D tomogram share this formula;
    convention in the module docstring. Parameters are numbers or tensors that broadcast against
    ``frequency_per_angstrom``; the result has the grid's dtype and device. Without ``azimuth_rad`` (the
    angle of ``k`` from the x axis) the defocus is ``defocus_u_angstrom`` everywhere; astigmatism
    (``defocus_v_angstrom``) needs it. No value checks here (see :func:`validate_ctf_parameters`).
    """
    grid = frequency_per_angstrom
    defocus = _like(defocus_u_angstrom, grid)
    if defocus_v_angstrom is not None:
        if azimuth_rad is None:
            raise ValueError("compute_ctf: astigmatism (defocus_v_angstrom) needs azimuth_rad")
        defocus_v = _like(defocus_v_angstrom, grid)
        astigmatism_angle_rad = _like(defocus_angle_deg, grid) * (math.pi / 180)
        defocus = 0.5 * (defocus + defocus_v + (defocus - defocus_v) * torch.cos(2 * (azimuth_rad - astigmatism_angle_rad)))
    wavelength = electron_wavelength_angstrom(_like(voltage_kv, grid))
    contrast = _like(amplitude_contrast, grid)
    amplitude_phase = torch.asin(contrast) if isinstance(contrast, torch.Tensor) else math.asin(contrast)
    s2 = grid * grid
    chi = (
        math.pi * wavelength * defocus * s2
        - 0.5 * math.pi * _like(cs_mm, grid) * 1e7 * wavelength**3 * s2 * s2
        + _like(phase_shift_deg, grid) * (math.pi / 180)
        + amplitude_phase
    )
    return -torch.sin(chi) * torch.exp(-_like(bfactor_angstrom2, grid) * s2 / 4)


def _batch_param(value: Parameter, name: str, dtype: torch.dtype, device: torch.device | None) -> Parameter:
    """A (B, 1, 1) tensor on the grid's dtype and device, or the Python number itself."""
    if not isinstance(value, torch.Tensor):
        return float(value)
    if value.ndim > 1:
        raise ValueError(f"ctf_2d: {name} must be a scalar or a tensor of shape (B,), got shape {tuple(value.shape)}")
    return value.to(dtype=dtype, device=device).reshape(-1, 1, 1)


def ctf_2d(
    box: int,
    pixel_size_angstrom: Parameter,
    defocus_u_angstrom: Parameter,
    defocus_v_angstrom: Parameter,
    defocus_angle_deg: Parameter,
    voltage_kv: Parameter,
    cs_mm: Parameter,
    amplitude_contrast: Parameter,
    phase_shift_deg: Parameter = 0.0,
    bfactor_angstrom2: Parameter = 0.0,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """:func:`compute_ctf` on the centred ``box × box`` image grid, shape (B, box, box).

    Every parameter is a scalar or a (B,) tensor; they broadcast to a common B (1 if all are scalars).
    The frequency of pixel ``(iy, ix)`` is ``((ix, iy) − box//2) / (box · pixel_size)``. The grid takes
    ``dtype``/``device``, by default those of the first tensor parameter (else float32 on the CPU).
    Differentiable with respect to every tensor parameter.
    """
    if isinstance(box, bool) or not isinstance(box, int) or box < 1:
        raise ValueError(f"ctf_2d: box must be a positive integer, got {box!r}")
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
    first = next((v for v in named.values() if isinstance(v, torch.Tensor)), None)
    dtype = dtype or (first.dtype if first is not None and first.is_floating_point() else torch.float32)
    device = torch.device(device) if device is not None else (first.device if first is not None else None)
    params = {name: _batch_param(v, name, dtype, device) for name, v in named.items()}
    try:
        batch = torch.broadcast_shapes(*(p.shape for p in params.values() if isinstance(p, torch.Tensor)), (1, 1, 1))
    except RuntimeError as err:
        shapes = {name: tuple(p.shape[:1]) for name, p in params.items() if isinstance(p, torch.Tensor)}
        raise ValueError(f"ctf_2d: parameter batch sizes do not broadcast: {shapes}") from err
    k_px = frequency_grid(box, 2, dtype=dtype, device=device)  # cycles/pixel, (kx, ky)
    pixel = params.pop("pixel_size_angstrom")
    ctf = compute_ctf(
        torch.linalg.vector_norm(k_px, dim=-1) / pixel,
        azimuth_rad=torch.atan2(k_px[..., 1], k_px[..., 0]),  # the pixel size scales both components alike
        **params,
    )
    return ctf.expand(batch[0], box, box)


def apply_ctf(images: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply the centred 2D FFT of real ``images`` (..., D, D) by ``ctf`` (broadcastable) and return to real space."""
    if images.is_complex():
        raise ValueError("apply_ctf: expected real images, got a complex tensor")
    if images.ndim < 2 or ctf.ndim < 2 or tuple(images.shape[-2:]) != tuple(ctf.shape[-2:]):
        raise ValueError(f"apply_ctf: images {tuple(images.shape)} and ctf {tuple(ctf.shape)} must share the last two dims")
    return ifft2_centered(fft2_centered(images) * ctf).real
