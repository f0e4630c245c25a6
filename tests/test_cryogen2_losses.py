"""CryoGEN-II building blocks against exact answers: rotated wedges, the masked-loss partition, the training
sample, the wedge-restricted FSC, schedules, subtomogram normalisation and extraction inside the signal mask.
(The 20 wedge-changing rotations themselves are tested in test_physics_wedge.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cryoray.data.subtomograms import density_std_mask, percentile_normalise, prepare_subtomogram, sample_cube_centres
from cryoray.errors import CryorayInputError
from cryoray.methods.cryogen2 import CryoGEN2Config, adversarial_lambda, critic_views, warmup_linear_decay, wedge_geometry
from cryoray.methods.cryogen2.losses import masked_reconstruction_terms, rotated_wedge_masks, training_sample
from cryoray.physics import (
    apply_fourier_mask,
    fft3_centered,
    fourier_shell_correlation,
    missing_wedge_mask,
    missing_wedge_region,
    rotate_volume_90,
    wedge_changing_rotations,
)

BOX = 16
TILTS = (-60.0, 60.0)


def _power_outside(volume: torch.Tensor, mask: torch.Tensor) -> float:
    power = fft3_centered(volume).abs().square()
    return float((power * (1 - mask)).sum() / power.sum())


@pytest.mark.parametrize("box", [16, 17])
def test_rotated_wedge_masks_are_the_wedges_of_rotated_volumes(box: int) -> None:
    rotations = wedge_changing_rotations()
    masks = rotated_wedge_masks(box, rotations, TILTS)
    wedged = apply_fourier_mask(torch.randn(box, box, box, dtype=torch.float64), missing_wedge_mask(box, *TILTS).double())
    for rotation, mask in zip(rotations, masks):
        assert _power_outside(rotate_volume_90(wedged, rotation), mask.double()) < 1e-20
        assert not torch.equal(mask, missing_wedge_mask(box, *TILTS))  # each moves the wedge
    # a wedge is symmetric under the Klein four-group, so the 20 rotations give the 5 other wedge orientations
    assert len({m.numpy().tobytes() for m in masks}) == 5


def _band_limited(mask: torch.Tensor) -> torch.Tensor:
    return apply_fourier_mask(torch.randn(2, BOX, BOX, BOX, dtype=torch.float64), mask)


def test_a_residual_confined_to_the_wedge_region_appears_only_in_the_wedge_term() -> None:
    torch.manual_seed(0)
    target_mask = rotated_wedge_masks(BOX, wedge_changing_rotations()[3:4], TILTS)[0].double()
    input_mask = missing_wedge_mask(BOX, *TILTS).double()
    target = torch.randn(2, BOX, BOX, BOX, dtype=torch.float64)
    wedge_residual = _band_limited(target_mask * (1 - input_mask))
    terms = masked_reconstruction_terms(target + wedge_residual, target, target_mask, input_mask)
    assert float(terms["masked_measured"]) < 1e-20
    assert float(terms["masked_wedge"]) == pytest.approx(float(wedge_residual.square().mean()), rel=1e-9)
    measured_residual = _band_limited(target_mask * input_mask)
    terms = masked_reconstruction_terms(target + measured_residual, target, target_mask, input_mask)
    assert float(terms["masked_wedge"]) < 1e-20
    assert float(terms["masked_measured"]) == pytest.approx(float(measured_residual.square().mean()), rel=1e-9)
    # a residual where the target has no data is not penalised; the three regions partition Fourier space
    assert (
        float(sum(masked_reconstruction_terms(target + _band_limited(1 - target_mask), target, target_mask, input_mask).values()))
        < 1e-20
    )
    any_residual = torch.randn_like(target)
    terms = masked_reconstruction_terms(target + any_residual, target, target_mask, input_mask)
    unseen = float((fft3_centered(any_residual).abs().square() * (1 - target_mask)).mean())
    assert float(terms["masked_measured"] + terms["masked_wedge"]) + unseen == pytest.approx(
        float(any_residual.square().mean()), rel=1e-9
    )


def test_training_sample_rotates_wedges_and_adds_wedge_shaped_noise() -> None:
    torch.manual_seed(1)
    geometry = wedge_geometry(BOX, TILTS, "cpu")
    subtomograms = apply_fourier_mask(torch.randn(6, BOX, BOX, BOX), geometry["input_mask"])
    sample = training_sample(
        subtomograms, geometry["rotations"], geometry["rotated_masks"], geometry["input_mask"], max_noise=0.5
    )
    for i, index in enumerate(sample["rotation_index"]):
        assert torch.equal(sample["target"][i], rotate_volume_90(subtomograms[i], geometry["rotations"][int(index)]))
        assert torch.equal(sample["target_mask"][i], geometry["rotated_masks"][int(index)])
        assert _power_outside(sample["input"][i].double(), geometry["input_mask"].double()) < 1e-10  # the artificial wedge
    assert bool(((sample["sigma"] > 0) & (sample["sigma"] <= 0.5)).all())
    noiseless = training_sample(
        subtomograms, geometry["rotations"], geometry["rotated_masks"], geometry["input_mask"], max_noise=0.0
    )
    expected = apply_fourier_mask(noiseless["target"], geometry["input_mask"])
    assert torch.allclose(noiseless["input"], expected, atol=1e-6)


def test_barycenter_views_share_orientations_and_wedges() -> None:
    torch.manual_seed(2)
    geometry = wedge_geometry(BOX, TILTS, "cpu")
    subtomograms = apply_fourier_mask(torch.randn(4, BOX, BOX, BOX), geometry["input_mask"])
    output = torch.randn(4, BOX, BOX, BOX)  # wedge-free
    real, fake = critic_views(output, subtomograms, geometry)
    # every real view is a partner subtomogram in some cube orientation, and the fake view of the same pair lies
    # inside that orientation's wedge
    for i in range(4):
        matches = [
            o for o, R in enumerate(geometry["cube_rotations"]) if torch.equal(real[i], rotate_volume_90(subtomograms[i - 1], R))
        ]
        assert matches
        assert any(_power_outside(fake[i].double(), geometry["cube_masks"][o].double()) < 1e-10 for o in matches)


def test_region_fsc_equals_the_fsc_on_all_of_fourier_space_and_ignores_the_rest() -> None:
    torch.manual_seed(3)
    a = torch.randn(2, BOX, BOX, BOX, dtype=torch.float64)
    b = a + torch.randn_like(a)
    _, whole = fourier_shell_correlation(a, b)
    _, everywhere = fourier_shell_correlation(a, b, region=torch.ones(BOX, BOX, BOX))
    assert torch.equal(whole, everywhere)
    region = missing_wedge_region(BOX, *TILTS)
    _, inside = fourier_shell_correlation(a, b, region=region)
    _, inside_after = fourier_shell_correlation(a, b + _band_limited(1 - region.double()), region=region)
    assert torch.isnan(inside[..., :2]).all() and torch.allclose(inside[..., 2:], inside_after[..., 2:])
    _, perfect = fourier_shell_correlation(a, a + _band_limited(1 - region.double()), region=region)
    assert torch.allclose(perfect[..., 2:], torch.ones_like(perfect[..., 2:]))


def test_schedules() -> None:
    factor = warmup_linear_decay(100, 0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0) and factor(55) == pytest.approx(0.5) and factor(100) == 0.0
    config = CryoGEN2Config(adversarial_weight=0.2)
    assert [adversarial_lambda(config, e, 4) for e in range(4)] == pytest.approx([0.2, 0.15, 0.1, 0.05])
    assert adversarial_lambda(CryoGEN2Config(adversarial="off"), 0, 4) == 0.0
    with pytest.raises(ValueError, match="multiple of 8"):
        CryoGEN2Config(cube_px=20)


def test_percentile_normalisation_puts_90_percent_of_voxels_in_0_1() -> None:
    volume = np.random.default_rng(0).gamma(2.0, 3.0, size=(20, 20, 20)).astype(np.float32)
    normalised = percentile_normalise(volume)
    inside = np.mean((normalised >= 0) & (normalised <= 1))
    assert inside == pytest.approx(0.9, abs=0.002) and np.mean(normalised < 0) == pytest.approx(0.05, abs=0.002)
    inverted = prepare_subtomogram(volume, invert_contrast=True)
    assert np.corrcoef(inverted.ravel(), volume.ravel())[0, 1] == pytest.approx(-1, abs=1e-6)


def test_cube_centres_lie_inside_the_signal_mask_and_their_cubes_inside_the_tomogram() -> None:
    rng = np.random.default_rng(4)
    tomogram = rng.normal(0, 0.2, size=(24, 48, 48)).astype(np.float32)
    tomogram[8:16, 30:38, 6:14] -= 3.0  # one dark (protein) blob, as in a raw tomogram
    mask = density_std_mask(tomogram, invert_contrast=True, density_percentage=10, std_percentage=30)
    assert mask[8:16, 30:38, 6:14].mean() > 0.4 and mask.mean() < 0.2
    centres = sample_cube_centres(mask, 200, 16, rng)
    assert mask[tuple(centres.T)].all()
    assert (centres - 8 >= 0).all() and (centres - 8 + 16 <= np.array(tomogram.shape)).all()
    with pytest.raises(CryorayInputError, match="mask"):
        sample_cube_centres(np.zeros_like(mask), 4, 16, rng, "tomo.mrc")
