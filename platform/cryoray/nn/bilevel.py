"""One-step unrolled bi-level optimisation with the finite-difference hypergradient (DARTS; RobPicker eqs. 6–13).

The lower level trains weights ``I`` on ``L_tr(I; θ)``, the upper level trains meta-parameters ``θ`` on
``L_val(I*(θ))``. With ``I*`` approximated by one SGD step ``I' = I − η ∇_I L_tr(I; θ)`` (eq. 6),

    ∇_θ L_val(I'(θ)) = −η ∇²_{θ,I} L_tr(I; θ) · v,   v = ∇_{I'} L_val(I')            (eqs. 9–11)
                     ≈ −η [∇_θ L_tr(I + εv; θ) − ∇_θ L_tr(I − εv; θ)] / (2ε)         (eqs. 12–13)

The inner learning rate η is kept (the paper's eq. 10; Betty's DARTS drops it into the meta learning rate).
ε is ``epsilon / ‖v‖`` as in DARTS, so the perturbation has norm ``epsilon`` whatever the scale of ``v``.

Everything is plain ``torch.autograd.grad`` on parameter dicts (``torch.func.functional_call``), so it runs
inside DDP without a second process group: pass ``reduce`` that averages gradient lists over the Ray
Train workers, and each of ∇_I L_tr, v and the hypergradient is the global (all-rank) one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

Params = Mapping[str, torch.Tensor]
GradReducer = Callable[[list[torch.Tensor]], list[torch.Tensor]]


@dataclass
class Hypergradient:
    """The meta-gradients (one per meta-parameter) and what the step saw."""

    grads: list[torch.Tensor]
    lower_loss: float
    upper_loss: float
    perturbation_scale: float  # ε actually used (epsilon / ‖v‖)
    upper_grad_norm: float  # ‖v‖


def _no_reduce(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    return grads


def _grads(loss: torch.Tensor, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, list(inputs), allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def finite_difference_hypergradient(
    lower_loss: Callable[[Params], torch.Tensor],
    upper_loss: Callable[[Params], torch.Tensor],
    inner_params: Params,
    meta_params: Sequence[torch.Tensor],
    inner_lr: float,
    epsilon: float,
    reduce: GradReducer = _no_reduce,
) -> Hypergradient:
    """∇_θ L_val(I − η∇_I L_tr(I; θ)) by central finite differences; ``lower_loss``/``upper_loss`` map I to a loss.

    ``lower_loss`` must depend on ``meta_params`` (it closes over them) and be deterministic (same batch).
    """
    if inner_lr <= 0 or epsilon <= 0:
        raise ValueError(f"hypergradient: inner_lr and epsilon must be > 0, got {inner_lr}, {epsilon}")
    names = list(inner_params)
    weights = [inner_params[n].detach() for n in names]

    at_current = {n: w.requires_grad_() for n, w in zip(names, [w.clone() for w in weights])}
    train_loss = lower_loss(at_current)
    train_grads = reduce(_grads(train_loss, list(at_current.values())))

    unrolled = {n: (w - inner_lr * g).detach().requires_grad_() for n, w, g in zip(names, weights, train_grads)}
    val_loss = upper_loss(unrolled)
    v = reduce(_grads(val_loss, list(unrolled.values())))
    squared_norm = functools.reduce(torch.add, ((g.double() ** 2).sum() for g in v))
    # The step's one host sync: ε = epsilon / ‖v‖ is a number, and the two losses are reported with it.
    lower_value, upper_value, v_norm = torch.stack(
        (train_loss.detach().double(), val_loss.detach().double(), squared_norm.sqrt())
    ).tolist()
    if v_norm == 0.0:
        zeros = [torch.zeros_like(p) for p in meta_params]
        return Hypergradient(zeros, lower_value, upper_value, 0.0, 0.0)
    eps = epsilon / v_norm

    def meta_grads_at(sign: float) -> list[torch.Tensor]:
        shifted = {n: w + sign * eps * g for n, w, g in zip(names, weights, v)}
        return _grads(lower_loss(shifted), meta_params)

    plus, minus = meta_grads_at(1.0), meta_grads_at(-1.0)
    hyper = reduce([-inner_lr * (gp - gm) / (2.0 * eps) for gp, gm in zip(plus, minus)])
    return Hypergradient(hyper, lower_value, upper_value, eps, v_norm)
