"""From a trained segmentation net to picks and scores: tiled inference, DBSCAN, F1 (shared by training and predict).

Tiles are normalised one by one to zero mean and unit std, as the training patches were.
Several tomograms are scored as one: they are laid side by side along x (with a gap wider than the
distance tolerance, instance ids offset), so the counts pool over tomograms exactly as SHREC pools them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryoray.data.patches import split_entries
from cryoray.io.figures import write_orthoslices_with_picks
from cryoray.io.manifest import DatasetManifest
from cryoray.io.mrc import read_mrc, write_mrc
from cryoray.io.star import TomogramFrame, read_coordinates, write_coordinates
from cryoray.nn.precision import Precision, autocast
from cryoray.physics.normalize import standardize
from cryoray.picking import cluster_picks, evaluate_picks, flatten_pick_scores, scores_table, sliding_window_predict


@dataclass(frozen=True)
class PickingSettings:
    """Inference and post-processing settings (paper: 64³ tiles overlapping by 20, DBSCAN eps 1, min 5)."""

    patch_px: int
    overlap_px: int
    batch_size: int
    dbscan_eps_px: float
    dbscan_min_voxels: int
    min_cluster_voxels: int
    tolerance_px: float
    precision: Precision = "fp32"


def segment_tomogram(
    segmenter: torch.nn.Module, tomogram: np.ndarray, settings: PickingSettings, device: torch.device
) -> torch.Tensor:
    """Class probabilities (C, Z, Y, X) of a (Z, Y, X) tomogram, overlaps averaged."""
    segmenter.eval()

    def predict(tiles: torch.Tensor) -> torch.Tensor:
        with autocast(settings.precision, device):
            logits = segmenter(standardize(tiles, ndim=4))[0]  # normalised as the training patches
        return torch.softmax(logits.float(), dim=1)

    volume = torch.from_numpy(np.ascontiguousarray(tomogram, dtype=np.float32))
    return sliding_window_predict(volume, predict, settings.patch_px, settings.overlap_px, settings.batch_size, device).cpu()


def pick_tomogram(
    segmenter: torch.nn.Module, tomogram: np.ndarray, settings: PickingSettings, device: torch.device
) -> tuple[pd.DataFrame, np.ndarray]:
    """Picks (x_px, y_px, z_px, class_id, score, n_voxels) and the argmax class map (Z, Y, X) uint8."""
    probabilities = segment_tomogram(segmenter, tomogram, settings, device)
    class_map = probabilities.argmax(dim=0).to(torch.uint8).numpy()
    picks = cluster_picks(
        class_map,
        probabilities.numpy(),
        eps_px=settings.dbscan_eps_px,
        min_voxels=settings.dbscan_min_voxels,
        min_cluster_voxels=settings.min_cluster_voxels,
    )
    return picks, class_map


def score_tomograms(
    items: list[tuple[pd.DataFrame, pd.DataFrame, np.ndarray | None]],
    tolerance_px: float,
    class_names: Mapping[int, str],
    size_groups: Mapping[int, str],
) -> dict:
    """``evaluate_picks`` over several (picks, truth, instance map or None) at once, counts pooled."""
    gap_px = int(math.ceil(tolerance_px)) + 2
    with_maps = all(instances is not None for _, _, instances in items)
    depth = max((inst.shape[0] for _, _, inst in items if inst is not None), default=0)
    height = max((inst.shape[1] for _, _, inst in items if inst is not None), default=0)
    all_picks, all_truth, maps = [], [], []
    offset_px, id_offset = 0, 0
    for picks, truth, instances in items:
        if instances is not None:
            width = int(instances.shape[2])
        else:
            xs = np.concatenate([picks["x_px"].to_numpy(np.float64), truth["x_px"].to_numpy(np.float64)])
            width = int(np.ceil(xs.max(initial=0.0))) + 1
        all_picks.append(picks.assign(x_px=picks["x_px"] + offset_px))
        all_truth.append(truth[["x_px", "y_px", "z_px", "class_id"]].assign(x_px=truth["x_px"] + offset_px))
        if with_maps and instances is not None:  # with_maps: every item has its instance map
            placed = np.zeros((depth, height, width + gap_px), dtype=np.int64)
            ids = instances.astype(np.int64)
            placed[: ids.shape[0], : ids.shape[1], :width] = np.where(ids > 0, ids + id_offset, 0)
            maps.append(placed)
        offset_px += width + gap_px
        id_offset += len(truth)
    return evaluate_picks(
        pd.concat(all_picks, ignore_index=True),
        pd.concat(all_truth, ignore_index=True),
        instance_map=np.concatenate(maps, axis=2) if with_maps else None,
        tolerance_px=tolerance_px,
        class_names=class_names,
        size_groups=size_groups,
    )


def headline_metrics(result: dict, prefix: str) -> dict[str, float]:
    """F1 per class and size group, macro P/R/F1 per rule, and ``<prefix>f1_macro`` (hit-box rule when present).

    The full table (tp/fp/fn per class and rule) is the scores CSV; MLflow gets what one plots.
    """
    rule = "hitbox" if "hitbox" in result else "distance"
    flat = flatten_pick_scores(result, prefix.rstrip("_"))
    wanted = ("/f1/", "/f1_group/", "/f1_macro", "/precision_macro", "/recall_macro")
    headline = {key: value for key, value in flat.items() if any(part in key for part in wanted)}
    headline[f"{prefix}f1_macro"] = result[rule]["macro"]["f1"]
    return headline


def _split_results(
    segmenter: torch.nn.Module,
    dataset_dir: Path,
    manifest: DatasetManifest,
    split: str,
    settings: PickingSettings,
    device: torch.device,
) -> tuple[dict, list[tuple[str, np.ndarray, pd.DataFrame, pd.DataFrame, np.ndarray, np.ndarray]]]:
    names = {s.class_id: s.name for s in manifest.species}
    groups = {s.class_id: s.size_group for s in manifest.species}
    per_tomogram = []
    for entry in split_entries(manifest, split):
        tomogram = read_mrc(dataset_dir / entry.tomogram).data
        picks, class_map = pick_tomogram(segmenter, tomogram, settings, device)
        truth = read_coordinates(dataset_dir / entry.particles)
        instances = read_mrc(dataset_dir / entry.labels["instances"]).data
        per_tomogram.append((entry.name, tomogram, picks, truth, np.rint(instances).astype(np.int64), class_map))
    result = score_tomograms([(p, t, i) for _, _, p, t, i, _ in per_tomogram], settings.tolerance_px, names, groups)
    return result, per_tomogram


def evaluate_split(
    segmenter: torch.nn.Module,
    dataset_dir: Path,
    manifest: DatasetManifest,
    split: str,
    settings: PickingSettings,
    device: torch.device,
    prefix: str,
) -> dict[str, float]:
    """Pick every tomogram of a split and score against its ground truth: flat metrics for MLflow."""
    with torch.no_grad():
        result, _ = _split_results(segmenter, dataset_dir, manifest, split, settings, device)
    return headline_metrics(result, prefix)


def write_split_outputs(
    segmenter: torch.nn.Module,
    dataset_dir: Path,
    manifest: DatasetManifest,
    split: str,
    settings: PickingSettings,
    device: torch.device,
    output_dir: Path,
) -> tuple[dict[str, float], dict[str, str]]:
    """Pick and score a split and write picks (.star/.csv), class maps, orthoslice PNGs and the scores table."""
    with torch.no_grad():
        result, per_tomogram = _split_results(segmenter, dataset_dir, manifest, split, settings, device)
    names = {s.class_id: s.name for s in manifest.species}
    output_dir.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, str] = {}
    for name, tomogram, picks, truth, _, class_map in per_tomogram:
        named = picks.assign(tomo_name=name)
        frames = {name: TomogramFrame(tomogram.shape, manifest.voxel_size_angstrom)}  # RELION 5 columns in the STAR file
        for suffix in ("star", "csv"):
            path = write_coordinates(output_dir / f"picks_{name}.{suffix}", named, overwrite=True, frames=frames)
            artifacts[f"picks_{name}_{suffix}"] = str(path)
        artifacts[f"class_map_{name}"] = str(
            write_mrc(
                output_dir / f"class_map_{name}.mrc", class_map.astype(np.float32), manifest.voxel_size_angstrom, overwrite=True
            )
        )
        artifacts[f"orthoslices_{name}"] = str(
            write_orthoslices_with_picks(
                output_dir / f"orthoslices_{name}.png", tomogram, picks, truth, class_names=names, overwrite=True
            )
        )
    table = output_dir / f"scores_{split}.csv"
    scores_table(result).to_csv(table, index=False)
    artifacts[f"scores_{split}"] = str(table)
    return headline_metrics(result, f"{split}_"), artifacts
