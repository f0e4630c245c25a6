"""Centred Fourier and Hartley transforms and frequency grids.

Every transform here keeps the origin at index ``D // 2`` in both spaces: the input is
``ifftshift``-ed before the FFT and the output ``fftshift``-ed after it. This is right for odd and
even sizes alike (cryoDRGN's ``fftshift`` on the input agrees only for even sizes). The frequency
of index ``i`` is ``(i - D // 2) / D`` cycles per pixel; for even ``D`` index 0 holds the unpaired
Nyquist component ``-1/2``.

The Hartley transform is ``H = Re F - Im F`` of the centred FFT of a real array. It is real, its
inverse is exact for every ``norm``, and with ``norm="ortho"`` it is its own inverse.
"""

from __future__ import annotations

import torch

__all__ = [
    "fft2_centered",
    "ifft2_centered",
    "fft3_centered",
    "ifft3_centered",
    "ht2_centered",
    "iht2_centered",
    "ht3_centered",
    "iht3_centered",
    "hartley_to_fourier",
    "fourier_to_hartley",
    "negate_frequencies",
    "centered_grid",
    "frequency_grid",
    "radial_frequency_grid",
]

_NORMS = ("ortho", "backward", "forward")


def _dims(x: torch.Tensor, ndim: int, name: str) -> tuple[int, ...]:
    if ndim not in (1, 2, 3):
        raise ValueError(f"{name}: ndim must be 1, 2 or 3, got {ndim}")
    if x.ndim < ndim:
        raise ValueError(f"{name}: expected a tensor with at least {ndim} dims, got shape {tuple(x.shape)}")
    return tuple(range(-ndim, 0))


def _check_norm(norm: str, name: str) -> None:
    if norm not in _NORMS:
        raise ValueError(f"{name}: norm must be one of {_NORMS}, got {norm!r}")


def _fftn_centered(x: torch.Tensor, ndim: int, norm: str, name: str) -> torch.Tensor:
    dims = _dims(x, ndim, name)
    _check_norm(norm, name)
    shifted = torch.fft.ifftshift(x, dim=dims)
    return torch.fft.fftshift(torch.fft.fftn(shifted, dim=dims, norm=norm), dim=dims)


def _ifftn_centered(x: torch.Tensor, ndim: int, norm: str, name: str) -> torch.Tensor:
    dims = _dims(x, ndim, name)
    _check_norm(norm, name)
    shifted = torch.fft.ifftshift(x, dim=dims)
    return torch.fft.fftshift(torch.fft.ifftn(shifted, dim=dims, norm=norm), dim=dims)


def fft2_centered(x: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """Centred 2D FFT over the last two dims (origin at D//2 in both spaces)."""
    return _fftn_centered(x, 2, norm, "fft2_centered")


def ifft2_centered(x: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """Inverse of :func:`fft2_centered` (complex output; take ``.real`` for real signals)."""
    return _ifftn_centered(x, 2, norm, "ifft2_centered")


def fft3_centered(x: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """Centred 3D FFT over the last three dims (origin at D//2 in both spaces)."""
    return _fftn_centered(x, 3, norm, "fft3_centered")


def ifft3_centered(x: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """Inverse of :func:`fft3_centered` (complex output; take ``.real`` for real signals)."""
    return _ifftn_centered(x, 3, norm, "ifft3_centered")


def _require_real(x: torch.Tensor, name: str) -> None:
    if x.is_complex():
        raise ValueError(f"{name}: the Hartley transform takes a real tensor, got dtype {x.dtype}")


def _htn_centered(x: torch.Tensor, ndim: int, norm: str, name: str) -> torch.Tensor:
    _require_real(x, name)
    f = _fftn_centered(x, ndim, norm, name)
    return f.real - f.imag


def _ihtn_centered(h: torch.Tensor, ndim: int, norm: str, name: str) -> torch.Tensor:
    # The inverse kernel is cas(+2πkn/N) = Re + Im of the inverse DFT, scaled as `norm` asks.
    _require_real(h, name)
    f = _ifftn_centered(h, ndim, norm, name)
    return f.real + f.imag


def ht2_centered(x: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """Centred 2D Hartley transform (Re − Im of the centred FFT) of a real tensor."""
    return _htn_centered(x, 2, norm, "ht2_centered")


def iht2_centered(h: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """Exact inverse of :func:`ht2_centered` with the same ``norm``."""
    return _ihtn_centered(h, 2, norm, "iht2_centered")


def ht3_centered(x: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """Centred 3D Hartley transform (Re − Im of the centred FFT) of a real tensor."""
    return _htn_centered(x, 3, norm, "ht3_centered")


def iht3_centered(h: torch.Tensor, norm: str = "ortho") -> torch.Tensor:
    """Exact inverse of :func:`ht3_centered` with the same ``norm``."""
    return _ihtn_centered(h, 3, norm, "iht3_centered")


def negate_frequencies(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Return ``y`` with ``y(k) = x(-k)`` on a centred grid over the last ``ndim`` dims.

    Index ``i`` holds ``k = i - D//2``, so ``-k`` sits at ``2*(D//2) - i`` (mod D): a flip for odd
    ``D``, a flip followed by a roll of one for even ``D`` (the Nyquist index 0 maps to itself).
    """
    dims = _dims(x, ndim, "negate_frequencies")
    flipped = torch.flip(x, dims=dims)
    shifts = tuple(1 if x.shape[d] % 2 == 0 else 0 for d in dims)
    return torch.roll(flipped, shifts=shifts, dims=dims)


def hartley_to_fourier(h: torch.Tensor, ndim: int) -> torch.Tensor:
    """Centred Fourier transform from a centred Hartley transform of a real signal.

    ``Re F(k) = (H(k) + H(-k)) / 2`` and ``Im F(k) = (H(-k) - H(k)) / 2`` (Hermitian symmetry).
    """
    _require_real(h, "hartley_to_fourier")
    h_neg = negate_frequencies(h, ndim)
    return torch.complex((h + h_neg) / 2, (h_neg - h) / 2)


def fourier_to_hartley(f: torch.Tensor) -> torch.Tensor:
    """Centred Hartley transform from a centred Fourier transform: ``Re F - Im F``."""
    if not f.is_complex():
        raise ValueError(f"fourier_to_hartley: expected a complex tensor, got dtype {f.dtype}")
    return f.real - f.imag


def centered_grid(
    box: int,
    ndim: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Integer lattice coordinates relative to the centre ``box//2``, shape ``(box,)*ndim + (ndim,)``.

    The last axis holds the components in vector order ``(x, y[, z])`` while the grid is indexed
    ``([z,] y, x)`` like the arrays, so ``grid[..., 0]`` varies along the last array axis. The
    values are exact integers in any floating dtype.
    """
    if isinstance(box, bool) or not isinstance(box, int) or box < 1:
        raise ValueError(f"centered_grid: box must be a positive integer, got {box!r}")
    if ndim not in (1, 2, 3):
        raise ValueError(f"centered_grid: ndim must be 1, 2 or 3, got {ndim}")
    c = torch.arange(box, dtype=dtype, device=device) - box // 2
    axes = torch.meshgrid(*([c] * ndim), indexing="ij")
    return torch.stack(axes[::-1], dim=-1)


def frequency_grid(
    box: int,
    ndim: int,
    pixel_size_angstrom: float | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Centred frequency vectors ``(kx, ky[, kz])``, shape ``(box,)*ndim + (ndim,)``.

    Component order and indexing as :func:`centered_grid`. Units are cycles/pixel, or 1/Å when
    ``pixel_size_angstrom`` is given.
    """
    if pixel_size_angstrom is not None and not pixel_size_angstrom > 0:
        raise ValueError(f"frequency_grid: pixel_size_angstrom must be > 0, got {pixel_size_angstrom}")
    k = centered_grid(box, ndim, dtype=dtype, device=device) / box
    return k / pixel_size_angstrom if pixel_size_angstrom is not None else k


def radial_frequency_grid(
    box: int,
    ndim: int,
    pixel_size_angstrom: float | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Length of the centred frequency vector, shape ``(box,)*ndim``.

    Cycles/pixel without a pixel size (Nyquist = 0.5), 1/Å with one.
    """
    grid = frequency_grid(box, ndim, pixel_size_angstrom, dtype=dtype, device=device)
    return torch.linalg.vector_norm(grid, dim=-1)
