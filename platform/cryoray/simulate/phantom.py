"""A built-in test volume, so simulations and demos need no external file.

"asymmetric_blobs": six Gaussian blobs of different sizes and heights at non-coplanar positions.
The arrangement has no symmetry (three distinct principal moments) and is chiral, so a wrong hand
or a wrong pose shows up in any comparison with the ground truth. It is smooth (band-limited in
practice), so it projects cleanly, and it stays inside the sphere inscribed in the box, so every
rotation keeps it in the box.
"""

from __future__ import annotations

import numpy as np

from cryoray.errors import CryorayInputError

# (x, y, z) offset from the box centre and Gaussian sigma, both as fractions of the box size; peak height.
_ASYMMETRIC_BLOBS = (
    ((0.00, 0.00, 0.00), 0.090, 1.0),
    ((0.22, 0.03, -0.02), 0.060, 0.8),
    ((-0.06, 0.15, 0.03), 0.050, 0.7),
    ((0.02, -0.04, 0.07), 0.045, 0.9),
    ((-0.20, -0.06, -0.04), 0.035, 0.6),
    ((0.10, 0.13, 0.06), 0.030, 0.7),
)
KINDS = ("asymmetric_blobs",)
MIN_BOX_PX = 8


def builtin_phantom(box_px: int, kind: str = "asymmetric_blobs") -> np.ndarray:
    """A deterministic (z, y, x) float32 volume of side `box_px`, peak 1, centred on voxel box_px // 2."""
    if kind not in KINDS:
        raise CryorayInputError(None, "kind", f"one of {KINDS}", repr(kind))
    if int(box_px) != box_px or box_px < MIN_BOX_PX:
        raise CryorayInputError(None, "box_px", f"an integer of at least {MIN_BOX_PX}", box_px)
    box_px = int(box_px)
    axis = (np.arange(box_px) - box_px // 2) / box_px
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    volume = np.zeros((box_px,) * 3, dtype=np.float64)
    for (cx, cy, cz), sigma, height in _ASYMMETRIC_BLOBS:
        volume += height * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2.0 * sigma**2))
    return (volume / volume.max()).astype(np.float32)
