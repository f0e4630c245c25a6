"""The single-particle image-formation model, written once for the simulator and every decoder.

image = CTF ⊛ shift(projection(volume, R), −origin), with RELION's origin sign: the particle sits at the
image centre − origin (rlnOriginX/YAngst), so the projection is moved by −origin. Shift and CTF are both
Fourier-space multiplications, so their order does not matter.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from cryoray.physics.ctf import apply_ctf, ctf_2d
from cryoray.physics.projection import project_fourier_slice, shift_images

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
