"""Pose search against a known map on the Hopf grid, with costs written as matrix products.

Every candidate is scored over a band-limited Fourier disc of P pixels (Hartley coefficients of the image,
which carry the same ℓ2 as the Fourier ones: the transform is orthonormal). With observed coefficients x
(B, P), per-image CTF c (B, P) and templates t (K, P), both costs need two matrix products, not B·K renders:

* ``"l2"``:          ‖x − c·t‖² = ‖x‖² − 2 (x∘c)·t + (c²)·(t²)
* ``"correlation"``: 1 − (x∘c)·t / (‖x‖ ‖c∘t‖) with ‖c∘t‖² = (c²)·(t²): the ℓ2 between images that are
  standardised per image (mean 0 — the disc omits the origin — and unit norm), up to a factor 2.

Soft assignment (:func:`soft_assignment`) keeps the ``k`` best poses of a grid level with weights
``softmax(−cost / temperature)``: a map learnt from these weighted poses averages over the images' pose
uncertainty instead of locking in its first guess, the marginalisation that lets stochastic ab-initio
escape a random start (hard assignment from a random map settles in a wrong, self-consistent map).

The search: the best ``width`` poses of a whole grid level (a global search), or the ``width`` base-grid
points nearest to a first guess (Cryo2SSNet's DHBS start), then one Hopf level at a time the 8 children of
each beam member, the best ``width`` kept. Templates of a global level are rendered in chunks once per
search and shared by the batch; the children are rendered per image.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from .fourier import centered_grid
from .hopf import _hopf_children, hopf_grid_rotations, hopf_grid_rotations_at, hopf_grid_size, nearest_hopf_neighbours
from .projection import sample_central_slices

__all__ = ["FourierDisc", "PoseSearch", "annealed_temperature", "band_limit_px", "disc_costs", "search_poses", "soft_assignment"]

CostKind = Literal["l2", "correlation"]


@dataclass(frozen=True)
class FourierDisc:
    """The Fourier pixels ``0 < |k| ≤ radius_px`` (origin kept with ``with_origin``) of a centred D×D image."""

    flat_index: torch.Tensor  # (P,) into the flattened D×D image
    plane_px: torch.Tensor  # (P, 2) lab (kx, ky) in Fourier pixels

    @classmethod
    def build(
        cls,
        box_px: int,
        radius_px: float,
        *,
        with_origin: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> FourierDisc:
        # |k|² is an integer, so the disc depends on radius_px only through floor(radius_px²): a band limit that
        # marches every step builds each distinct disc once.
        device = torch.device(device) if device is not None else None
        return cls(*_disc_pixels(box_px, math.floor(radius_px**2), with_origin, dtype, device))

    def take(self, images: torch.Tensor) -> torch.Tensor:
        """(…, D, D) → (…, P): the disc's pixels of centred transforms (or of a CTF on the centred grid)."""
        return images.flatten(-2)[..., self.flat_index]


@functools.lru_cache(maxsize=256)
def _disc_pixels(
    box_px: int, squared_radius_px: int, with_origin: bool, dtype: torch.dtype, device: torch.device | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat index, lab plane) of the pixels with ``0 < |k|² ≤ squared_radius_px`` (origin with ``with_origin``)."""
    grid = centered_grid(box_px, 2, dtype=dtype, device=device).reshape(-1, 2)
    squared = grid.square().sum(-1)
    keep = (squared <= squared_radius_px) & ((squared > 0) | with_origin)
    index = torch.nonzero(keep)[:, 0]  # the disc's size is data-dependent: one host sync per distinct disc (cached)
    return index, grid[index]


def disc_costs(observed: torch.Tensor, ctf: torch.Tensor | None, templates: torch.Tensor, kind: CostKind) -> torch.Tensor:
    """Cost of every (image, template) pair, lower is better.

    ``templates`` (K, P) are shared by the batch: (B, K) by two matrix products. ``templates`` (B, K, P) are
    per image (a beam's children): (B, K) by batched products. ``observed`` and ``ctf`` are (B, P).
    """
    weighted = observed if ctf is None else observed * ctf
    shared = templates.ndim == 2
    cross = weighted @ templates.T if shared else torch.einsum("bp,bkp->bk", weighted, templates)
    squared = templates.square()
    if ctf is None:
        energy = squared.sum(-1)[None] if shared else squared.sum(-1)
    else:
        ctf2 = ctf.square()
        energy = ctf2 @ squared.T if shared else torch.einsum("bp,bkp->bk", ctf2, squared)
    if kind == "l2":
        return observed.square().sum(-1, keepdim=True) - 2 * cross + energy
    norm = observed.norm(dim=-1, keepdim=True) * energy.clamp_min(1e-30).sqrt()
    return 1.0 - cross / norm.clamp_min(1e-30)


# cost(rotations (B, K, 3, 3)) -> (B, K), differentiable in the rotations (the GD refinement's objective).
PoseCost = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PoseSearch:
    """Images to place against one volume: observed disc coefficients, their CTF and the cost."""

    volume_ft: torch.Tensor  # (D, D, D) centred Hartley (real) volume
    disc: FourierDisc
    observed: torch.Tensor  # (B, P) Hartley coefficients of the images on the disc
    ctf: torch.Tensor | None  # (B, P)
    kind: CostKind

    def templates(self, rotations: torch.Tensor) -> torch.Tensor:
        """(…, 3, 3) → (…, P) central-slice coefficients on the disc."""
        lead = rotations.shape[:-2]
        return sample_central_slices(self.volume_ft, rotations.reshape(-1, 3, 3), self.disc.plane_px).reshape(*lead, -1)

    def cost(self, rotations: torch.Tensor) -> torch.Tensor:
        """(B, K, 3, 3) per-image candidates → (B, K) costs (differentiable)."""
        return disc_costs(self.observed, self.ctf, self.templates(rotations), self.kind)

    def grid_costs(self, level: int, chunk: int = 4608) -> torch.Tensor:
        """(B, 72·8**level) costs of every grid rotation of ``level``, rendered ``chunk`` templates at a time."""
        rotations = hopf_grid_rotations(level, dtype=self.observed.dtype, device=self.observed.device)
        parts = [disc_costs(self.observed, self.ctf, self.templates(r), self.kind) for r in rotations.split(chunk)]
        return torch.cat(parts, dim=1)


def search_poses(
    search: PoseSearch,
    *,
    width: int,
    final_level: int,
    start_level: int = 0,
    initial: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search on the Hopf grid; returns the best rotations (B, 3, 3) and their costs (B,).

    Without ``initial`` the beam starts from the ``width`` best of all ``72·8**start_level`` grid points (a
    global search); with it (B, 3, 3) from the ``width`` level-``start_level`` points nearest to it. The beam
    then descends to ``final_level`` (spacing ``60°/2**final_level``).
    """
    if not 0 <= start_level <= final_level:
        raise ValueError(f"search_poses: need 0 <= start_level <= final_level, got {start_level} and {final_level}")
    dtype, device = search.observed.dtype, search.observed.device
    if initial is None:
        costs = search.grid_costs(start_level)
        scores, beam = torch.topk(costs, min(width, hopf_grid_size(start_level)), dim=1, largest=False)
    else:
        beam = nearest_hopf_neighbours(initial, start_level, k=width)
        scores = search.cost(hopf_grid_rotations_at(beam, start_level, dtype=dtype, device=device))
    for level in range(start_level, final_level):
        children = _hopf_children(beam, level).reshape(beam.shape[0], -1)
        costs = search.cost(hopf_grid_rotations_at(children, level + 1, dtype=dtype, device=device))
        scores, keep = torch.topk(costs, width, dim=1, largest=False)
        beam = torch.gather(children, 1, keep)
    best = scores.argmin(dim=1, keepdim=True)
    index = torch.gather(beam, 1, best)[:, 0]
    return hopf_grid_rotations_at(index, final_level, dtype=dtype, device=device), scores.gather(1, best)[:, 0]


def soft_assignment(
    search: PoseSearch, level: int, k: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` best rotations (B, k, 3, 3) of grid ``level``, their weights (B, k) summing to 1, and costs (B, k)."""
    if not temperature > 0:
        raise ValueError(f"soft_assignment: temperature must be > 0, got {temperature}")
    costs, index = torch.topk(search.grid_costs(level), min(k, hopf_grid_size(level)), dim=1, largest=False)
    weights = torch.softmax(-(costs - costs[:, :1]) / temperature, dim=1)
    dtype, device = search.observed.dtype, search.observed.device
    return hopf_grid_rotations_at(index, level, dtype=dtype, device=device), weights, costs


def band_limit_px(box_px: int, start_fraction: float, ramp_fraction: float, progress: float) -> float:
    """Frequency marching: the search band (Fourier pixels) at ``progress`` ∈ [0, 1] of the searching phase.

    It starts at ``start_fraction`` of Nyquist and grows linearly to Nyquist over the first ``ramp_fraction``
    of the phase, so a coarse map is not asked to place images by detail it does not have yet.
    """
    ramp = min(1.0, progress / ramp_fraction) if ramp_fraction > 0 else 1.0
    return (start_fraction + (1.0 - start_fraction) * ramp) * (box_px // 2)


def annealed_temperature(start: float, end: float, progress: float) -> float:
    """Soft-assignment temperature at ``progress`` ∈ [0, 1]: geometric from ``start`` to ``end``."""
    return start * (end / start) ** min(1.0, max(0.0, progress))
