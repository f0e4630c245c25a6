"""Sphere (3D) and disc (2D) masks on the centred grid, hard or with a raised-cosine edge.

The centre is index ``D//2`` on every axis, the origin of both the image and the Fourier grid (see the
package docstring), so one mask serves a real-space particle support and a Fourier-space disc alike.
"""

from __future__ import annotations

import math

import torch

from .fourier import centered_grid

__all__ = ["sphere_mask"]


def sphere_mask(
    box_px: int,
    radius_px: float,
    ndim: int = 3,
    *,
    soft_edge_px: float = 0.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Ball (``ndim=3``) or disc (``ndim=2``) of ``radius_px`` around index ``box_px//2``, shape ``(box_px,)*ndim``.

    Hard (``soft_edge_px=0``): 1 where the distance ``r`` to the centre is ``<= radius_px``, else 0 (any dtype,
    bool included). Soft: 1 for ``r <= radius_px``, ``½(1 + cos(π (r − radius_px) / soft_edge_px))`` out to
    ``radius_px + soft_edge_px``, 0 beyond (RELION's soft edge, outside the radius). Distances are exact in
    float64 before the cast, so the mask does not depend on ``dtype``.
    """
    if not radius_px >= 0 or not soft_edge_px >= 0:
        raise ValueError(f"sphere_mask: radius_px and soft_edge_px must be >= 0, got {radius_px} and {soft_edge_px}")
    squared = centered_grid(box_px, ndim, dtype=torch.float64, device=device).square().sum(-1)
    if soft_edge_px == 0:
        return (squared <= radius_px**2).to(dtype)
    excess = (squared.sqrt() - radius_px).clamp(0.0, soft_edge_px)
    return (0.5 + 0.5 * torch.cos(excess * (math.pi / soft_edge_px))).to(dtype)
