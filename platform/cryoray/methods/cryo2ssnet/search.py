"""Cryo2SSNet's losses and the denoised heuristic beam search (DHBS, the paper's Algorithm 1).

The search refines the encoder's pose on the Hopf grid: start from the ``width`` base-grid (72) points
nearest to it; at each of ``depth`` levels replace every beam member by its 8 children and keep the
``width`` best by the ℓ2 between the (denoised) observed image and the (denoised) rendered projection;
then ``gd_steps`` of gradient descent on the pose. Every candidate of every image of the batch is rendered
in one batched call; the volume's Hartley transform is computed once per search.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cryoray.physics import (
    axis_angle_to_matrix,
    hopf_children,
    hopf_grid_rotations_at,
    nearest_hopf_neighbours,
)

# cost(rotations (B, K, 3, 3)) -> (B, K): lower is better; images and map are fixed inside.
PoseCost = Callable[[torch.Tensor], torch.Tensor]


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


def beam_search(cost: PoseCost, initial: torch.Tensor, width: int, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hopf-grid beam search from ``initial`` (B, 3, 3); returns the best rotations (B, 3, 3) and costs (B,).

    The final beam lies on grid level ``depth`` (spacing ``60°/2**depth``).
    """
    if depth < 1:
        raise ValueError(f"beam_search: depth must be >= 1, got {depth}")
    beam = nearest_hopf_neighbours(initial, 0, k=width)  # (B, width) base-grid indices
    for level in range(depth):
        children = hopf_children(beam, level).reshape(beam.shape[0], -1)  # (B, 8·width) at level + 1
        scores = cost(hopf_grid_rotations_at(children, level + 1, dtype=initial.dtype, device=initial.device))
        keep = torch.topk(scores, width, dim=1, largest=False).indices
        beam, scores = torch.gather(children, 1, keep), torch.gather(scores, 1, keep)
    best = scores.argmin(dim=1, keepdim=True)
    index = torch.gather(beam, 1, best)[:, 0]
    return hopf_grid_rotations_at(index, depth, dtype=initial.dtype, device=initial.device), scores.gather(1, best)[:, 0]


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
