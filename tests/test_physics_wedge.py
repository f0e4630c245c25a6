"""Missing wedge mask and the 20 wedge-changing cube rotations (IsoNet)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryoray.physics import (
    apply_fourier_mask,
    centered_grid,
    cube_rotations,
    fft3_centered,
    missing_wedge_mask,
    project_real_space,
    rotate_volume_90,
    wedge_changing_rotations,
)

BOX = 33

# IsoNet v1's 20 augmentation rotations: pairs of (axes, k) applied as np.rot90(np.rot90(x, k1, axes1), k2, axes2).
ISONET_ROT90_PAIRS = [
    (((0, 1), 1), ((1, 2), 0)),
    (((0, 1), 1), ((1, 2), 1)),
    (((0, 2), 1), ((1, 2), 0)),
    (((0, 2), 1), ((1, 2), 1)),
    (((0, 1), 1), ((1, 2), 2)),
    (((0, 1), 1), ((1, 2), 3)),
    (((0, 2), 1), ((1, 2), 2)),
    (((0, 2), 1), ((1, 2), 3)),
    (((0, 1), 3), ((1, 2), 0)),
    (((0, 1), 3), ((1, 2), 1)),
    (((0, 2), 3), ((1, 2), 0)),
    (((0, 2), 3), ((1, 2), 1)),
    (((0, 1), 3), ((1, 2), 2)),
    (((0, 1), 3), ((1, 2), 3)),
    (((0, 2), 3), ((1, 2), 2)),
    (((0, 2), 3), ((1, 2), 3)),
    (((1, 2), 1), ((0, 2), 0)),
    (((1, 2), 1), ((0, 2), 2)),
    (((1, 2), 3), ((0, 2), 0)),
    (((1, 2), 3), ((0, 2), 2)),
]


def test_cube_rotations() -> None:
    mats = cube_rotations()
    assert mats.shape == (24, 3, 3) and mats.dtype == torch.int64
    assert torch.equal(mats[0], torch.eye(3, dtype=torch.int64))
    assert len({tuple(m.flatten().tolist()) for m in mats}) == 24
    dets = torch.linalg.det(mats.double())
    assert torch.allclose(dets, torch.ones(24, dtype=torch.float64))
    products = {tuple((a @ b).flatten().tolist()) for a in mats for b in mats}
    assert len(products) == 24  # closed under composition: a group


def test_rotate_volume_90_moves_points_as_the_matrix_says() -> None:
    c = BOX // 2
    vol = torch.zeros(BOX, BOX, BOX)
    vol[c + 1, c - 4, c + 7] = 1.0  # (x, y, z) = (7, -4, 1)
    for R in cube_rotations():
        out = rotate_volume_90(vol, R)
        x, y, z = (R @ torch.tensor([7, -4, 1])).tolist()
        assert torch.nonzero(out).tolist() == [[c + z, c + y, c + x]]


def test_rotate_volume_90_matches_trilinear_resampling() -> None:
    vol = torch.randn(2, 9, 9, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    R = wedge_changing_rotations()[5]
    # project_real_space samples V(Rᵀ r); summing along z of the exact rotation must agree.
    expected = project_real_space(vol, R.double().expand(2, 3, 3))
    assert torch.allclose(rotate_volume_90(vol, R).sum(dim=1), expected, atol=1e-10)


def test_twenty_wedge_changing_rotations_match_isonet() -> None:
    mats = wedge_changing_rotations()
    assert mats.shape == (20, 3, 3)
    assert len({tuple(m.flatten().tolist()) for m in mats}) == 20
    probe = np.random.default_rng(1).standard_normal((5, 5, 5))
    ours = {rotate_volume_90(torch.from_numpy(probe), R).numpy().tobytes() for R in mats}
    isonet = set()
    for (axes1, k1), (axes2, k2) in ISONET_ROT90_PAIRS:
        isonet.add(np.ascontiguousarray(np.rot90(np.rot90(probe, k1, axes1), k2, axes2)).tobytes())
    assert len(isonet) == 20 and ours == isonet


def test_each_changes_the_wedge_and_the_klein_four_keep_it() -> None:
    mask = missing_wedge_mask(BOX)
    changing = {tuple(m.flatten().tolist()) for m in wedge_changing_rotations()}
    kept = 0
    for R in cube_rotations():
        same = torch.equal(rotate_volume_90(mask, R), mask)
        if tuple(R.flatten().tolist()) in changing:
            assert not same
        else:
            assert same and torch.equal(R.abs(), torch.eye(3, dtype=torch.int64))
            kept += 1
    assert kept == 4


@pytest.mark.parametrize("box", [32, 33])
def test_mask_is_symmetric_under_k_to_minus_k(box: int) -> None:
    mask = missing_wedge_mask(box, -45.0, 60.0)
    flipped = torch.flip(mask, dims=(0, 1, 2))
    if box % 2 == 0:  # index 0 (Nyquist) has no partner; compare the paired part
        assert torch.equal(mask[1:, 1:, 1:], flipped[:-1, :-1, :-1])
    else:
        assert torch.equal(mask, flipped)


@pytest.mark.parametrize("tilt", [(-60.0, 60.0), (-45.0, 45.0), (-30.0, 50.0)])
def test_measured_fraction_is_the_tilt_range(tilt: tuple[float, float]) -> None:
    box = 65
    mask = missing_wedge_mask(box, *tilt)
    r = centered_grid(box, 3, dtype=torch.float64)
    disc = (r[..., 0] ** 2 + r[..., 2] ** 2 <= (box // 2) ** 2) & ((r[..., 0] != 0) | (r[..., 2] != 0))
    fraction = float(mask[disc].mean())
    # Lattice points exactly on a 45° limit count as measured, which adds about 1 %.
    assert fraction == pytest.approx((tilt[1] - tilt[0]) / 180.0, abs=0.02)


def test_wedge_orientation() -> None:
    mask = missing_wedge_mask(BOX, -60.0, 60.0)
    c = BOX // 2
    assert mask[c, c, c + 10] == 1 and mask[c, c + 10, c] == 1  # kx axis and the tilt axis ky: measured
    assert mask[c + 10, c, c] == 0 and mask[c + 10, c + 5, c + 1] == 0  # around kz: missing
    # Tilt α of the specimen (pose R_y(α)) measures the direction (kx, kz) = (cos α, sin α).
    asym = missing_wedge_mask(BOX, 0.0, 60.0)
    assert asym[c + 5, c, c + 5] == 1 and asym[c - 5, c, c + 5] == 0
    x_axis = missing_wedge_mask(BOX, -60.0, 60.0, tilt_axis="x")
    assert x_axis[c, c, c + 10] == 1 and x_axis[c, c + 10, c] == 1 and x_axis[c + 10, c, c] == 0
    assert torch.equal(x_axis, rotate_volume_90(mask, torch.tensor([[0, -1, 0], [1, 0, 0], [0, 0, 1]])))


def test_apply_fourier_mask_removes_the_wedge() -> None:
    vol = torch.randn(BOX, BOX, BOX, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mask = missing_wedge_mask(BOX)
    out = apply_fourier_mask(vol, mask)
    spectrum = fft3_centered(out)
    assert float(spectrum[mask == 0].abs().max()) < 1e-10
    assert torch.allclose(spectrum[mask == 1], fft3_centered(vol)[mask == 1], atol=1e-10)
    assert torch.allclose(apply_fourier_mask(out, mask), out, atol=1e-10)  # a projection


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        missing_wedge_mask(16, 60.0, -60.0)
    with pytest.raises(ValueError):
        missing_wedge_mask(16, tilt_axis="z")
    with pytest.raises(ValueError):
        rotate_volume_90(torch.zeros(4, 4, 4), torch.eye(3) * 2)
    with pytest.raises(ValueError):
        rotate_volume_90(torch.zeros(4, 4, 4), torch.diag(torch.tensor([1, 1, -1])))
    with pytest.raises(ValueError):
        apply_fourier_mask(torch.zeros(4, 4, 4), torch.ones(5, 5, 5))
