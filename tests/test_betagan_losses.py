"""The (α,β)-GAN loss: autograd gradients equal the closed-form coefficients; (0,0) is JS-GAN, (1,1) the Brier score."""

from __future__ import annotations

import math

import pytest
import torch
from cryoray.methods.betagan import losses

# Supplement Table 1, negative values included.
TABLE_1 = [(1.0, 1.0), (0.5, 0.5), (-0.5, -0.5), (-1.0, -1.0), (1.0, -1.0), (0.5, -0.5), (0.0, 0.0), (0.1, -0.1)]
DELTA = 1e-4


def _probabilities() -> torch.Tensor:
    return torch.tensor([0.03, 0.2, 0.5, 0.77, 0.96], dtype=torch.float64)


def _logits(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p / (1 - p)).requires_grad_(True)


@pytest.mark.parametrize(("alpha", "beta"), TABLE_1)
def test_discriminator_gradients_equal_the_closed_form_coefficients(alpha, beta):
    p_real, p_fake = _probabilities(), _probabilities().flip(0)
    logits_real, logits_fake = _logits(p_real), _logits(p_fake)
    losses.beta_discriminator_loss(logits_real, logits_fake, alpha, beta, DELTA).backward()
    n = len(p_real)
    # d loss / d D, written out from the scoring rule, times dD/dlogit = D(1 − D), over the batch mean.
    real = -((p_real + DELTA) ** (alpha - 1)) * (1 - p_real) ** beta
    fake = p_fake**alpha * (1 - p_fake + DELTA) ** (beta - 1)
    torch.testing.assert_close(logits_real.grad, real * p_real * (1 - p_real) / n)
    torch.testing.assert_close(logits_fake.grad, fake * p_fake * (1 - p_fake) / n)


@pytest.mark.parametrize(("alpha", "beta"), TABLE_1)
def test_generator_gradient_equals_the_closed_form_coefficient(alpha, beta):
    p = _probabilities()
    logits = _logits(p)
    losses.beta_generator_loss(logits, alpha, beta, DELTA).backward()
    coefficient = -(p**alpha) * (1 - p + DELTA) ** (beta - 1)
    torch.testing.assert_close(logits.grad, coefficient * p * (1 - p) / len(p))


@pytest.mark.parametrize(
    ("alpha", "beta"), [(1.0, 1.0), (0.5, 0.5), (-0.5, -0.5), (0.5, -0.5), (0.0, 0.0), (0.1, -0.1), (2.0, 0.5)]
)
def test_coefficients_are_the_derivatives_of_the_beta_weighted_scoring_rule(alpha, beta):
    """Numerical d/dt of S(t, y) = −∫ Beta-weighted integrals (quadrature) against the coded coefficients (δ = 0)."""
    step = 1e-5
    for t in (0.1, 0.35, 0.6, 0.9):
        p = torch.tensor([t], dtype=torch.float64)
        real, fake_d, fake_g = (c.item() for c in losses.beta_coefficients(p, alpha, beta, delta=0.0))
        d_real = (losses.scoring_rule(t + step, 1, alpha, beta) - losses.scoring_rule(t - step, 1, alpha, beta)) / (2 * step)
        d_fake = (losses.scoring_rule(t + step, 0, alpha, beta) - losses.scoring_rule(t - step, 0, alpha, beta)) / (2 * step)
        assert real == pytest.approx(-d_real, rel=1e-5)  # D minimises −S(t, 1)
        assert fake_d == pytest.approx(-d_fake, rel=1e-5)  # D minimises −S(t, 0)
        assert fake_g == pytest.approx(d_fake, rel=1e-5)  # G minimises S(t, 0)


def test_alpha_beta_zero_zero_is_the_log_score_of_js_gan():
    for t in (0.05, 0.3, 0.8):
        assert losses.scoring_rule(t, 1, 0.0, 0.0) == pytest.approx(math.log(t), rel=1e-7)
        assert losses.scoring_rule(t, 0, 0.0, 0.0) == pytest.approx(math.log(1 - t), rel=1e-7)
    p_real, p_fake = _probabilities(), _probabilities().flip(0)
    beta_real, beta_fake = _logits(p_real), _logits(p_fake)
    losses.beta_discriminator_loss(beta_real, beta_fake, 0.0, 0.0, delta=0.0).backward()
    js_real, js_fake = _logits(p_real), _logits(p_fake)
    losses.js_discriminator_loss(js_real, js_fake).backward()
    torch.testing.assert_close(beta_real.grad, js_real.grad)
    torch.testing.assert_close(beta_fake.grad, js_fake.grad)
    beta_g, js_g = _logits(p_fake), _logits(p_fake)
    losses.beta_generator_loss(beta_g, 0.0, 0.0, delta=0.0).backward()
    losses.js_generator_loss(js_g).backward()
    torch.testing.assert_close(beta_g.grad, js_g.grad)


def test_alpha_beta_one_one_is_the_brier_score():
    for t in (0.05, 0.3, 0.8):
        assert losses.scoring_rule(t, 1, 1.0, 1.0) == pytest.approx(-((1 - t) ** 2) / 2, rel=1e-7)
        assert losses.scoring_rule(t, 0, 1.0, 1.0) == pytest.approx(-(t**2) / 2, rel=1e-7)
    p_real, p_fake = _probabilities(), _probabilities().flip(0)
    beta_real, beta_fake = _logits(p_real), _logits(p_fake)
    losses.beta_discriminator_loss(beta_real, beta_fake, 1.0, 1.0, delta=0.0).backward()
    brier_real, brier_fake = _logits(p_real), _logits(p_fake)
    brier = ((1 - torch.sigmoid(brier_real)) ** 2 / 2).mean() + (torch.sigmoid(brier_fake) ** 2 / 2).mean()
    brier.backward()
    torch.testing.assert_close(beta_real.grad, brier_real.grad)
    torch.testing.assert_close(beta_fake.grad, brier_fake.grad)


def test_scoring_rule_is_minus_infinity_where_the_integral_diverges():
    assert losses.scoring_rule(0.5, 1, 1.0, -1.0) == -math.inf
    assert losses.scoring_rule(0.5, 0, -1.0, -1.0) == -math.inf
    assert math.isfinite(losses.scoring_rule(0.5, 1, -1.0, -0.5))


def test_gradient_penalty_of_a_linear_critic_is_its_norm_minus_one_squared():
    weight = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    x = torch.randn(6, 2, 2, requires_grad=True)
    critic = (x * weight).sum(dim=(-2, -1))
    assert losses.gradient_penalty(critic, x).item() == pytest.approx((5.0 - 1.0) ** 2)
