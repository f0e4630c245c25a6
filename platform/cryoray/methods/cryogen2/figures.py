"""CryoGEN-II figures: central XY/XZ/YZ slices of input / output / ground truth, and FSC curves (PNG + CSV)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

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
    fig, axes = plt.subplots(len(names), 3, figsize=(11, 3.4 * len(names)), dpi=110, squeeze=False, gridspec_kw={"width_ratios": widths})
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
    plt.close(fig)
    return path


def write_fsc_curves(
    output_dir: str | Path, frequency_per_px: np.ndarray, curves: dict[str, np.ndarray], pixel_size_angstrom: float, stem: str = "fsc"
) -> dict[str, str]:
    """``<stem>.csv`` (frequency in 1/px and 1/Å, one column per curve) and ``<stem>.png`` with the 0.5 / 0.143 lines."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    frequency_per_angstrom = np.asarray(frequency_per_px) / pixel_size_angstrom
    table = pd.DataFrame({"frequency_per_px": frequency_per_px, "frequency_per_angstrom": frequency_per_angstrom, **curves})
    csv_path = output_dir / f"{stem}.csv"
    table.to_csv(csv_path, index=False)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, curve in curves.items():
        ax.plot(frequency_per_angstrom[2:], np.asarray(curve)[2:], lw=1.6, ls="--" if name.startswith("input") else "-", label=name)
    for threshold, style in ((0.5, "--"), (0.143, ":")):
        ax.axhline(threshold, color="grey", ls=style, lw=0.8)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC against ground truth")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    png_path = output_dir / f"{stem}.png"
    fig.savefig(png_path)
    plt.close(fig)
    return {f"{stem}_csv": str(csv_path.resolve()), f"{stem}_png": str(png_path.resolve())}
