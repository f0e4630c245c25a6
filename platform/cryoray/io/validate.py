"""Checks shared by every reader and writer, so all of them fail the same way on bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoray.errors import CryorayInputError


def check_finite(array: np.ndarray, path: str | Path | None, field: str = "data") -> None:
    """Refuse NaN/Inf values: training on them silently produces garbage."""
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise CryorayInputError(path, field, "finite values only", f"{bad} NaN/Inf values, the first at index {first}")


def check_can_write(path: str | Path, overwrite: bool) -> Path:
    """Refuse to replace a user's file unless `overwrite=True`; returns the path as a Path."""
    path = Path(path)
    if path.exists() and not overwrite:
        expected = "a path that does not exist yet (pass overwrite=True to replace it)"
        raise CryorayInputError(path, "output path", expected, "an existing file")
    if path.is_dir():
        raise CryorayInputError(path, "output path", "a file path", "a directory")
    return path


def check_positive(value: float, path: str | Path | None, field: str) -> float:
    """Refuse zero, negative or non-finite physical sizes (a pixel size of 0 is a missing one)."""
    if not np.isfinite(value) or value <= 0:
        raise CryorayInputError(path, field, "a positive finite number", value)
    return float(value)
