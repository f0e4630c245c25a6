"""Per-class picking scores by the SHREC hit-box rule and/or a distance tolerance, flattened for MLflow and CSV.

Both rules are :func:`cryoray.picking.matching.picking_scores`; this module adds what a picking
benchmark reports around them: class names, the macro average over the classes of the ground
truth, the micro (pooled) overall score, and macro F1 per particle-size group (SHREC groups its
classes by molecular weight, where small particles are the hard ones).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

from cryoray.errors import CryorayInputError
from cryoray.picking.matching import picking_scores

__all__ = ["evaluate_picks", "flatten_pick_scores", "scores_table"]

_COLUMNS = ("x_px", "y_px", "z_px", "class_id")
_METRICS = ("precision", "recall", "f1")
_COUNTS = ("tp", "fp", "fn")


def _check_table(table: pd.DataFrame, name: str) -> None:
    missing = [c for c in _COLUMNS if c not in table]
    if missing:
        raise CryorayInputError(None, name, f"a table with columns {', '.join(_COLUMNS)}", f"no column {missing[0]}")


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _rule_result(raw: dict, truth_classes: list[int], class_names: Mapping[int, str], size_groups: Mapping[int, str]) -> dict:
    per_class = {
        int(cls): {"name": class_names.get(int(cls), str(cls)), "size_group": size_groups.get(int(cls))} | scores
        for cls, scores in raw["per_class"].items()
    }
    macro = {m: _mean([per_class[c][m] for c in truth_classes]) for m in _METRICS}
    groups: dict[str, list[int]] = {}
    for cls in truth_classes:
        if cls in size_groups:
            groups.setdefault(size_groups[cls], []).append(cls)
    by_group = {
        group: {"classes": members} | {m: _mean([per_class[c][m] for c in members]) for m in _METRICS}
        for group, members in sorted(groups.items())
    }
    return {"per_class": per_class, "macro": macro, "micro": dict(raw["overall"]), "size_groups": by_group}


def evaluate_picks(
    picks: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    instance_map: np.ndarray | None = None,
    tolerance_px: float | None = None,
    class_names: Mapping[int, str] | None = None,
    size_groups: Mapping[int, str] | None = None,
) -> dict:
    """Precision, recall, F1, tp, fp, fn per class, macro, micro and per size group, for one or both rules.

    ``picks`` and ``truth`` have ``x_px, y_px, z_px, class_id`` (voxels). ``instance_map`` (Z, Y, X)
    selects the hit-box rule: it holds ``i + 1`` inside the particle of ``truth`` row ``i``
    (positional, after ``reset_index``) and 0 elsewhere; a pick of the right class inside an
    unclaimed particle is a TP, and the first pick claims it, so picks with a ``score`` column are
    sorted by score, descending, before matching. ``tolerance_px`` selects the distance rule
    (one-to-one Hungarian matching within the tolerance, inclusive). Give at least one; both give
    both. Returns ``{"hitbox": ..., "distance": ...}`` (the rules given), each with ``per_class``
    (every class in truth or picks: name, size_group, tp/fp/fn/precision/recall/f1),
    ``macro`` (mean over the classes present in the truth only: a class that exists only among
    the picks has no recall to average, its false positives count in ``micro``), ``micro``
    (pooled counts over all picks) and ``size_groups`` (macro over the truth classes of each group
    in ``size_groups``; groups without a truth class are left out). Empty truth gives NaN macros.
    """
    if instance_map is None and tolerance_px is None:
        raise ValueError("evaluate_picks: give instance_map (hit-box rule), tolerance_px (distance rule) or both")
    _check_table(picks, "picks")
    _check_table(truth, "truth")
    if "score" in picks:
        picks = picks.sort_values("score", ascending=False, kind="stable")
    pred_xyz = picks[["x_px", "y_px", "z_px"]].to_numpy(dtype=np.float64)
    true_xyz = truth[["x_px", "y_px", "z_px"]].to_numpy(dtype=np.float64)
    pred_cls = picks["class_id"].to_numpy(dtype=np.int64)
    true_cls = truth["class_id"].to_numpy(dtype=np.int64)
    truth_classes = sorted(set(true_cls.tolist()))
    names, groups = class_names or {}, size_groups or {}
    result = {}
    if instance_map is not None:
        raw = picking_scores(pred_xyz, pred_cls, true_xyz, true_cls, label_map=instance_map)
        result["hitbox"] = _rule_result(raw, truth_classes, names, groups)
    if tolerance_px is not None:
        raw = picking_scores(pred_xyz, pred_cls, true_xyz, true_cls, max_distance_px=tolerance_px)
        result["distance"] = _rule_result(raw, truth_classes, names, groups) | {"tolerance_px": float(tolerance_px)}
    return result


def _key_part(name: str) -> str:
    """MLflow metric names allow letters, digits, '_', '-', '.', ' ' and '/' (a level separator): keep a name one level."""
    return re.sub(r"[^\w.\- ]", "_", name)


def flatten_pick_scores(result: dict, prefix: str = "") -> dict[str, float]:
    """``evaluate_picks`` output as flat MLflow metrics: ``<prefix>/<rule>/f1/<class name>``, ``.../f1_macro``...

    Per rule: ``{precision,recall,f1,tp,fp,fn}/<class name>``, ``{precision,recall,f1}_macro``,
    ``{precision,recall,f1,tp,fp,fn}_micro`` and ``f1_group/<group>``; rules are ``hitbox`` and
    ``distance``. Class and group names are made MLflow-safe (other characters become '_').
    """
    lead = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    flat: dict[str, float] = {}
    for rule, scores in result.items():
        base = f"{lead}{rule}/"
        for entry in scores["per_class"].values():
            for metric in (*_METRICS, *_COUNTS):
                flat[f"{base}{metric}/{_key_part(entry['name'])}"] = float(entry[metric])
        for metric in _METRICS:
            flat[f"{base}{metric}_macro"] = float(scores["macro"][metric])
        for metric in (*_METRICS, *_COUNTS):
            flat[f"{base}{metric}_micro"] = float(scores["micro"][metric])
        for group, entry in scores["size_groups"].items():
            flat[f"{base}f1_group/{_key_part(group)}"] = float(entry["f1"])
    return flat


def scores_table(result: dict) -> pd.DataFrame:
    """One row per rule and class (rule, class_id, class_name, size_group, tp, fp, fn, precision, recall, f1) for CSV."""
    rows = [
        {"rule": rule, "class_id": class_id, "class_name": entry["name"], "size_group": entry["size_group"]}
        | {key: entry[key] for key in (*_COUNTS, *_METRICS)}
        for rule, scores in result.items()
        for class_id, entry in scores["per_class"].items()
    ]
    columns = ["rule", "class_id", "class_name", "size_group", *_COUNTS, *_METRICS]
    return pd.DataFrame(rows, columns=columns)
