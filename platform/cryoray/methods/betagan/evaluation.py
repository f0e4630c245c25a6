"""Held-out evaluation of a denoiser: MSE/PSNR/SSIM on [0, 1]-scaled images, classical baselines, figures, clustering.

Intensity range: every image (clean, noisy, denoised) is min–max scaled to [0, 1] on its own before MSE, PSNR
(data range 1) and SSIM (data range 1), as the supplement's numbers imply (MSE 3e-3 ↔ PSNR 25.2 dB) and as the
authors' group stores images (8-bit PNG of the min–max scaled image). PSNR and SSIM are ``cryoray.physics``'s
(SSIM: Gaussian window σ = 1.5, population statistics, as skimage with ``gaussian_weights=True``).
"""

from __future__ import annotations

from pathlib import Path
from typing import overload

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from matplotlib.figure import Figure

from cryoray.errors import CryorayInputError
from cryoray.io.manifest import DatasetManifest
from cryoray.physics import psnr, ssim
from cryoray.physics.normalize import standardization_frame

CLEAN_COLUMN = "clean_image"


def unit_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Each image (…, D, D) min–max scaled to [0, 1] (a constant image maps to 0)."""
    x = torch.as_tensor(images, dtype=torch.float64)
    low = x.amin(dim=(-2, -1), keepdim=True)
    span = (x.amax(dim=(-2, -1), keepdim=True) - low).clamp_min(1e-12)
    return (x - low) / span


def image_metrics(estimate: np.ndarray | torch.Tensor, clean: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image MSE, PSNR (dB) and SSIM of ``estimate`` against ``clean``, both (n, D, D), on the [0, 1] scale."""
    x, ref = unit_range(estimate), unit_range(clean)
    return {
        "mse": ((x - ref) ** 2).mean(dim=(-2, -1)).numpy(),
        "psnr": psnr(x, ref, data_range=1.0, ndim=2).numpy(),
        "ssim": ssim(x, ref, data_range=1.0).numpy(),
    }


Frame = tuple[torch.Tensor, torch.Tensor]  # (mean, std) of ``standardization_frame``


@overload
def normalise_pair(noisy: torch.Tensor) -> tuple[torch.Tensor, None, Frame]: ...


@overload
def normalise_pair(noisy: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Frame]: ...


def normalise_pair(noisy: torch.Tensor, clean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, Frame]:
    """Standardise each noisy image (zero mean, unit std) and put its clean partner in the same frame.

    The denoiser then never depends on a dataset's intensity scale; ``denormalise`` maps its output back.
    """
    mean, std = standardization_frame(noisy, ndim=2)
    return (noisy - mean) / std, None if clean is None else (clean - mean) / std, (mean, std)


def denormalise(images: torch.Tensor, frame: Frame) -> torch.Tensor:
    mean, std = frame
    return images * std + mean


@torch.no_grad()
def denoise_images(
    generator: torch.nn.Module, noisy: np.ndarray, batch_size: int = 64, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Apply a trained generator (eval mode) to a stack (n, D, D) in its own intensity scale."""
    generator.eval()
    out = np.empty(noisy.shape, dtype=np.float32)
    for start in range(0, len(noisy), batch_size):
        y = torch.as_tensor(noisy[start : start + batch_size], dtype=torch.float32, device=device)
        y_n, _, frame = normalise_pair(y)
        out[start : start + batch_size] = denormalise(generator(y_n), frame).cpu().numpy()
    return out


def nlm_denoise(noisy: np.ndarray) -> np.ndarray:
    """scikit-image non-local means per image, noise σ from ``estimate_sigma`` (the usual unsupervised setting)."""
    from skimage.restoration import denoise_nl_means, estimate_sigma

    out = np.empty_like(noisy, dtype=np.float32)
    for i, image in enumerate(noisy.astype(np.float64)):
        sigma = float(estimate_sigma(image))
        out[i] = denoise_nl_means(image, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)
    return out


def bm3d_denoise(noisy: np.ndarray) -> np.ndarray | None:
    """BM3D (PyPI ``bm3d``, Mäkinen et al.) per image with σ from ``estimate_sigma``; None when not installed."""
    try:
        import bm3d
    except ImportError:
        return None
    from skimage.restoration import estimate_sigma

    out = np.empty_like(noisy, dtype=np.float32)
    for i, image in enumerate(noisy.astype(np.float64)):
        out[i] = bm3d.bm3d(image, sigma_psd=float(estimate_sigma(image)))
    return out


def read_split_images(dataset_dir: Path, manifest: DatasetManifest, first: int, stop: int) -> dict[str, np.ndarray]:
    """Rows with ``first <= particle_index < stop`` read straight from the Parquet shards (small splits only)."""
    if CLEAN_COLUMN not in manifest.columns:
        raise CryorayInputError(
            dataset_dir,
            "columns",
            f"a paired dataset with a {CLEAN_COLUMN!r} column (recipe keep_clean_images: true)",
            sorted(manifest.columns),
        )
    parts: dict[str, list[np.ndarray]] = {"image": [], CLEAN_COLUMN: [], "particle_index": []}
    for entry in manifest.shards:
        table = pq.read_table(Path(dataset_dir) / entry.path, columns=["image", CLEAN_COLUMN, "particle_index"])
        index = table.column("particle_index").to_numpy()
        keep = np.flatnonzero((index >= first) & (index < stop))
        if keep.size == 0:
            continue
        table = table.take(keep)
        for name in ("image", CLEAN_COLUMN):
            parts[name].append(table.column(name).combine_chunks().to_numpy_ndarray())
        parts["particle_index"].append(table.column("particle_index").to_numpy())
    if not parts["image"]:
        raise CryorayInputError(dataset_dir, "particle_index", f"rows in [{first}, {stop})", "none")
    order = np.argsort(np.concatenate(parts["particle_index"]))
    return {name: np.concatenate(values)[order] for name, values in parts.items()}


def write_image_grid(path: Path, rows: dict[str, np.ndarray], columns: int = 8) -> Path:
    """A PNG with one row per named stack (clean / noisy / each denoiser), each image min–max scaled.

    A bare ``Figure`` renders without pyplot, so no matplotlib backend is chosen for the whole process."""
    columns = min(columns, *(len(v) for v in rows.values()))
    fig = Figure(figsize=(1.3 * columns + 1.2, 1.3 * len(rows)))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        scaled = unit_range(images[:columns]).numpy()
        for c in range(columns):
            axis = axes[r][c]
            axis.imshow(scaled[c], cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def metrics_table(clean: np.ndarray, estimates: dict[str, np.ndarray], particle_index: np.ndarray) -> pd.DataFrame:
    """One row per (method, image): MSE, PSNR, SSIM on the [0, 1] scale."""
    frames = []
    for name, estimate in estimates.items():
        values = image_metrics(estimate, clean)
        frames.append(pd.DataFrame({"method": name, "particle_index": particle_index, **values}))
    return pd.concat(frames, ignore_index=True)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation per method (the supplement's "mean (sd)")."""
    summary = table.groupby("method", sort=False)[["mse", "psnr", "ssim"]].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    return summary.reset_index()


def clustering_accuracy(images: np.ndarray, labels: np.ndarray, n_neighbors: int = 10, seed: int = 0) -> float:
    """Supplement note 5: Isomap to 2D, k-means (k = 2), accuracy under the better of the two label matchings."""
    from sklearn.cluster import KMeans
    from sklearn.manifold import Isomap

    features = unit_range(images).reshape(len(images), -1).numpy()
    embedding = Isomap(n_neighbors=n_neighbors, n_components=2).fit_transform(features)
    assigned = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(embedding)
    agree = float(np.mean(assigned == labels))
    return max(agree, 1.0 - agree)
