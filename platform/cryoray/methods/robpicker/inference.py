"""From a trained segmentation net to picks and scores: tiled inference, DBSCAN, F1 (shared by training and predict).

Tiles are normalised one by one to zero mean and unit std, as the training patches were.
Several tomograms are scored as one: they are laid side by side along x (with a gap wider than the
distance tolerance, instance ids offset), so the counts pool over tomograms exactly as SHREC pools them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryoray.data.patches import WEDGE_PRESERVING_FLIPS, split_entries
from cryoray.io.figures import write_orthoslices_with_picks
from cryoray.io.manifest import DatasetManifest
from cryoray.io.mrc import read_mrc, write_mrc
from cryoray.io.star import TomogramFrame, read_coordinates, write_coordinates
from cryoray.nn.precision import Precision, autocast
from cryoray.physics.normalize import standardize
from cryoray.picking import ClusterBy, cluster_picks, evaluate_picks, flatten_pick_scores, scores_table, sliding_window_predict


@dataclass(frozen=True)
class PickingSettings:
    """Inference and post-processing settings (paper: 64³ tiles overlapping by 20, DBSCAN eps 1, min 5)."""

    patch_px: int
    overlap_px: int
    batch_size: int
    dbscan_eps_px: float
    dbscan_min_voxels: int
    min_cluster_voxels: int | Mapping[int, int]  # one floor, or one per class id (calibrated on validation)
    tolerance_px: float
    cluster_by: ClusterBy = "class"
    precision: Precision = "fp32"
    test_time_flips: bool = False  # average over the training augmentation's 180° rotations


def segment_tomogram(
    segmenter: torch.nn.Module, tomogram: np.ndarray, settings: PickingSettings, device: torch.device
) -> torch.Tensor:
    """Class probabilities (C, Z, Y, X) of a (Z, Y, X) tomogram, overlaps averaged (and, with
    ``test_time_flips``, the four 180° rotations the training patches were augmented with: they keep the missing
    wedge where it is and a particle's hand)."""
    segmenter.eval()
    rotations = WEDGE_PRESERVING_FLIPS if settings.test_time_flips else ((),)

    def rotated(tiles: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        dims = [axis + 2 for axis in axes]  # of (B, 1, Z, Y, X) tiles
        with autocast(settings.precision, device):
            logits = segmenter(standardize(tiles.flip(dims), ndim=4))[0]  # normalised as the training patches
        return torch.softmax(logits.float(), dim=1).flip(dims)

    def predict(tiles: torch.Tensor) -> torch.Tensor:
        return torch.stack([rotated(tiles, axes) for axes in rotations]).mean(dim=0)

    volume = torch.from_numpy(np.ascontiguousarray(tomogram, dtype=np.float32))
    return sliding_window_predict(volume, predict, settings.patch_px, settings.overlap_px, settings.batch_size, device).cpu()


def pick_tomogram(
    segmenter: torch.nn.Module, tomogram: np.ndarray, settings: PickingSettings, device: torch.device
) -> tuple[pd.DataFrame, np.ndarray]:
    """Picks (x_px, y_px, z_px, class_id, score, n_voxels) and the argmax class map (Z, Y, X) uint8."""
    return picks_from_probabilities(segment_tomogram(segmenter, tomogram, settings, device), settings)


def picks_from_probabilities(probabilities: torch.Tensor, settings: PickingSettings) -> tuple[pd.DataFrame, np.ndarray]:
    """Picks and the argmax class map of a (C, Z, Y, X) probability volume (argmax, DBSCAN, size floor)."""
    class_map = probabilities.argmax(dim=0).to(torch.uint8).numpy()
    picks = cluster_picks(
        class_map,
        probabilities.numpy(),
        eps_px=settings.dbscan_eps_px,
        min_voxels=settings.dbscan_min_voxels,
        min_cluster_voxels=settings.min_cluster_voxels,
        cluster_by=settings.cluster_by,
    )
    return picks, class_map


def score_tomograms(
    items: Sequence[tuple[pd.DataFrame, pd.DataFrame, np.ndarray | None]],
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


@dataclass
class SegmentedTomogram:
    """A split's tomogram with its class probabilities and ground truth: picked once per picking setting."""

    name: str
    tomogram: np.ndarray
    probabilities: torch.Tensor
    truth: pd.DataFrame
    instances: np.ndarray


def segment_split(
    segmenter: torch.nn.Module,
    dataset_dir: Path,
    manifest: DatasetManifest,
    split: str,
    settings: PickingSettings,
    device: torch.device,
) -> list[SegmentedTomogram]:
    with torch.no_grad():
        return [
            SegmentedTomogram(
                name=entry.name,
                tomogram=(tomogram := read_mrc(dataset_dir / entry.tomogram).data),
                probabilities=segment_tomogram(segmenter, tomogram, settings, device),
                truth=read_coordinates(dataset_dir / entry.particles),
                instances=np.rint(read_mrc(dataset_dir / entry.labels["instances"]).data).astype(np.int64),
            )
            for entry in split_entries(manifest, split)
        ]


def score_split(
    segmented: list[SegmentedTomogram], manifest: DatasetManifest, settings: PickingSettings
) -> tuple[dict, list[tuple[pd.DataFrame, np.ndarray]]]:
    """Pick every segmented tomogram with ``settings`` and score the picks pooled: (result, [(picks, class map)])."""
    names = {s.class_id: s.name for s in manifest.species}
    groups = {s.class_id: s.size_group for s in manifest.species}
    picked = [picks_from_probabilities(item.probabilities, settings) for item in segmented]
    items = [(picks, item.truth, item.instances) for (picks, _), item in zip(picked, segmented)]
    return score_tomograms(items, settings.tolerance_px, names, groups), picked


# Per-class cluster-size floors (voxels) the calibration tries on the validation tomograms.
CALIBRATION_SIZES = (1, 5, 10, 20, 40, 80, 160, 320)


def calibrate_min_cluster_voxels(
    segmented: list[SegmentedTomogram], manifest: DatasetManifest, settings: PickingSettings
) -> dict[int, int]:
    """For each class, the cluster-size floor of :data:`CALIBRATION_SIZES` with the best F1 on these (validation)
    tomograms, the smallest on ties: fragments of the net's maps are false picks, and how large they get differs
    per class (a standard post-processing choice made on held-out data, not on the test set)."""
    best: dict[int, tuple[float, int]] = {}
    for size in CALIBRATION_SIZES:
        result, _ = score_split(segmented, manifest, replace(settings, min_cluster_voxels=size))
        rule = "hitbox" if "hitbox" in result else "distance"
        for class_id, entry in result[rule]["per_class"].items():
            if entry["f1"] > best.get(class_id, (-1.0, 1))[0]:
                best[class_id] = (entry["f1"], size)
    return {class_id: size for class_id, (_, size) in sorted(best.items())}


@dataclass(frozen=True)
class Calibration:
    """Post-processing chosen on the validation tomograms: how voxels are clustered, and floors per class or None."""

    cluster_by: ClusterBy
    min_cluster_voxels: dict[int, int] | None


def calibrate_picking(
    segmented: list[SegmentedTomogram],
    manifest: DatasetManifest,
    settings: PickingSettings,
    cluster_options: Sequence[ClusterBy],
    calibrate_sizes: bool,
) -> Calibration:
    """Of ``cluster_options`` (each with its own calibrated floors when ``calibrate_sizes``), the one with the best
    macro F1 on these (validation) tomograms, the first on ties (a net that splits a particle's voxels between
    two classes is picked twice per class but once over the foreground; which wins depends on the net)."""
    scored = []
    for cluster_by in cluster_options:
        options = replace(settings, cluster_by=cluster_by)
        sizes = calibrate_min_cluster_voxels(segmented, manifest, options) if calibrate_sizes else None
        result, _ = score_split(segmented, manifest, options if sizes is None else replace(options, min_cluster_voxels=sizes))
        f1 = result["hitbox" if "hitbox" in result else "distance"]["macro"]["f1"]
        scored.append((f1, Calibration(cluster_by, sizes)))
    return max(scored, key=lambda pair: pair[0])[1]  # max keeps the first of equals


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
    result, _ = score_split(segment_split(segmenter, dataset_dir, manifest, split, settings, device), manifest, settings)
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
    segmented = segment_split(segmenter, dataset_dir, manifest, split, settings, device)
    result, picked = score_split(segmented, manifest, settings)
    names = {s.class_id: s.name for s in manifest.species}
    output_dir.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, str] = {}
    for item, (picks, class_map) in zip(segmented, picked):
        name, tomogram, truth = item.name, item.tomogram, item.truth
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
