"""Plots as ``.png`` with the numbers beside them as ``.csv`` (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def write_fsc_curve(
    output_dir: str | Path,
    shell_frequency_per_px: np.ndarray,
    fsc: np.ndarray,
    pixel_size_angstrom: float,
    stem: str = "fsc",
) -> dict[str, str]:
    """``fsc.csv`` (frequency in 1/Å and 1/px, resolution in Å, FSC) and ``fsc.png`` with the 0.5 / 0.143 lines."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    frequency_per_angstrom = np.asarray(shell_frequency_per_px) / pixel_size_angstrom
    with np.errstate(divide="ignore"):
        resolution = np.where(frequency_per_angstrom > 0, 1.0 / frequency_per_angstrom, np.inf)
    table = pd.DataFrame(
        {
            "frequency_per_px": shell_frequency_per_px,
            "frequency_per_angstrom": frequency_per_angstrom,
            "resolution_angstrom": resolution,
            "fsc": fsc,
        }
    )
    csv_path = output_dir / f"{stem}.csv"
    table.to_csv(csv_path, index=False)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(frequency_per_angstrom, fsc, lw=1.8)
    for threshold, style in ((0.5, "--"), (0.143, ":")):
        ax.axhline(threshold, color="grey", ls=style, lw=1, label=f"FSC = {threshold}")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend(frameon=False)
    fig.tight_layout()
    png_path = output_dir / f"{stem}.png"
    fig.savefig(png_path)
    plt.close(fig)
    return {f"{stem}_csv": str(csv_path.resolve()), f"{stem}_png": str(png_path.resolve())}
