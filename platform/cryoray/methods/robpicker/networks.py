"""RobPicker's meta networks and its Dice objectives (paper Methods).

Choices where the paper is silent (also logged to MLflow as tags by the method):
- The label-correction head reads the segmentation trunk's last decoder features *detached*: the corrected
  label is a target for the segmentation net, so the lower level must not move the trunk to agree with
  its own target (that would make any label "correct"). The head's own weights ``C`` are meta-parameters.
- The reweighting MLP reads the per-patch loss value *detached* (as Meta-Weight-Net does): the weight
  scales the loss but the lower level cannot lower its loss by changing its weight.
- The 1×1×1 convolutions have no padding (the paper's "padding 1" would grow the map by 2 voxels).
- Dice is computed per patch, per class (background included) and averaged over classes (eq. 15); a
  class absent from both prediction and target counts as perfect (loss 0), so patches without a species
  are not penalised for it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DICE_SMOOTHING = 1e-5


def dice_loss_per_patch(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss (B,) of class probabilities against a (soft) target, both (B, C, D, H, W), mean over C."""
    if probabilities.shape != target.shape:
        raise ValueError(f"dice: prediction {tuple(probabilities.shape)} and target {tuple(target.shape)} differ")
    dims = tuple(range(2, probabilities.ndim))
    overlap = (probabilities * target).sum(dim=dims)
    total = probabilities.sum(dim=dims) + target.sum(dim=dims)
    dice = (2.0 * overlap + DICE_SMOOTHING) / (total + DICE_SMOOTHING)
    return (1.0 - dice).mean(dim=1)


def one_hot_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, D, H, W) integer class map → (B, C, D, H, W) float one-hot."""
    return nn.functional.one_hot(labels.long(), num_classes).movedim(-1, 1).to(torch.float32)


class LabelCorrection(nn.Module):
    """C = α·S + (1−α)·L: S = softmax(1×1×1 conv of the trunk features), α = σ(conv(ReLU(conv([S, L])))).

    With 16 feature maps and 4 classes this is 16·4+4 + 8·4+4 + 4·4+4 = 124 weights; the paper's ~1.3 k
    is the same design at SHREC's 13 classes and wider features.
    """

    def __init__(self, feature_channels: int, num_classes: int, initial_alpha: float = 0.05) -> None:
        super().__init__()
        if not 0 < initial_alpha < 1:
            raise ValueError(f"LabelCorrection: initial_alpha must be in (0, 1), got {initial_alpha}")
        self.segment = nn.Conv3d(feature_channels, num_classes, kernel_size=1)
        self.mix_hidden = nn.Conv3d(2 * num_classes, num_classes, kernel_size=1)
        self.mix_out = nn.Conv3d(num_classes, num_classes, kernel_size=1, bias=True)
        # α starts near ``initial_alpha`` (the output bias is its logit): PyTorch's default init gives α ≈ 0.5, a
        # target half made of the untrained net's near-uniform softmax, which stalls learning (the diagnosis in
        # benchmarks/RESULTS.md: test F1 0.38 vs 0.86 after 150 steps on the smoke set).
        assert self.mix_out.bias is not None
        nn.init.constant_(self.mix_out.bias, math.log(initial_alpha / (1.0 - initial_alpha)))

    def forward(self, features: torch.Tensor, noisy_one_hot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrected soft label (B, C, D, H, W) and the mixing weight α (same shape)."""
        s = torch.softmax(self.segment(features), dim=1)
        alpha = torch.sigmoid(self.mix_out(torch.relu(self.mix_hidden(torch.cat([s, noisy_one_hot], dim=1)))))
        return alpha * s + (1.0 - alpha) * noisy_one_hot, alpha


class LossReweighting(nn.Module):
    """h(ℓ) = σ(W₂ ReLU(W₁ ℓ + b₁) + b₂): MLP 1 → hidden → 1 on each patch's loss value (paper: hidden 500)."""

    def __init__(self, hidden: int = 500) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(losses.reshape(-1, 1))).reshape(losses.shape)


def weighted_dice(
    logits: torch.Tensor,
    noisy_one_hot: torch.Tensor,
    corrector: LabelCorrection | None,
    reweighter: LossReweighting | None,
    features: torch.Tensor,
    losses_for_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The lower-level loss of eq. 1: mean over patches of h(ℓ_i; R) · Dice(f(t_i; I), g(a_i; C)).

    ``features`` (the corrector's input) and the loss values fed to the reweighter are constants for the
    segmentation weights (stop-gradient). The hypergradient evaluates this loss at perturbed weights I ± εv;
    it must then pass the features and losses of the *current* I (``losses_for_weights``), so that its
    finite difference is the derivative of the very gradient the lower level steps with.
    """
    if corrector is None:
        target, alpha = noisy_one_hot, logits.new_zeros(())
    else:
        target, alpha = corrector(features.detach(), noisy_one_hot)
    per_patch = dice_loss_per_patch(torch.softmax(logits, dim=1), target)
    weight_input = per_patch if losses_for_weights is None else losses_for_weights
    weights = torch.ones_like(per_patch) if reweighter is None else reweighter(weight_input.detach())
    return (weights * per_patch).mean(), {"dice": per_patch.mean(), "weight": weights.mean(), "alpha": alpha.mean()}
