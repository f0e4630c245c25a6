"""Adversarial losses of the (α,β)-GAN denoiser: the Beta-weighted proper scoring rule, JS-GAN and WGAN-GP.

The (α,β) scoring rule (Gao, Yao & Zhu; supplement note 1, eq. 4) has the Beta weight ω(c) = c^{α−1}(1−c)^{β−1}:

    S(t, 1) = −∫_t^1 (1−c) ω(c) dc,        S(t, 0) = −∫_0^t c ω(c) dc,

and the discriminator D (a probability) maximises  mean S(D(x_real), 1) + mean S(D(x_fake), 0)  while the generator
minimises  mean S(D(G(y)), 0).  For α ≤ 0 or β ≤ 0 (Table 1 has (−1,−1), (1,−1), ...) these integrals diverge at an
end point, so, as the authors' group codes it, the loss is never evaluated: its derivative with respect to D is
known in closed form and is back-propagated through D,

    ∂/∂t [−S(t, 1)] = −(t+δ)^{α−1} (1−t)^{β}         (discriminator, real images)
    ∂/∂t [−S(t, 0)] = +t^{α} (1−t+δ)^{β−1}           (discriminator, generated images)
    ∂/∂t [ S(t, 0)] = −t^{α} (1−t+δ)^{β−1}           (generator)

with δ a small constant that keeps the coefficients finite at t ∈ {0, 1}. In PyTorch this is the surrogate
``mean(stopgrad(coefficient) · D)``: its gradient with respect to each D is the coefficient (over the batch size),
exactly what ``D.backward(coefficient)`` does. The surrogate's *value* is not the scoring rule; where the rule is
finite, :func:`scoring_rule` evaluates it (used by the tests and for reporting). (0,0) gives the log score of
JS-GAN (S(t,1) = log t, S(t,0) = log(1−t)) and (1,1) the Brier score (−(1−t)²/2, −t²/2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy import integrate


def beta_coefficients(
    probability: torch.Tensor, alpha: float, beta: float, delta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed-form ∂loss/∂D of the (α,β) rule: (discriminator on real, discriminator on fake, generator)."""
    p = probability.detach()
    real = -((p + delta) ** (alpha - 1.0)) * (1.0 - p) ** beta
    fake_discriminator = p**alpha * (1.0 - p + delta) ** (beta - 1.0)
    return real, fake_discriminator, -fake_discriminator


def beta_discriminator_loss(
    logits_real: torch.Tensor, logits_fake: torch.Tensor, alpha: float, beta: float, delta: float
) -> torch.Tensor:
    """Surrogate whose gradient w.r.t. D = sigmoid(logits) is the (α,β) coefficient, batch-averaged."""
    p_real, p_fake = torch.sigmoid(logits_real), torch.sigmoid(logits_fake)
    real, _, _ = beta_coefficients(p_real, alpha, beta, delta)
    _, fake, _ = beta_coefficients(p_fake, alpha, beta, delta)
    return (real * p_real).mean() + (fake * p_fake).mean()


def beta_generator_loss(logits_fake: torch.Tensor, alpha: float, beta: float, delta: float) -> torch.Tensor:
    """Surrogate of the generator's S(D(G(y)), 0) (the minimax form; no "log D trick", as the supplement says)."""
    p_fake = torch.sigmoid(logits_fake)
    _, _, generator = beta_coefficients(p_fake, alpha, beta, delta)
    return (generator * p_fake).mean()


def js_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """JS-GAN: −[log D(x) + log(1 − D(G(y)))] from logits (numerically stable)."""
    return F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real)) + F.binary_cross_entropy_with_logits(
        logits_fake, torch.zeros_like(logits_fake)
    )


def js_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """JS-GAN generator, minimax form: mean log(1 − D(G(y))) = −mean softplus(logit)."""
    return -F.softplus(logits_fake).mean()


def wgan_critic_loss(critic_real: torch.Tensor, critic_fake: torch.Tensor) -> torch.Tensor:
    """WGAN critic: mean f(G(y)) − mean f(x) (the gradient penalty is added separately)."""
    return critic_fake.mean() - critic_real.mean()


def wgan_generator_loss(critic_fake: torch.Tensor) -> torch.Tensor:
    return -critic_fake.mean()


def gradient_penalty(critic_interpolated: torch.Tensor, interpolated: torch.Tensor) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): mean (‖∇_x̂ f(x̂)‖₂ − 1)² on random interpolates x̂ of real and fake."""
    (grad,) = torch.autograd.grad(critic_interpolated.sum(), interpolated, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


def scoring_rule(t: float, label: int, alpha: float, beta: float) -> float:
    """S(t, label) of the (α,β) rule by quadrature (−inf where the integral diverges); a reference, not for training."""
    if label == 1:
        integrand, low, high = (lambda c: c ** (alpha - 1.0) * (1.0 - c) ** beta), t, 1.0
        diverges = beta <= -1.0 or (t == 0.0 and alpha <= 0.0)
    else:
        integrand, low, high = (lambda c: c**alpha * (1.0 - c) ** (beta - 1.0)), 0.0, t
        diverges = alpha <= -1.0 or (t == 1.0 and beta <= 0.0)
    if diverges:
        return -math.inf
    value, _ = integrate.quad(integrand, low, high, limit=200)
    return -value
