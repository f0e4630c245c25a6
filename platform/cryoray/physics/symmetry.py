"""Point-group symmetry: the rotations of C_n, D_n, T, O and I, and poses modulo a group.

A map with symmetry group G satisfies V(g r) = V(r) for every g in G, so the images at pose R and at
pose R·g are the same: a pose is known only up to right multiplication by the group. Axes follow
RELION's defaults for C_n and D_n (the n-fold axis along z, a 2-fold of D_n along x); T, O and I are
generated from a 2-fold (T, I) or 4-fold (O) axis along z, a 3-fold along (1, 1, 1) and, for I, a
5-fold along (0, 1, φ); the group is the closure of its generators.
"""

from __future__ import annotations

import math
import re

import torch

from .rotations import axis_angle_to_matrix

__all__ = ["SYMMETRY_PATTERN", "symmetry_rotations"]

SYMMETRY_PATTERN = r"^(C[1-9][0-9]*|D[2-9][0-9]*|T|O|I)$"
_GROUP_ORDER = {"T": 12, "O": 24, "I": 60}


def _axis_rotation(axis: tuple[float, float, float], order: int) -> torch.Tensor:
    vector = torch.tensor(axis, dtype=torch.float64)
    return axis_angle_to_matrix(vector / vector.norm() * (2 * math.pi / order))


def _closure(generators: list[torch.Tensor], order: int) -> torch.Tensor:
    """Every product of the generators: breadth-first until no new element appears."""
    elements = [torch.eye(3, dtype=torch.float64)]
    frontier = list(elements)
    while frontier:
        new = []
        for element in frontier:
            for generator in generators:
                product = generator @ element
                if all((product - known).abs().max() > 1e-6 for known in elements):
                    elements.append(product)
                    new.append(product)
        frontier = new
    if len(elements) != order:
        raise AssertionError(f"symmetry closure gave {len(elements)} elements, expected {order}")
    return torch.stack(elements)


def symmetry_rotations(name: str, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (|G|, 3, 3) rotations of the point group ``name`` (C1, C2, …, D2, D3, …, T, O, I), identity first."""
    if not re.match(SYMMETRY_PATTERN, name):
        raise ValueError(f"symmetry_rotations: expected a point group like C1, C4, D2, T, O or I, got {name!r}")
    if name[0] in "CD":
        n = int(name[1:])
        cyclic = [_axis_rotation((0.0, 0.0, 1.0), n) if n > 1 else torch.eye(3, dtype=torch.float64)]
        generators = cyclic + ([_axis_rotation((1.0, 0.0, 0.0), 2)] if name[0] == "D" else [])
        group = _closure(generators, n * (2 if name[0] == "D" else 1))
    else:
        phi = (1 + math.sqrt(5)) / 2
        generators = [_axis_rotation((0.0, 0.0, 1.0), 4 if name == "O" else 2), _axis_rotation((1.0, 1.0, 1.0), 3)]
        if name == "I":
            generators.append(_axis_rotation((0.0, 1.0, phi), 5))
        group = _closure(generators, _GROUP_ORDER[name])
    return group.to(dtype)
