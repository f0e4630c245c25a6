"""Per-sample standardisation: zero mean and unit standard deviation over the last ``ndim`` dims."""

from __future__ import annotations

import math

import torch

__all__ = ["STD_FLOOR", "standardization_frame", "standardize"]

# The floor of the standard deviation: a constant sample maps to zeros instead of NaN. It is far below the
# spread of any image or map worth standardising, so it changes nothing else.
STD_FLOOR = 1e-8


def standardization_frame(x: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (mean, max(std, STD_FLOOR)) over the last ``ndim`` dims (population std), kept as dims of
    size 1: what ``standardize`` divides by, for callers that map an output back (``y * std + mean``)."""
    if not 1 <= ndim <= x.ndim:
        raise ValueError(f"standardize: ndim must lie in [1, {x.ndim}] for shape {tuple(x.shape)}, got {ndim}")
    dims = tuple(range(-ndim, 0))
    mean = x.mean(dim=dims, keepdim=True)
    # The norm, unlike sqrt(mean(square)), has a finite gradient at a constant sample.
    std = torch.linalg.vector_norm(x - mean, dim=dims, keepdim=True) / math.sqrt(math.prod(x.shape[-ndim:]))
    return mean, std.clamp_min(STD_FLOOR)


def standardize(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(x − mean) / max(std, STD_FLOOR)`` per sample over the last ``ndim`` dims (population std).

    With the population std, ``(standardize(a) * standardize(b)).mean()`` over those dims is the Pearson
    correlation of ``a`` and ``b``. Leading dims are a batch; differentiable.
    """
    mean, std = standardization_frame(x, ndim)
    return (x - mean) / std
