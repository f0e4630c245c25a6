"""From a per-voxel class map to particle picks: DBSCAN per class, one pick per cluster, in linear time.

RobPicker (Methods): the argmax class map is clustered per class with DBSCAN (eps 1 voxel, min_samples 5)
and each cluster's centre of gravity is a pick. On the integer voxel grid with eps < 2, a voxel's
eps-neighbourhood is a fixed 3×3×3 footprint (eps 1: itself and its 6 face neighbours), so DBSCAN is
computed exactly by local filters instead of a neighbour search:

1. core voxels: the class's voxels whose footprint holds at least ``min_samples`` voxels of the class
   (itself included), a correlation with the footprint;
2. clusters: connected components of the core voxels, with the footprint as connectivity
   (`scipy.ndimage.label`, numbered in raster order of their first voxel);
3. border voxels (of the class, not core, with a core voxel in reach) join the reachable cluster with the
   lowest number; the rest is noise.

This equals scikit-learn's DBSCAN on the voxel coordinates in raster order, labels included: its clusters
grow in the order of their first core voxel and a border voxel keeps the first cluster that reaches it
(tested against it on touching particles). Time and memory are linear in the bounding box of each class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

__all__ = ["PICK_COLUMNS", "ClusterBy", "cluster_picks", "dbscan_voxel_labels"]

PICK_COLUMNS = ("x_px", "y_px", "z_px", "class_id", "score", "n_voxels")
ClusterBy = Literal["class", "foreground"]
_UNREACHED = np.iinfo(np.int32).max


def _to_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def _empty_picks() -> pd.DataFrame:
    dtypes = {"x_px": float, "y_px": float, "z_px": float, "class_id": np.int64, "score": float, "n_voxels": np.int64}
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in dtypes.items()})


def _footprint(eps_px: float) -> np.ndarray:
    """The 3×3×3 boolean eps-ball of voxel offsets (norm ≤ eps), exact for 0 < eps < 2."""
    offsets = np.indices((3, 3, 3)) - 1
    return np.sqrt((offsets**2).sum(axis=0)) <= eps_px


def dbscan_voxel_labels(mask: np.ndarray, eps_px: float = 1.0, min_samples: int = 5) -> tuple[np.ndarray, int]:
    """DBSCAN of the voxels of a boolean (Z, Y, X) mask: cluster numbers 1..n (0 = not in the mask, or noise)."""
    if not 0 < eps_px < 2:
        raise ValueError(f"dbscan_voxel_labels: eps_px must be in (0, 2) voxels (a 3×3×3 neighbourhood), got {eps_px}")
    footprint = _footprint(eps_px)
    neighbours = ndimage.correlate(mask.astype(np.uint8), footprint.astype(np.uint8), mode="constant")
    core = mask & (neighbours >= min_samples)
    labels, n_clusters = ndimage.label(core, structure=footprint)
    if n_clusters == 0:
        return labels.astype(np.int32), 0
    reached = ndimage.minimum_filter(
        np.where(core, labels, _UNREACHED).astype(np.int32), footprint=footprint, mode="constant", cval=_UNREACHED
    )
    border = mask & ~core & (reached < _UNREACHED)
    return np.where(border, reached, labels).astype(np.int32), int(n_clusters)


def _class_boxes(labels: np.ndarray, background: int) -> dict[int, tuple[slice, ...]]:
    """Bounding box (grown by one voxel, as far as the volume allows) of each non-background class."""
    shifted = labels.astype(np.int64) - min(int(labels.min()), 0) + 1  # find_objects wants labels >= 1
    offset = 1 - min(int(labels.min()), 0)
    boxes = {}
    for index, box in enumerate(ndimage.find_objects(shifted), start=1):
        class_id = index - offset
        if box is None or class_id == background:
            continue
        boxes[class_id] = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(box, labels.shape))
    return boxes


def cluster_picks(
    class_map: np.ndarray | torch.Tensor,
    probabilities: np.ndarray | torch.Tensor | None = None,
    eps_px: float = 1.0,
    min_voxels: int = 5,
    background: int = 0,
    min_cluster_voxels: int | Mapping[int, int] = 1,
    cluster_by: ClusterBy = "class",
) -> pd.DataFrame:
    """Picks from a (Z, Y, X) integer class map: DBSCAN, then one pick per cluster at its centre of gravity.

    ``cluster_by="class"`` (the paper) runs DBSCAN per non-background class. ``"foreground"`` runs it once on every
    non-background voxel and gives each cluster the class most of its voxels have: a particle whose voxels the net
    splits between two classes (e.g. two large species) is one pick, not two. ``eps_px`` (voxels, below 2) and
    ``min_voxels`` are DBSCAN's ``eps`` and ``min_samples`` (the voxel itself included); DBSCAN's noise is dropped.
    ``min_cluster_voxels`` then drops clusters with fewer voxels (DeepFinder-style size filter; default 1 = none,
    as in the paper), one size for every class or a size per class id (absent classes: 1). Returns a DataFrame
    with ``x_px, y_px, z_px`` (mean voxel index of the cluster; x is the last array axis), ``class_id``, ``score``
    (mean of ``probabilities[class_id]`` over the cluster's voxels, 1.0 without probabilities) and ``n_voxels``,
    sorted by score then size, descending, so that the hit-box rule's "first pick claims the particle" favours
    confident picks.
    """
    labels = _to_numpy(class_map)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"cluster_picks: expected a (Z, Y, X) integer class map, got {labels.dtype} {labels.shape}")
    if probabilities is not None and (probabilities.ndim != 4 or tuple(probabilities.shape[1:]) != labels.shape):
        raise ValueError(
            f"cluster_picks: probabilities must be (C, {', '.join(map(str, labels.shape))}), got {tuple(probabilities.shape)}"
        )
    sizes = min_cluster_voxels if isinstance(min_cluster_voxels, Mapping) else {}
    default_size = 1 if isinstance(min_cluster_voxels, Mapping) else min_cluster_voxels
    if not 0 < eps_px < 2 or min_voxels < 1 or min([default_size, *sizes.values()]) < 1:
        raise ValueError(
            f"cluster_picks: need 0 < eps_px < 2, min_voxels >= 1, min_cluster_voxels >= 1, "
            f"got {eps_px}, {min_voxels}, {min_cluster_voxels}"
        )
    if cluster_by not in ("class", "foreground"):
        raise ValueError(f"cluster_picks: cluster_by must be 'class' or 'foreground', got {cluster_by!r}")
    boxes = _class_boxes(labels, background)
    if probabilities is not None and any(not 0 <= c < probabilities.shape[0] for c in boxes):
        raise ValueError(
            f"cluster_picks: classes {sorted(boxes)} need channels in probabilities of {probabilities.shape[0]} classes"
        )
    groups: list[tuple[int | None, tuple[slice, ...], np.ndarray]]  # (class or None for a vote, box, mask)
    if cluster_by == "class":
        groups = [(class_id, box, labels[box] == class_id) for class_id, box in sorted(boxes.items())]
    else:
        whole = tuple(slice(0, n) for n in labels.shape)
        groups = [(None, whole, labels != background)] if boxes else []
    channels = None if probabilities is None else _to_numpy(probabilities)
    rows = []
    for class_id, box, mask in groups:
        clusters, n_clusters = dbscan_voxel_labels(mask, eps_px, min_voxels)
        if n_clusters == 0:
            continue
        member = np.flatnonzero(clusters)
        cluster = clusters.reshape(-1)[member] - 1
        zyx = np.stack(np.unravel_index(member, clusters.shape), axis=1) + [b.start for b in box]
        n_voxels = np.bincount(cluster, minlength=n_clusters)
        sums_zyx = np.stack([np.bincount(cluster, weights=zyx[:, a], minlength=n_clusters) for a in range(3)], 1)
        centre_zyx = sums_zyx / n_voxels[:, None]
        if class_id is None:  # majority vote of the cluster's voxel classes
            voxel_class = labels[tuple(zyx.T)].astype(np.int64)
            votes = np.zeros((n_clusters, int(voxel_class.max()) + 1), dtype=np.int64)
            np.add.at(votes, (cluster, voxel_class), 1)
            cluster_class = votes.argmax(axis=1)
        else:
            cluster_class = np.full(n_clusters, class_id, dtype=np.int64)
        if channels is None:
            score = np.ones(n_clusters)
        else:
            voxel_score = channels[(cluster_class[cluster], *zyx.T)].astype(np.float64)
            score = np.bincount(cluster, weights=voxel_score, minlength=n_clusters) / n_voxels
        big = n_voxels >= np.array([sizes.get(int(c), default_size) for c in cluster_class], dtype=np.int64)
        rows.append(
            pd.DataFrame(
                {
                    "x_px": centre_zyx[big, 2],
                    "y_px": centre_zyx[big, 1],
                    "z_px": centre_zyx[big, 0],
                    "class_id": cluster_class[big],
                    "score": score[big],
                    "n_voxels": n_voxels[big].astype(np.int64),
                }
            )
        )
    if not rows:
        return _empty_picks()
    picks = pd.concat(rows, ignore_index=True)
    return picks.sort_values(["score", "n_voxels"], ascending=False, kind="stable").reset_index(drop=True)
