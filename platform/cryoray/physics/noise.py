"""Additive white Gaussian noise at a requested signal-to-noise ratio.

SNR is the variance ratio ``var(signal) / var(noise)``, the usual definition in cryo-EM simulation
(``SNR_dB = 10·log10(SNR)``). The signal variance is measured per sample over its last
``sample_ndim`` dims, optionally only inside ``signal_mask`` (e.g. the particle's support).
"""

from __future__ import annotations

import torch

__all__ = ["snr_db_to_linear", "snr_linear_to_db", "add_gaussian_noise"]


def snr_db_to_linear(snr_db: torch.Tensor | float) -> torch.Tensor:
    """``10 ** (snr_db / 10)``."""
    db = snr_db if isinstance(snr_db, torch.Tensor) else torch.as_tensor(snr_db, dtype=torch.float64)
    return 10.0 ** (db / 10)


def snr_linear_to_db(snr_linear: torch.Tensor | float) -> torch.Tensor:
    """``10 · log10(snr_linear)``; ``snr_linear`` must be > 0 (checked for a number; a tensor is not read back,
    and a value <= 0 gives -inf or NaN)."""
    if not isinstance(snr_linear, torch.Tensor) and not snr_linear > 0:
        raise ValueError(f"snr_linear_to_db: snr_linear must be > 0, got {snr_linear}")
    snr = snr_linear if isinstance(snr_linear, torch.Tensor) else torch.as_tensor(snr_linear, dtype=torch.float64)
    return 10 * torch.log10(snr)


def add_gaussian_noise(
    images: torch.Tensor,
    *,
    snr_linear: torch.Tensor | float | None = None,
    snr_db: torch.Tensor | float | None = None,
    generator: torch.Generator | None = None,
    signal_mask: torch.Tensor | None = None,
    sample_ndim: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add N(0, σ²) noise with ``σ² = var(signal) / SNR`` per sample; returns ``(noisy, noise_std)``.

    Exactly one of ``snr_linear`` / ``snr_db`` must be given (scalar or broadcastable to the
    leading dims). ``images``: (..., *sample) with ``sample_ndim`` trailing sample dims (2 for
    images, 3 for volumes). ``signal_mask``: boolean, broadcastable to the sample shape; the
    variance is taken over the masked pixels only. ``noise_std`` has the leading shape. An SNR given as
    a number is checked (> 0); a tensor SNR is the caller's to check, once (it is not read back here).
    """
    if (snr_linear is None) == (snr_db is None):
        raise ValueError("add_gaussian_noise: give exactly one of snr_linear and snr_db")
    if sample_ndim < 1 or images.ndim < sample_ndim:
        raise ValueError(f"add_gaussian_noise: sample_ndim={sample_ndim} does not fit images of shape {tuple(images.shape)}")
    if images.is_complex() or not images.is_floating_point():
        raise ValueError(f"add_gaussian_noise: expected real floating-point images, got {images.dtype}")
    if snr_linear is not None and not isinstance(snr_linear, torch.Tensor) and not snr_linear > 0:
        raise ValueError(f"add_gaussian_noise: the SNR must be > 0, got {snr_linear}")
    if snr_db is not None:
        snr = snr_db_to_linear(snr_db)
    else:
        snr = snr_linear if isinstance(snr_linear, torch.Tensor) else torch.as_tensor(snr_linear, dtype=torch.float64)
    snr = snr.to(device=images.device, dtype=images.dtype)
    dims = tuple(range(-sample_ndim, 0))
    if signal_mask is None:
        signal_var = images.var(dim=dims, unbiased=False)
    else:
        mask = torch.as_tensor(signal_mask).to(torch.bool)
        try:
            mask = torch.broadcast_to(mask, images.shape[-sample_ndim:])
        except RuntimeError as err:
            raise ValueError(
                f"add_gaussian_noise: signal_mask {tuple(mask.shape)} does not broadcast to the sample shape "
                f"{tuple(images.shape[-sample_ndim:])}"
            ) from err
        # Counted where the mask lives (a host mask costs no device sync): too few pixels would give NaN noise.
        if int(mask.sum()) < 2:
            raise ValueError("add_gaussian_noise: signal_mask must select at least 2 pixels")
        mask = mask.to(images.device)
        count = mask.sum()
        weights = mask.to(images.dtype)
        mean = (images * weights).sum(dim=dims, keepdim=True) / count
        signal_var = (((images - mean) ** 2) * weights).sum(dim=dims) / count
    noise_std = torch.sqrt(signal_var / snr)
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    return images + noise * noise_std[(...,) + (None,) * sample_ndim], noise_std
