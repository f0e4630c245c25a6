"""Checks shared by every reader and writer, so all of them fail the same way on bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoray.errors import CryorayInputError

CHUNK_VALUES = 1 << 24  # values scanned per pass (64 MB of float32): memory stays bounded on a memory-mapped file


def check_finite(array: np.ndarray, path: str | Path | None, field: str = "data") -> None:
    """Refuse NaN/Inf values: training on them silently produces garbage.

    Scans in slabs along the first axis, so a memory-mapped tomogram or stack is checked without being loaded whole.
    """
    data = np.asarray(array)  # a view: a memory map stays on disk
    if data.dtype.kind not in "fc":
        return  # integer and boolean data hold no NaN/Inf
    data = data.reshape(1) if data.ndim == 0 else data
    slab = max(1, CHUNK_VALUES // max(1, data[0].size))
    bad, first = 0, None
    for start in range(0, len(data), slab):
        finite = np.isfinite(data[start : start + slab])
        if not finite.all():
            bad += int(finite.size - np.count_nonzero(finite))
            if first is None:
                index = np.argwhere(~finite)[0]
                first = (start + int(index[0]), *(int(i) for i in index[1:]))
    if bad:
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
