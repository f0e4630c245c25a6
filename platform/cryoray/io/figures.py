"""Plots as ``.png`` with the numbers beside them as ``.csv`` (matplotlib, headless).

Figures are built with the object-oriented API (``Figure`` drawn by ``FigureCanvasAgg``): no pyplot state and
no backend switch, so importing this module changes nothing in the caller's matplotlib.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cryoray.errors import CryorayInputError
from cryoray.io.outputs import atomic_write
from cryoray.io.validate import check_can_write


def agg_figure(**kwargs: Any) -> Figure:
    """A ``Figure(**kwargs)`` drawn by the Agg canvas, whatever backend pyplot uses (no global state touched)."""
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def write_fsc_curves(
    output_dir: str | Path,
    frequency_per_px: np.ndarray,
    curves: Mapping[str, np.ndarray],
    pixel_size_angstrom: float,
    stem: str = "fsc",
    *,
    ylabel: str = "FSC",
    dashed: Collection[str] = (),
) -> dict[str, str]:
    """``<stem>.csv`` (frequency in 1/px and 1/Å, resolution in Å, one column per curve) and ``<stem>.png``.

    The plot has the 0.5 and 0.143 thresholds; curves named in ``dashed`` (baselines) are drawn dashed. NaN
    entries (shells without data, see `cryoray.physics.metrics`) are gaps in the plot and empty in the CSV.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    frequency_per_angstrom = np.asarray(frequency_per_px) / pixel_size_angstrom
    with np.errstate(divide="ignore"):
        resolution = np.where(frequency_per_angstrom > 0, 1.0 / frequency_per_angstrom, np.inf)
    table = pd.DataFrame(
        {
            "frequency_per_px": frequency_per_px,
            "frequency_per_angstrom": frequency_per_angstrom,
            "resolution_angstrom": resolution,
            **{name: np.asarray(curve) for name, curve in curves.items()},
        }
    )
    csv_path = output_dir / f"{stem}.csv"
    table.to_csv(csv_path, index=False)
    fig = agg_figure(figsize=(6, 4), dpi=120)
    ax = fig.subplots()
    for name, curve in curves.items():
        ax.plot(frequency_per_angstrom, np.asarray(curve), lw=1.6, ls="--" if name in dashed else "-", label=name)
    for threshold, style in ((0.5, "--"), (0.143, ":")):
        ax.axhline(threshold, color="grey", ls=style, lw=0.8, label=f"FSC = {threshold}")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.1, 1.05)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    png_path = output_dir / f"{stem}.png"
    fig.savefig(png_path)
    return {f"{stem}_csv": str(csv_path.resolve()), f"{stem}_png": str(png_path.resolve())}


def _slab_mean(tomogram: np.ndarray, axis: int, centre_px: int, half_px: int) -> np.ndarray:
    """Mean over the slices centre ± half_px along one axis: averaging a few slices lifts the contrast of noisy tomograms."""
    first, last = max(centre_px - half_px, 0), min(centre_px + half_px + 1, tomogram.shape[axis])
    return np.take(tomogram, np.arange(first, last), axis=axis).astype(np.float64).mean(axis=axis)


def write_orthoslices_with_picks(
    path: str | Path,
    tomogram: np.ndarray,
    picks: pd.DataFrame,
    truth: pd.DataFrame | None = None,
    slab_px: int = 10,
    class_names: dict[int, str] | None = None,
    *,
    average_px: int = 2,
    overwrite: bool = False,
) -> Path:
    """PNG of the three central orthoslices (XY, XZ, YZ) of a (Z, Y, X) tomogram with the picks drawn on them.

    Each slice is the mean of the slices within ± ``average_px`` of the centre (contrast), shown
    between its 1st and 99th percentile. Picks (``x_px, y_px, z_px, class_id``) within ± ``slab_px``
    of a slice are drawn on it as filled circles coloured by class, ``truth`` (same columns) as
    hollow squares; the legend names the classes (``class_names``, else the ids). An existing
    ``path`` is refused unless ``overwrite=True``, as for every cryoray writer.
    """
    path = check_can_write(path, overwrite)
    if path.suffix.lower() != ".png":
        raise CryorayInputError(path, "file type", "a .png file", path.suffix or "no suffix")
    volume = np.asarray(tomogram)
    if volume.ndim != 3:
        raise ValueError(f"write_orthoslices_with_picks: expected a (Z, Y, X) tomogram, got shape {volume.shape}")
    tables = {"picks": picks} if truth is None else {"picks": picks, "truth": truth}
    for name, table in tables.items():
        missing = [c for c in ("x_px", "y_px", "z_px", "class_id") if c not in table]
        if missing:
            raise CryorayInputError(None, name, "a table with columns x_px, y_px, z_px, class_id", f"no column {missing[0]}")
    names = class_names or {}
    classes = sorted(set().union(*(table["class_id"].astype(int).tolist() for table in tables.values())))
    palette = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]  # distinct colours for SHREC's 12 classes
    colours = {cls: palette(i % palette.N) for i, cls in enumerate(classes)}
    centre_zyx = [n // 2 for n in volume.shape]
    # (title, projection axis, image row column, image column column, column normal to the slice)
    panels = (
        (f"XY, z = {centre_zyx[0]}", 0, "y_px", "x_px", "z_px"),
        (f"XZ, y = {centre_zyx[1]}", 1, "z_px", "x_px", "y_px"),
        (f"YZ, x = {centre_zyx[2]}", 2, "z_px", "y_px", "x_px"),
    )
    widths = [volume.shape[2], volume.shape[2], volume.shape[1]]
    fig = agg_figure(figsize=(13, 4.8), dpi=120)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": widths})
    for ax, (title, axis, row, column, normal) in zip(axes, panels):
        image = _slab_mean(volume, axis, centre_zyx[axis], average_px)
        low, high = np.percentile(image, [1, 99])
        ax.imshow(image, cmap="gray", origin="lower", vmin=low, vmax=high if high > low else low + 1)
        for name, table in tables.items():
            near = table[(table[normal] - centre_zyx[axis]).abs() <= slab_px]
            style = {"marker": "o", "s": 36, "alpha": 0.7, "linewidths": 0}
            if name == "truth":
                style = {"marker": "s", "s": 64, "facecolors": "none", "linewidths": 1.2}
            for cls, group in near.groupby(near["class_id"].astype(int)):
                colour_key = "edgecolors" if name == "truth" else "c"
                ax.scatter(group[column], group[row], **style, **{colour_key: [colours[cls]]})
        ax.set_title(f"{title} (picks within ±{slab_px} px)", fontsize=9)
        ax.set_xlabel(column.replace("_px", " (px)"))
        ax.set_ylabel(row.replace("_px", " (px)"))
        ax.set_xlim(-0.5, image.shape[1] - 0.5)
        ax.set_ylim(-0.5, image.shape[0] - 0.5)
    handles = [Line2D([], [], ls="", marker="o", color=colours[cls], label=names.get(cls, str(cls))) for cls in classes]
    if truth is not None:
        handles.append(Line2D([], [], ls="", marker="o", color="grey", label="pick"))
        handles.append(Line2D([], [], ls="", marker="s", mfc="none", color="grey", label="ground truth"))
    if handles:
        axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
