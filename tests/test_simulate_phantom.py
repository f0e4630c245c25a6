"""The built-in phantom: deterministic, smooth, inside the box, with no symmetry."""

from __future__ import annotations

import numpy as np
import pytest
from cryoray.errors import CryorayInputError
from cryoray.simulate.phantom import builtin_phantom


def test_deterministic_and_shaped():
    volume = builtin_phantom(32)
    assert volume.shape == (32, 32, 32) and volume.dtype == np.float32
    np.testing.assert_array_equal(volume, builtin_phantom(32))
    assert volume.max() == pytest.approx(1.0) and volume.min() >= 0


def test_stays_inside_the_inscribed_sphere():
    volume = builtin_phantom(48)
    grid = np.indices(volume.shape) - 24
    outside = np.sqrt((grid**2).sum(axis=0)) > 24
    assert volume[outside].max() < 1e-3


def test_has_no_symmetry_and_is_chiral():
    volume = builtin_phantom(40).astype(np.float64)
    grid = np.indices(volume.shape).reshape(3, -1).astype(np.float64)
    weights = volume.reshape(-1)
    centred = grid - (grid * weights).sum(axis=1, keepdims=True) / weights.sum()
    inertia = (centred * weights) @ centred.T / weights.sum()
    eigenvalues = np.linalg.eigvalsh(inertia)
    assert np.diff(eigenvalues).min() > 0.05 * eigenvalues.max()  # no axis of 3-fold or higher symmetry
    for axis in range(3):  # no mirror plane normal to a box axis
        assert np.abs(volume - np.flip(volume, axis)).max() > 0.3
    for plane in ((1, 2), (0, 2), (0, 1)):  # no 2-fold axis along a box axis
        assert np.abs(volume - np.rot90(volume, 2, axes=plane)).max() > 0.3


def test_smooth():
    volume = builtin_phantom(64)
    spectrum = np.abs(np.fft.fftshift(np.fft.fftn(volume)))
    radius = np.sqrt(((np.indices(volume.shape) - 32) ** 2).sum(axis=0))
    assert spectrum[radius > 24].max() < 1e-3 * spectrum.max()


def test_bad_arguments():
    with pytest.raises(CryorayInputError, match="kind"):
        builtin_phantom(32, kind="ribosome")
    with pytest.raises(CryorayInputError, match="box_px"):
        builtin_phantom(4)
