"""Matching particle picks to the true particles: one-to-one within a distance, or SHREC's hit boxes.

The two rules of a picking benchmark; :mod:`cryoray.picking.scoring` reports them per class and size group.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["match_picks", "picking_scores"]


def _as_points(xyz: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(xyz.detach().cpu() if isinstance(xyz, torch.Tensor) else xyz, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise ValueError(f"picking: {name} must have shape (N, 3) (or (N, 2)), got {arr.shape}")
    return arr


def _as_classes(cls: torch.Tensor | np.ndarray | None, n: int, name: str) -> np.ndarray:
    if cls is None:
        return np.zeros(n, dtype=np.int64)
    arr = np.asarray(cls.detach().cpu() if isinstance(cls, torch.Tensor) else cls).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"picking: {name} has {arr.shape[0]} entries for {n} coordinates")
    return arr


def match_picks(
    pred_xyz: torch.Tensor | np.ndarray,
    pred_class: torch.Tensor | np.ndarray | None,
    true_xyz: torch.Tensor | np.ndarray,
    true_class: torch.Tensor | np.ndarray | None,
    max_distance_px: float,
) -> dict:
    """One-to-one matching of picks to true particles of the same class within ``max_distance_px``.

    Per class, the assignment minimising the total distance (Hungarian, ``linear_sum_assignment``)
    over the pairs closer than the limit. Coordinates are (x, y, z) pixels. Classes may be None
    (one class). Returns ``pred_index``, ``true_index`` (matched pairs, int64 tensors) and
    ``distance_px``.
    """
    pred, true = _as_points(pred_xyz, "pred_xyz"), _as_points(true_xyz, "true_xyz")
    if pred.shape[1] != true.shape[1]:
        raise ValueError(f"match_picks: predictions are {pred.shape[1]}D but true positions {true.shape[1]}D")
    if not max_distance_px > 0:
        raise ValueError(f"match_picks: max_distance_px must be > 0, got {max_distance_px}")
    pred_cls = _as_classes(pred_class, len(pred), "pred_class")
    true_cls = _as_classes(true_class, len(true), "true_class")
    pairs_pred, pairs_true, pairs_dist = [], [], []
    for cls in np.intersect1d(np.unique(pred_cls), np.unique(true_cls)):
        p_idx, t_idx = np.flatnonzero(pred_cls == cls), np.flatnonzero(true_cls == cls)
        dist = np.linalg.norm(pred[p_idx, None, :] - true[None, t_idx, :], axis=-1)
        allowed = dist <= max_distance_px
        cost = np.where(allowed, dist, max_distance_px * 1e6 + 1.0)
        rows, cols = linear_sum_assignment(cost)
        keep = allowed[rows, cols]
        pairs_pred.append(p_idx[rows[keep]])
        pairs_true.append(t_idx[cols[keep]])
        pairs_dist.append(dist[rows[keep], cols[keep]])
    return {
        "pred_index": torch.from_numpy(_concat(pairs_pred, np.int64)),
        "true_index": torch.from_numpy(_concat(pairs_true, np.int64)),
        "distance_px": torch.from_numpy(_concat(pairs_dist, np.float64)),
    }


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def _match_by_label_map(
    pred: np.ndarray, pred_cls: np.ndarray, true_cls: np.ndarray, label_map: torch.Tensor | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """SHREC hit-box rule: a pick hits particle j if ``label_map[z, y, x] == j + 1`` (0 = background)."""
    labels = np.asarray(label_map.detach().cpu() if isinstance(label_map, torch.Tensor) else label_map)
    if labels.ndim != pred.shape[1]:
        raise ValueError(f"picking_scores: label_map is {labels.ndim}D but the picks are {pred.shape[1]}D")
    index = np.rint(pred[:, ::-1]).astype(np.int64)  # (x, y, z) -> (z, y, x)
    inside = np.all((index >= 0) & (index < np.array(labels.shape)), axis=1)
    hit = np.zeros(len(pred), dtype=np.int64)
    hit[inside] = labels[tuple(index[inside].T)]
    if hit.max(initial=0) > len(true_cls):
        raise ValueError(f"picking_scores: label_map holds label {hit.max()} but only {len(true_cls)} true particles")
    true_idx = hit - 1
    hits = np.flatnonzero(true_idx >= 0)
    candidates = hits[pred_cls[hits] == true_cls[true_idx[hits]]]
    _, first = np.unique(true_idx[candidates], return_index=True)  # the first pick in order wins
    chosen = candidates[first]
    return chosen, true_idx[chosen]


def _scores(tp: int, n_pred: int, n_true: int) -> dict:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": n_pred - tp, "fn": n_true - tp, "precision": precision, "recall": recall, "f1": f1}


def picking_scores(
    pred_xyz: torch.Tensor | np.ndarray,
    pred_class: torch.Tensor | np.ndarray | None,
    true_xyz: torch.Tensor | np.ndarray,
    true_class: torch.Tensor | np.ndarray | None,
    max_distance_px: float | None = None,
    *,
    label_map: torch.Tensor | np.ndarray | None = None,
) -> dict:
    """Precision, recall and F1 per class and overall (micro-averaged) for particle picks.

    Give exactly one rule. Distance rule (``max_distance_px``): :func:`match_picks`. Hit-box rule
    (``label_map``, SHREC'19): an occupancy map indexed (z, y, x) holding ``j + 1`` inside true
    particle ``j`` and 0 elsewhere; a pick of the right class inside an unclaimed particle is a
    true positive, the first such pick (in input order, so sort by score) claims it, and repeated
    hits are false positives. Returns ``{"overall": scores, "per_class": {class: scores}}`` with
    scores ``tp, fp, fn, precision, recall, f1``.
    """
    if (max_distance_px is None) == (label_map is None):
        raise ValueError("picking_scores: give exactly one of max_distance_px and label_map")
    pred, true = _as_points(pred_xyz, "pred_xyz"), _as_points(true_xyz, "true_xyz")
    pred_cls = _as_classes(pred_class, len(pred), "pred_class")
    true_cls = _as_classes(true_class, len(true), "true_class")
    if label_map is None:
        assert max_distance_px is not None  # exactly one rule is given (checked above)
        matched = match_picks(pred, pred_cls, true, true_cls, max_distance_px)
        matched_pred = matched["pred_index"].numpy()
    else:
        matched_pred, _ = _match_by_label_map(pred, pred_cls, true_cls, label_map)
    per_class = {}
    for cls in np.union1d(np.unique(pred_cls), np.unique(true_cls)).tolist():
        tp = int(np.sum(pred_cls[matched_pred] == cls))
        per_class[cls] = _scores(tp, int(np.sum(pred_cls == cls)), int(np.sum(true_cls == cls)))
    return {"overall": _scores(len(matched_pred), len(pred), len(true)), "per_class": per_class}
