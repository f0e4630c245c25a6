"""The single-particle image-formation model, written once for the simulator and every decoder.

image = CTF ⊛ shift(projection(volume, R), −origin), with RELION's origin sign: the particle sits at the
image centre − origin (rlnOriginX/YAngst), so the projection is moved by −origin. Shift and CTF are both
Fourier-space multiplications, so their order does not matter.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from cryoray.physics.ctf import apply_ctf, ctf_2d
from cryoray.physics.fourier import fft2_centered, ifft3_centered
from cryoray.physics.projection import insert_central_slices, project_fourier_slice, shift_images

# Keyword arguments of ctf_2d that a particle carries (names as in the dataset columns).
CTF_PARAMETERS = (
    "defocus_u_angstrom",
    "defocus_v_angstrom",
    "defocus_angle_deg",
    "voltage_kv",
    "cs_mm",
    "amplitude_contrast",
    "phase_shift_deg",
)


def form_particle_images(
    volume: torch.Tensor,
    rotations: torch.Tensor,
    pixel_size_angstrom: float,
    origin_angstrom: torch.Tensor | None = None,
    ctf_parameters: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(B, D, D) noiseless particle images of ``volume`` (D³) at ``rotations`` (B, 3, 3).

    ``origin_angstrom`` (B, 2) is RELION's (x, y) origin; ``ctf_parameters`` maps the names in
    ``CTF_PARAMETERS`` to (B,) tensors (None: no CTF). Differentiable in the volume and the rotations.
    """
    images = project_fourier_slice(volume, rotations)
    if origin_angstrom is not None:
        images = shift_images(images, -origin_angstrom / pixel_size_angstrom)
    if ctf_parameters is not None:
        parameters = {k: ctf_parameters[k] for k in CTF_PARAMETERS}
        ctf = ctf_2d(images.shape[-1], pixel_size_angstrom, **parameters, dtype=images.dtype, device=images.device)
        images = apply_ctf(images, ctf)
    return images


def reconstruct_fourier_inversion(
    images: torch.Tensor,
    rotations: torch.Tensor,
    pixel_size_angstrom: float,
    origin_angstrom: torch.Tensor | None = None,
    ctf_parameters: Mapping[str, torch.Tensor] | None = None,
    wiener_constant: float = 1.0,
    pad_factor: int = 2,
    batch_size: int = 256,
    image_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """A (D, D, D) map from (B, D, D) images at known poses in one pass: the inverse of :func:`form_particle_images`.

    Direct Fourier inversion with a Wiener filter, ``V̂ = Σ CTF·Ŷ / (Σ CTF² + wiener_constant)``: each image is
    shifted back to the centre, zero-padded to ``pad_factor``·D (finer slice sampling), Fourier transformed, and its
    CTF-weighted slice inserted by the adjoint of the projector's trilinear slicing, its CTF² likewise. The same
    kernel spreads numerator and weights, so their ratio needs no gridding correction. ``wiener_constant`` is in
    units of one image's CTF² at a voxel (≈ 1/SSNR): larger values smooth where few images reach. One pass instead
    of an iterative least-squares fit (2 s against about 25 min for 1 500 images at 64 px on 2 cores); measured:
    correlation 0.9996 with the map from 2 000 noiseless CTF images with shifts at 32 px.
    ``image_weights`` (B,) scale each image's numerator and CTF² terms: an image listed at two poses with weights
    p and 1 − p enters as a soft assignment (expectation–maximisation's M-step for the map).
    """
    if images.ndim != 3 or images.shape[-1] != images.shape[-2] or tuple(rotations.shape) != (len(images), 3, 3):
        raise ValueError(
            f"reconstruct_fourier_inversion: expected images (B, D, D) and rotations (B, 3, 3), got "
            f"{tuple(images.shape)} and {tuple(rotations.shape)}"
        )
    if image_weights is not None and tuple(image_weights.shape) != (len(images),):
        raise ValueError(
            f"reconstruct_fourier_inversion: expected image_weights ({len(images)},), got {tuple(image_weights.shape)}"
        )
    box = images.shape[-1]
    padded_box = pad_factor * box
    before = padded_box // 2 - box // 2
    complex_dtype = torch.complex128 if images.dtype == torch.float64 else torch.complex64
    numerator = torch.zeros((padded_box,) * 3, dtype=complex_dtype, device=images.device)
    weights = torch.zeros((padded_box,) * 3, dtype=images.dtype, device=images.device)
    for start in range(0, images.shape[0], batch_size):
        part = slice(start, start + batch_size)
        chunk = images[part]
        if origin_angstrom is not None:
            chunk = shift_images(chunk, origin_angstrom[part] / pixel_size_angstrom)
        chunk_ft = fft2_centered(F.pad(chunk, (before, padded_box - box - before) * 2), norm="backward")
        if ctf_parameters is None:
            ctf = torch.ones_like(chunk_ft.real)
        else:
            parameters = {k: ctf_parameters[k][part] for k in CTF_PARAMETERS}
            ctf = ctf_2d(padded_box, pixel_size_angstrom, **parameters, dtype=images.dtype, device=images.device)
        weight = 1.0 if image_weights is None else image_weights[part, None, None].to(images.dtype)
        numerator += insert_central_slices(weight * ctf * chunk_ft, rotations[part])
        weights += insert_central_slices(weight * ctf**2, rotations[part])
    volume = ifft3_centered(numerator / (weights + wiener_constant), norm="backward").real
    return volume[before : before + box, before : before + box, before : before + box]
