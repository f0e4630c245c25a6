"""CryoGEN-II's training sample and losses: the 20 wedge-changing rotations, the artificial wedge, the
wedge-aware masked reconstruction loss (DeepDeWedge / IsoNet2, the supplement's "[28]") and the adversarial terms.

Masked loss, per sample, with the residual ``r = G(input) − target`` and its centred FFT ``R`` (ortho norm, so
by Parseval ``mean |F⁻¹(M R)|² = mean |M R|²``):

- ``M_target``: where the target has data, the subtomogram's own wedge after its cube rotation;
- ``M_input``: the artificial (canonical, unrotated) wedge applied to the rotated input;
- measured term ``mean |M_target · M_input · R|²``: frequencies present in input and target (denoising part);
- wedge term ``mean |M_target · (1 − M_input) · R|²``: frequencies the target has and the input lacks (the
  missing-wedge inpainting the method exists for); weighted by ``wedge_weight`` (DeepDeWedge default 2).
  Frequencies the target lacks (``1 − M_target``) carry no loss: there is nothing to compare with.

Masks of rotated wedges are exact: a rotated centred Fourier mask of even side D is the rotation of the
odd-grid (D+1) mask about its true centre, cropped back to D (the rotation about the array centre
``(D−1)/2`` that ``rotate_volume_90`` does would shift an even-grid mask by one voxel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cryoray.physics import (
    apply_fourier_mask,
    fft3_centered,
    missing_wedge_mask,
    rotate_volume_90,
)


def rotated_wedge_masks(
    box: int, rotations: torch.Tensor, tilt_range_deg: tuple[float, float], device: torch.device | str | None = None
) -> torch.Tensor:
    """(N, D, D, D) measured-region masks of a tilt-axis-y wedge rotated by each cube rotation, centred grid.

    ``rotations`` are host (CPU) matrices: they steer flips and permutations; the masks are built on ``device``.
    """
    odd = box + 1 - box % 2
    base = missing_wedge_mask(odd, *tilt_range_deg, device=device)
    return torch.stack([rotate_volume_90(base, R)[:box, :box, :box] for R in rotations])


def masked_reconstruction_terms(
    output: torch.Tensor, target: torch.Tensor, target_mask: torch.Tensor, input_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The two terms of the wedge-aware masked loss (means over batch and voxels); see the module doc."""
    power = fft3_centered(output - target).abs().square()
    return {
        "masked_measured": (power * target_mask * input_mask).mean(),
        "masked_wedge": (power * target_mask * (1 - input_mask)).mean(),
    }


def wedge_noise(shape: tuple[int, ...], mask: torch.Tensor) -> torch.Tensor:
    """Gaussian noise through the artificial wedge, rescaled to unit std per sample (IsoNet's noise volumes
    are back-projected over the tilt range, so they carry the wedge too)."""
    noise = apply_fourier_mask(torch.randn(shape, device=mask.device), mask)
    return noise / noise.flatten(1).std(dim=1).clamp_min(1e-8).view(-1, *([1] * (noise.ndim - 1)))


def training_sample(
    subtomograms: torch.Tensor,
    rotations: torch.Tensor,
    rotated_masks: torch.Tensor,
    input_mask: torch.Tensor,
    max_noise: float,
) -> dict[str, torch.Tensor]:
    """One step's sample (IsoNet/CryoGEN-II): per subtomogram one of the 20 rotations, the artificial wedge on
    the input and noise of std ``σ ~ U(0, 1] × max_noise`` (fresh every step; IsoNet instead ramps it up).

    ``rotated_masks[i]`` is the canonical wedge rotated by ``rotations[i]``. Returns input, target,
    target_mask, the chosen rotation indices (on the host, where they steer the rotations) and σ.
    """
    batch = subtomograms.shape[0]
    device = subtomograms.device
    choice = torch.randint(len(rotations), (batch,))  # on the host, where the indices steer the rotations
    picked = choice.tolist()
    target = torch.stack([rotate_volume_90(v, rotations[c]) for v, c in zip(subtomograms, picked)])
    target_mask = torch.stack([rotated_masks[c] for c in picked])  # by Python index: no host-to-device copy
    sigma = (1.0 - torch.rand(batch, device=device)) * max_noise  # (0, 1] × max
    wedged = apply_fourier_mask(target, input_mask)
    if max_noise > 0:
        wedged = wedged + sigma.view(-1, 1, 1, 1) * wedge_noise(tuple(target.shape), input_mask)
    return {"input": wedged, "target": target, "target_mask": target_mask, "rotation_index": choice, "sigma": sigma}


def critic_logits(critic: torch.nn.Module, volumes: torch.Tensor) -> torch.Tensor:
    """One realism logit per volume: the mean of the critic's output map (the supplement's "realism score")."""
    return critic(volumes).flatten(1).mean(dim=1)


def generator_adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN loss of the generator: ``BCE(D(fake), real)``."""
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``½ [BCE(D(real), 1) + BCE(D(fake), 0)]``."""
    return 0.5 * (
        F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
        + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
    )
