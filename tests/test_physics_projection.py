"""Projection: Fourier slice vs real space vs analytic Gaussians, composition, gradients, shifts, cryoDRGN data."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from cryoray.physics import (
    axis_angle_to_matrix,
    centered_grid,
    fft2_centered,
    fft3_centered,
    form_particle_images,
    ht3_centered,
    iht2_centered,
    insert_central_slices,
    project_fourier_slice,
    project_real_space,
    random_rotations,
    reconstruct_fourier_inversion,
    shift_images,
    shift_images_fourier,
    slice_volume_fourier,
)

BOX = 32


def _blobs(box: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    blobs = []
    for _ in range(4):
        centre = (torch.rand(3, generator=gen, dtype=torch.float64) - 0.5) * box * 0.4
        a = torch.randn(3, 3, generator=gen, dtype=torch.float64)
        blobs.append((centre, 2 * a @ a.T + 3 * torch.eye(3, dtype=torch.float64)))
    return blobs


def _volume(box: int, blobs: list) -> torch.Tensor:
    r = centered_grid(box, 3, dtype=torch.float64)
    vol = torch.zeros(box, box, box, dtype=torch.float64)
    for centre, cov in blobs:
        d = r - centre
        vol += torch.exp(-0.5 * torch.einsum("...i,ij,...j->...", d, torch.linalg.inv(cov), d))
    return vol


def _analytic_projection(box: int, blobs: list, R: torch.Tensor) -> torch.Tensor:
    """∫ V(Rᵀ r) dz of a Gaussian mixture: the x-y marginal of each rotated Gaussian."""
    r2 = centered_grid(box, 2, dtype=torch.float64)
    out = torch.zeros(len(R), box, box, dtype=torch.float64)
    for centre, cov in blobs:
        M = R @ cov @ R.transpose(1, 2)
        Mxy = M[:, :2, :2]
        amplitude = torch.sqrt(2 * math.pi * torch.linalg.det(M) / torch.linalg.det(Mxy))
        d = r2[None] - (R @ centre)[:, None, None, :2]
        out += amplitude[:, None, None] * torch.exp(-0.5 * torch.einsum("b...i,bij,b...j->b...", d, torch.linalg.inv(Mxy), d))
    return out


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean((-1, -2), keepdim=True)
    b = b - b.mean((-1, -2), keepdim=True)
    return (a * b).sum((-1, -2)) / torch.sqrt((a * a).sum((-1, -2)) * (b * b).sum((-1, -2)))


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (a - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)


@pytest.fixture(scope="module")
def blob_case() -> tuple[list, torch.Tensor, torch.Tensor]:
    blobs = _blobs(BOX)
    R = random_rotations(24, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return blobs, _volume(BOX, blobs), R


def test_fourier_slice_agrees_with_real_space_and_analytic(blob_case) -> None:
    blobs, vol, R = blob_case
    analytic = _analytic_projection(BOX, blobs, R)
    fourier = project_fourier_slice(vol, R)
    real = project_real_space(vol, R)
    assert float(_corr(fourier, real).min()) > 0.999
    assert float(_corr(fourier, analytic).min()) > 0.999
    assert float(_corr(real, analytic).min()) > 0.999
    assert float(_rel_err(fourier, analytic).max()) < 0.05
    assert float(_rel_err(real, analytic).max()) < 0.05
    uncorrected = project_fourier_slice(vol, R, gridding_correction=False)
    assert float(_rel_err(uncorrected, analytic).mean()) > float(_rel_err(fourier, analytic).mean())


def test_odd_box_and_float32(blob_case) -> None:
    blobs, _, R = blob_case
    vol = _volume(BOX + 1, blobs).float()
    analytic = _analytic_projection(BOX + 1, blobs, R).float()
    assert float(_corr(project_fourier_slice(vol, R.float()), analytic).min()) > 0.999


def test_identity_projection_is_the_z_sum(blob_case) -> None:
    _, vol, _ = blob_case
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(project_real_space(vol, eye), vol.sum(0), atol=1e-10)
    assert torch.allclose(project_fourier_slice(vol, eye, gridding_correction=False), vol.sum(0), atol=1e-10)
    assert float(_rel_err(project_fourier_slice(vol, eye)[None], vol.sum(0)[None])) < 0.08


def test_projection_of_rotated_volume_composes(blob_case) -> None:
    blobs, vol, R = blob_case
    Q = axis_angle_to_matrix(torch.tensor([0.4, -0.7, 0.2], dtype=torch.float64))
    rotated_blobs = [(Q @ c, Q @ cov @ Q.T) for c, cov in blobs]  # V'(r) = V(Qᵀ r)
    rotated = _volume(BOX, rotated_blobs)
    direct = project_fourier_slice(rotated, R[:8])
    composed = project_fourier_slice(vol, R[:8] @ Q)
    assert float(_corr(direct, composed).min()) > 0.999
    analytic = _analytic_projection(BOX, blobs, R[:8] @ Q)
    assert float(_corr(direct, analytic).min()) > 0.999


def test_projection_direction_and_handedness() -> None:
    # A point at particle x = +5 seen with a 90° turn about z (pose maps x to y) lands at image y = +5.
    vol = torch.zeros(BOX, BOX, BOX, dtype=torch.float64)
    c = BOX // 2
    vol[c, c, c + 5] = 1.0
    Rz90 = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    img = project_real_space(vol, Rz90)
    assert torch.nonzero(img > 0.5).tolist() == [[c + 5, c]]


def test_batched_volumes_and_hartley_slices(blob_case) -> None:
    _, vol, R = blob_case
    vols = torch.stack((vol, 2 * vol))
    both = project_fourier_slice(vols, R[:2])
    single = project_fourier_slice(vol, R[:2])
    assert torch.allclose(both[0], single[0], atol=1e-9) and torch.allclose(both[1], 2 * single[1], atol=1e-9)
    # The Hartley slice of the (odd, padded) volume is the Hartley transform of the projection.
    padded = torch.nn.functional.pad(vol, (0, 1) * 3)
    h_slices = slice_volume_fourier(ht3_centered(padded, norm="backward"), R[:3])
    f_slices = slice_volume_fourier(fft3_centered(padded, norm="backward"), R[:3])
    assert torch.allclose(h_slices, f_slices.real - f_slices.imag, atol=1e-8)
    from_hartley = iht2_centered(h_slices, norm="backward")  # unpadded trilinear slicing, as cryoDRGN: ~2 % off
    assert float(_corr(from_hartley, project_real_space(padded, R[:3])).min()) > 0.97


def test_gradients_reach_volume_and_rotations(blob_case) -> None:
    _, vol, _ = blob_case
    volume = vol.clone().float().requires_grad_(True)
    omega = torch.tensor([[0.3, 0.2, -0.5], [1.0, -0.4, 0.1]], requires_grad=True)
    target = torch.randn(2, BOX, BOX, generator=torch.Generator().manual_seed(3))
    loss = (project_fourier_slice(volume, axis_angle_to_matrix(omega)) * target).sum()
    loss.backward()
    for grad in (volume.grad, omega.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # The rotation gradient is the true derivative: compare with a central finite difference.
    step = torch.zeros(2, 3, dtype=torch.float64)
    step[0, 1] = 1e-5
    omega64, target64 = omega.detach().double(), target.double()
    f_plus = (project_fourier_slice(vol, axis_angle_to_matrix(omega64 + step)) * target64).sum()
    f_minus = (project_fourier_slice(vol, axis_angle_to_matrix(omega64 - step)) * target64).sum()
    assert float(omega.grad[0, 1]) == pytest.approx(float((f_plus - f_minus) / 2e-5), rel=0.02)


@pytest.mark.parametrize("complex_data", [False, True])
def test_insertion_is_the_adjoint_of_slicing(complex_data: bool) -> None:
    """⟨slice(V, R), S⟩ = ⟨V, insert(S, R)⟩ (real inner product, real and imaginary parts alike)."""
    gen = torch.Generator().manual_seed(3)
    dtype = torch.complex128 if complex_data else torch.float64
    volume = torch.randn(12, 12, 12, generator=gen, dtype=dtype)
    slices = torch.randn(5, 12, 12, generator=gen, dtype=dtype)
    rotations = random_rotations(5, generator=gen, dtype=torch.float64)
    left = (torch.conj(slice_volume_fourier(volume, rotations)) * slices).sum().real
    right = (torch.conj(volume) * insert_central_slices(slices, rotations)).sum().real
    assert torch.allclose(left, right, rtol=1e-10)


def test_fourier_inversion_recovers_the_map_from_ctf_shifted_images() -> None:
    """Noiseless CTF images with origin shifts of a known map at 1 000 random poses: the one-pass Wiener inversion
    gives the map back (measured: correlation 0.9996 at 32 px from 2 000 images, 2 s)."""
    gen = torch.Generator().manual_seed(0)
    box, count, pixel = 24, 1000, 3.0
    volume = _volume(box, _blobs(box)).float()
    rotations = random_rotations(count, generator=gen)
    defocus = 1e4 + 2e4 * torch.rand(count, generator=gen)
    ctf = {
        "defocus_u_angstrom": defocus,
        "defocus_v_angstrom": 0.95 * defocus,
        "defocus_angle_deg": 180 * torch.rand(count, generator=gen),
        "voltage_kv": torch.full((count,), 300.0),
        "cs_mm": torch.full((count,), 2.7),
        "amplitude_contrast": torch.full((count,), 0.1),
        "phase_shift_deg": torch.zeros(count),
    }
    origins = 24 * (torch.rand(count, 2, generator=gen) - 0.5)  # up to 4 px either way
    images = form_particle_images(volume, rotations, pixel, origins, ctf)
    recovered = reconstruct_fourier_inversion(images, rotations, pixel, origins, ctf, wiener_constant=0.01)
    assert torch.corrcoef(torch.stack([recovered.flatten(), volume.flatten()]))[0, 1] > 0.995
    assert 0.9 < float(recovered.std() / volume.std()) < 1.05  # the amplitude, not only the shape
    unshifted = reconstruct_fourier_inversion(images, rotations, pixel, None, ctf, wiener_constant=0.01)
    assert torch.corrcoef(torch.stack([unshifted.flatten(), volume.flatten()]))[0, 1] < 0.99  # the origins matter
    with pytest.raises(ValueError, match="rotations"):
        reconstruct_fourier_inversion(images, rotations[:-1], pixel)
    # Weights: an image at weight 0 is absent, and doubling every weight is halving the Wiener constant.
    garbage = torch.randn(images.shape, generator=gen)
    doubled_ctf = {k: torch.cat([v, v]) for k, v in ctf.items()}
    weighted = reconstruct_fourier_inversion(
        torch.cat([images, garbage]),
        torch.cat([rotations, rotations]),
        pixel,
        torch.cat([origins, origins]),
        doubled_ctf,
        wiener_constant=0.02,
        image_weights=torch.cat([torch.full((count,), 2.0), torch.zeros(count)]),
    )
    torch.testing.assert_close(weighted, recovered, rtol=0, atol=1e-4 * float(recovered.abs().max()))
    with pytest.raises(ValueError, match="image_weights"):
        reconstruct_fourier_inversion(images, rotations, pixel, image_weights=torch.ones(count + 1))


@pytest.mark.parametrize("box", [16, 17])
def test_integer_shift_equals_roll(box: int) -> None:
    images = torch.randn(3, box, box, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    shifts = torch.tensor([[2.0, 0.0], [0.0, -3.0], [1.0, 4.0]], dtype=torch.float64)
    shifted = shift_images(images, shifts)
    for img, out, (sx, sy) in zip(images, shifted, shifts.long().tolist()):
        assert torch.allclose(out, torch.roll(img, shifts=(sy, sx), dims=(0, 1)), atol=1e-10)
    ft = shift_images_fourier(fft2_centered(images), shifts)
    assert torch.allclose(ft, fft2_centered(shifted), atol=1e-10)


def test_subpixel_shift_moves_a_gaussian() -> None:
    r = centered_grid(BOX, 2, dtype=torch.float64)
    gauss = torch.exp(-(r**2).sum(-1) / 8)
    moved = shift_images(gauss[None], torch.tensor([[1.5, -0.25]], dtype=torch.float64))[0]
    expected = torch.exp(-((r - torch.tensor([1.5, -0.25], dtype=torch.float64)) ** 2).sum(-1) / 8)
    assert torch.allclose(moved, expected, atol=1e-8)


def test_bad_arguments() -> None:
    vol = torch.zeros(8, 8, 8)
    with pytest.raises(ValueError):
        project_fourier_slice(torch.zeros(8, 8, 9), torch.eye(3)[None])
    with pytest.raises(ValueError):
        project_real_space(vol, torch.eye(4)[None])
    with pytest.raises(ValueError):
        project_fourier_slice(torch.zeros(2, 8, 8, 8), torch.eye(3).expand(3, 3, 3))
    with pytest.raises(ValueError):
        project_fourier_slice(vol, torch.eye(3)[None], pad_factor=0)
    with pytest.raises(ValueError):
        shift_images_fourier(torch.zeros(8, 8, dtype=torch.complex64), torch.zeros(3))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # cryoDRGN's test files lack the MRC map id
def test_reproduces_cryodrgn_toy_projections(shared_data) -> None:
    mrcfile = pytest.importorskip("mrcfile")
    folder = shared_data / "cryodrgn"
    with mrcfile.open(folder / "toymodel_small_nocenter.mrc", permissive=True) as f:
        vol = torch.from_numpy(np.array(f.data, dtype=np.float64))
    with mrcfile.open(folder / "toy_projections.mrcs", permissive=True) as f:
        images = torch.from_numpy(np.array(f.data[:50], dtype=np.float64))
    with open(folder / "toy_rot_trans.pkl", "rb") as f:
        rot, _ = pickle.load(f)
    R = torch.from_numpy(np.asarray(rot[:50], dtype=np.float64))
    # cryoDRGN's matrices are poses in our convention as they are: no transpose, no axis swap.
    real = project_real_space(vol, R)
    assert float(_corr(real, images).min()) > 0.9999
    assert float((real - images).abs().max()) < 1e-3
    assert float(_corr(project_real_space(vol, R.transpose(1, 2)), images).mean()) < 0.8
    fourier = project_fourier_slice(vol, R)
    assert float(_corr(fourier, images).mean()) > 0.9
