"""CryoGEN-II figure: central XY/XZ/YZ slices of input / output / ground truth (FSC curves: `cryoray.io.figures`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryoray.io.figures import agg_figure
from cryoray.io.validate import check_can_write


def write_central_slices(path: str | Path, volumes: dict[str, np.ndarray], overwrite: bool = False) -> Path:
    """One row per volume (e.g. input, output, ground truth), columns the central XY, XZ and YZ slices.

    Each volume is shown between its own 1st and 99th percentile, so volumes in different units compare by
    structure; the missing wedge shows as elongation along z in the XZ and YZ columns.
    """
    path = check_can_write(path, overwrite)
    names = list(volumes)
    shape = next(iter(volumes.values())).shape
    widths = [shape[2], shape[2], shape[1]]
    fig = agg_figure(figsize=(11, 3.4 * len(names)), dpi=110)
    axes = fig.subplots(len(names), 3, squeeze=False, gridspec_kw={"width_ratios": widths})
    for row, name in enumerate(names):
        volume = np.asarray(volumes[name], dtype=np.float64)
        centre = [n // 2 for n in volume.shape]
        panels = (
            (f"{name}: XY, z = {centre[0]}", volume[centre[0]], "x (px)", "y (px)"),
            (f"{name}: XZ, y = {centre[1]}", volume[:, centre[1]], "x (px)", "z (px)"),
            (f"{name}: YZ, x = {centre[2]}", volume[:, :, centre[2]], "y (px)", "z (px)"),
        )
        low, high = np.percentile(volume, [1, 99])
        for ax, (title, image, xlabel, ylabel) in zip(axes[row], panels):
            ax.imshow(image, cmap="gray", origin="lower", vmin=low, vmax=high if high > low else low + 1)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path)
    return path
