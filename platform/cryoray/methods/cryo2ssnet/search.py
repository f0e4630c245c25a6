"""Cryo2SSNet's losses and the GD enhancement of its denoised heuristic beam search (DHBS, Algorithm 1).

The beam search itself is the physics package's :func:`~cryoray.physics.pose_search.search_poses`: it scores
candidates as matrix products over a band-limited Fourier disc (the ℓ2 between standardised images), so
one search serves Cryo2SSNet and cryoSPIN. Here: the unbiased loss, the encoder's beam-search loss, and
``gd_steps`` of gradient descent on each searched pose.
"""

from __future__ import annotations

import torch

from cryoray.physics import axis_angle_to_matrix
from cryoray.physics.pose_search import PoseCost


def unbiased_l2(observed: torch.Tensor, simulated: torch.Tensor, snr_linear: float | None) -> torch.Tensor:
    """Per-image ℓ₂^{γ,c}(I, Ĩ) = mean((γI − Ĩ)²) − c with γ = √(1 + 1/s), c = 1/s (the paper's eq. 12).

    For standardised I = (d + e)/std and Ĩ, γI = (d + e)/σ_d, so its expectation over the noise is the ℓ₂
    between the standardised CLEAN image and Ĩ: the loss is unbiased for a known linear SNR ``s``.
    ``snr_linear=None`` (noiseless data) is the plain ℓ₂.
    """
    if snr_linear is None:
        return ((observed - simulated) ** 2).mean(dim=(-2, -1))
    gamma = (1.0 + 1.0 / snr_linear) ** 0.5
    return ((gamma * observed - simulated) ** 2).mean(dim=(-2, -1)) - 1.0 / snr_linear


def quaternion_distance_squared(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """d_quat(R1, R2)² = min(|q1 − q2|, |q1 + q2|)² = 2 − √(1 + tr(R1ᵀ R2)), straight from the matrices.

    (|⟨q1, q2⟩| = cos(θ/2) and tr(R1ᵀR2) = 1 + 2 cos θ.) Written on matrices it needs no
    matrix→quaternion branch, so its gradient is smooth everywhere except at θ = π.
    """
    trace = torch.einsum("...ij,...ij->...", R1, R2)
    return 2.0 - torch.sqrt((1.0 + trace).clamp_min(1e-12))


def refine_poses(
    cost: PoseCost, rotations: torch.Tensor, steps: int, learning_rate: float, optimizer: str = "sgd"
) -> torch.Tensor:
    """``steps`` of gradient descent on a left axis-angle perturbation ω of each pose, R = exp(ω)·R₀.

    The per-image costs are summed, so each image's step is independent of the batch size. Returns the
    refined rotations, detached.
    """
    if steps == 0:
        return rotations
    omega = torch.zeros(rotations.shape[0], 3, dtype=rotations.dtype, device=rotations.device, requires_grad=True)
    optimiser_class = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
    optimiser = optimiser_class([omega], lr=learning_rate)
    with torch.enable_grad():
        for _ in range(steps):
            # autograd.grad touches ω only: the map and the denoiser stay fixed and accumulate nothing.
            (omega.grad,) = torch.autograd.grad(cost((axis_angle_to_matrix(omega) @ rotations)[:, None]).sum(), omega)
            optimiser.step()
    return (axis_angle_to_matrix(omega) @ rotations).detach()
