"""Picking post-processing: tiled inference stitches exactly, DBSCAN recovers known centres, F1 by hand, the figure."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
from cryoray.errors import CryorayInputError
from cryoray.io.figures import write_orthoslices_with_picks
from cryoray.picking import (
    PICK_COLUMNS,
    cluster_picks,
    dbscan_voxel_labels,
    evaluate_picks,
    flatten_pick_scores,
    match_picks,
    picking_scores,
    scores_table,
    sliding_window_predict,
    tile_starts_px,
)
from scipy import ndimage

PATCH_PX, OVERLAP_PX = 16, 4  # stride 12


def _constant_predict(values: tuple[float, ...]):
    def predict(batch: torch.Tensor) -> torch.Tensor:
        out = torch.empty((batch.shape[0], len(values), *batch.shape[2:]), dtype=torch.float64)
        for channel, value in enumerate(values):
            out[:, channel] = value
        return out

    return predict


def test_tile_starts_cover_the_axis_with_the_last_tile_flush() -> None:
    assert tile_starts_px(40, PATCH_PX, OVERLAP_PX) == [0, 12, 24]  # 40 - 16 = 24 is a multiple of the stride
    assert tile_starts_px(50, PATCH_PX, OVERLAP_PX) == [0, 12, 24, 34]  # not a multiple: last tile pulled back
    assert tile_starts_px(16, PATCH_PX, OVERLAP_PX) == [0]
    assert tile_starts_px(5, PATCH_PX, OVERLAP_PX) == [0]


@pytest.mark.parametrize("shape", [(40, 40, 40), (37, 29, 50), (5, 20, 9), (1, 1, 1)])
@pytest.mark.parametrize("weighting", ["uniform", "gaussian"])
def test_constant_prediction_stitches_to_the_constant(shape: tuple[int, int, int], weighting: str) -> None:
    volume = torch.randn(shape)
    out = sliding_window_predict(volume, _constant_predict((0.25, 0.75)), PATCH_PX, OVERLAP_PX, weighting=weighting)
    assert out.shape == (2, *shape)
    torch.testing.assert_close(out[0], torch.full(shape, 0.25, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1], torch.full(shape, 0.75, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(40, 40, 40), (37, 29, 50), (5, 20, 9)])
@pytest.mark.parametrize("weighting", ["uniform", "gaussian"])
@pytest.mark.parametrize("pad_mode", ["reflect", "zeros"])
def test_identity_prediction_puts_every_tile_back_where_it_came_from(
    shape: tuple[int, int, int], weighting: str, pad_mode: str
) -> None:
    volume = torch.randn(shape, dtype=torch.float64)
    batch_sizes = []

    def predict(batch: torch.Tensor) -> torch.Tensor:
        batch_sizes.append(batch.shape[0])
        return torch.cat((batch, -2 * batch), dim=1)

    out = sliding_window_predict(volume, predict, PATCH_PX, OVERLAP_PX, batch_size=3, weighting=weighting, pad_mode=pad_mode)
    torch.testing.assert_close(out[0], volume, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1], -2 * volume, rtol=0, atol=1e-12)
    n_tiles = np.prod([len(tile_starts_px(n, PATCH_PX, OVERLAP_PX)) for n in shape])
    assert sum(batch_sizes) == n_tiles and max(batch_sizes) <= 3


def test_overlaps_are_averaged_uniformly_by_default() -> None:
    calls = []

    def predict(batch: torch.Tensor) -> torch.Tensor:  # tile k predicts the value k everywhere
        values = torch.arange(len(calls), len(calls) + batch.shape[0], dtype=torch.float32)
        calls.extend(values.tolist())
        return values[:, None, None, None, None].expand(-1, 1, *batch.shape[2:]).clone()

    out = sliding_window_predict(torch.zeros(16, 16, 28), predict, PATCH_PX, OVERLAP_PX, batch_size=1)
    assert calls == [0.0, 1.0]  # x tiles start at 0 and 12
    assert torch.all(out[0, :, :, :12] == 0) and torch.all(out[0, :, :, 16:] == 1)
    assert torch.all(out[0, :, :, 12:16] == 0.5)


def test_short_axes_are_padded_by_reflection_or_zeros() -> None:
    volume = torch.arange(3, dtype=torch.float64)[:, None, None].expand(3, 16, 16).clone()
    seen = {}

    def predict(batch: torch.Tensor) -> torch.Tensor:
        seen["tile"] = batch[0, 0, :, 0, 0].clone()
        return batch

    sliding_window_predict(volume, predict, PATCH_PX, OVERLAP_PX)
    assert seen["tile"].tolist() == [0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1]  # mirrored, longer than the axis
    sliding_window_predict(volume, predict, PATCH_PX, OVERLAP_PX, pad_mode="zeros")
    assert seen["tile"].tolist() == [0, 1, 2] + [0] * 13


def test_sliding_window_rejects_bad_arguments() -> None:
    volume = torch.zeros(20, 20, 20)
    with pytest.raises(ValueError, match="overlap_px"):
        sliding_window_predict(volume, _constant_predict((1.0,)), PATCH_PX, PATCH_PX)
    with pytest.raises(ValueError, match="expected \\(B, C, p, p, p\\)"):
        sliding_window_predict(volume, lambda batch: batch[:, :, :8], PATCH_PX, OVERLAP_PX)
    with pytest.raises(ValueError, match="\\(Z, Y, X\\)"):
        sliding_window_predict(torch.zeros(20, 20), _constant_predict((1.0,)), PATCH_PX, OVERLAP_PX)


def _ball(shape: tuple[int, int, int], centre_zyx: tuple[int, int, int], radius_px: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    return (z - centre_zyx[0]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2 <= radius_px**2


SHAPE = (40, 40, 48)
BALL_A = (10, 10, 12)  # class 1
BALL_B, BALL_C = (28, 12, 30), (33, 17, 30)  # class 2, touching only diagonally


def _label_map() -> tuple[np.ndarray, dict]:
    labels = np.zeros(SHAPE, dtype=np.int64)
    labels[_ball(SHAPE, BALL_A, 3)] = 1
    labels[_ball(SHAPE, BALL_B, 3)] = 2
    labels[_ball(SHAPE, BALL_C, 3)] = 2
    labels[20:23, 30:34, 5:10] = 1  # a 3 x 4 x 5 box: centre (z, y, x) = (21, 31.5, 7)
    labels[2, 2, 30:33] = 1  # a 3-voxel line: fewer voxels than min_samples
    labels[35, 35, 5] = 2  # a single voxel
    labels[2:4, 30:32, 40:42] = 2  # a 2x2x2 cube: 8 voxels but none has 4 face neighbours, so no core point
    objects = {"A": (1, BALL_A), "B": (2, BALL_B), "C": (2, BALL_C), "box": (1, (21, 31.5, 7))}
    return labels, objects


def test_the_diagonal_pair_is_one_26_connected_blob_but_no_face_contact() -> None:
    pair = _ball(SHAPE, BALL_B, 3) | _ball(SHAPE, BALL_C, 3)
    assert ndimage.label(pair, structure=np.ones((3, 3, 3)))[1] == 1
    assert ndimage.label(pair)[1] == 2


def test_cluster_centres_are_recovered_and_specks_dropped() -> None:
    labels, objects = _label_map()
    picks = cluster_picks(labels)
    assert list(picks.columns) == list(PICK_COLUMNS)
    assert len(picks) == len(objects)
    for class_id, (z, y, x) in objects.values():
        distance = np.sqrt((picks["x_px"] - x) ** 2 + (picks["y_px"] - y) ** 2 + (picks["z_px"] - z) ** 2)
        nearest = int(distance.argmin())
        assert distance[nearest] < 0.5 and picks["class_id"][nearest] == class_id
    assert sorted(picks["n_voxels"]) == [60, 123, 123, 123]
    assert (picks["score"] == 1.0).all()
    assert len(cluster_picks(labels, min_cluster_voxels=100)) == 3  # the 60-voxel box goes


def test_scores_are_mean_class_probabilities_and_order_picks() -> None:
    labels, _ = _label_map()
    rng = np.random.default_rng(0)
    probabilities = np.zeros((3, *SHAPE), dtype=np.float32)
    ball_a = _ball(SHAPE, BALL_A, 3)
    probabilities[1][ball_a] = rng.uniform(0.5, 1.0, ball_a.sum())
    probabilities[2][_ball(SHAPE, BALL_B, 3)] = 0.95
    probabilities[2][_ball(SHAPE, BALL_C, 3)] = 0.4
    probabilities[1, 20:23, 30:34, 5:10] = 0.6
    for probs in (probabilities, torch.from_numpy(probabilities)):
        picks = cluster_picks(labels, probs)
        assert picks["score"].is_monotonic_decreasing
        by_position = picks.set_index(["z_px", "y_px", "x_px"])["score"]
        assert by_position[BALL_A] == pytest.approx(probabilities[1][ball_a].mean(dtype=np.float64))
        assert by_position[BALL_B] == pytest.approx(0.95)
        assert by_position[BALL_C] == pytest.approx(0.4)
        assert by_position[(21.0, 31.5, 7.0)] == pytest.approx(0.6)


def test_cluster_picks_edge_cases() -> None:
    empty = cluster_picks(np.zeros((8, 8, 8), dtype=np.int32))
    assert empty.empty and list(empty.columns) == list(PICK_COLUMNS)
    whole = cluster_picks(np.ones((10, 10, 10), dtype=np.int64))  # no size refusal: one cluster of every voxel
    assert whole["n_voxels"].tolist() == [1000] and whole[["x_px", "y_px", "z_px"]].to_numpy().tolist() == [[4.5] * 3]
    with pytest.raises(ValueError, match="eps_px"):
        cluster_picks(np.ones((4, 4, 4), dtype=np.int64), eps_px=2.0)
    with pytest.raises(ValueError, match="integer class map"):
        cluster_picks(np.zeros((8, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="need channels"):
        cluster_picks(np.full((8, 8, 8), 3), np.zeros((2, 8, 8, 8)))
    with pytest.raises(ValueError, match="cluster_by"):
        cluster_picks(np.ones((4, 4, 4), dtype=np.int64), cluster_by="instance")


def test_foreground_clustering_gives_a_split_particle_one_pick_of_its_majority_class() -> None:
    """A ball whose voxels the net split between two classes: per class it is two picks (one false), on the
    foreground one pick with the class most of its voxels have and that class's mean probability as score."""
    labels = np.zeros(SHAPE, dtype=np.int64)
    ball = _ball(SHAPE, BALL_A, 4)
    labels[ball] = 1
    labels[ball & (np.indices(SHAPE)[2] >= BALL_A[2] + 2)] = 2  # the far cap of the ball: the minority class
    probabilities = np.zeros((3, *SHAPE), dtype=np.float32)
    probabilities[1][labels == 1], probabilities[2][labels == 2] = 0.8, 0.6
    probabilities[2][labels == 1], probabilities[1][labels == 2] = 0.2, 0.4
    per_class = cluster_picks(labels, probabilities)
    assert sorted(per_class["class_id"]) == [1, 2]
    merged = cluster_picks(labels, probabilities, cluster_by="foreground")
    assert len(merged) == 1 and merged["class_id"][0] == 1 and merged["n_voxels"][0] == ball.sum()
    assert merged[["z_px", "y_px", "x_px"]].to_numpy()[0] == pytest.approx(np.argwhere(ball).mean(axis=0))
    assert merged["score"][0] == pytest.approx(probabilities[1][ball].mean(dtype=np.float64))
    separate = labels.copy()
    separate[_ball(SHAPE, BALL_B, 3)] = 2
    assert sorted(cluster_picks(separate, cluster_by="foreground")["class_id"]) == [1, 2]  # apart, both kept


def _touching_particles(seed: int) -> np.ndarray:
    """A class map of balls of two classes that touch and overlap, with specks and thin bridges (ties for border voxels)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((20, 24, 24), dtype=np.int64)
    for _ in range(10):
        centre = rng.uniform(2, 22, 3) * [20 / 24, 1, 1]
        labels[_ball(labels.shape, tuple(centre), rng.uniform(1.2, 3.5))] = rng.integers(1, 3)
    labels[rng.random(labels.shape) < 0.03] = rng.integers(1, 3)  # specks, some on ball borders
    labels[10, 3:21, 12] = 1  # a one-voxel-wide bridge
    return labels


@pytest.mark.parametrize(("eps_px", "min_samples"), [(1.0, 5), (1.0, 3), (1.5, 8), (1.8, 12), (0.5, 1)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_time_dbscan_equals_sklearn_dbscan_on_voxels(eps_px: float, min_samples: int, seed: int) -> None:
    from sklearn.cluster import DBSCAN

    labels = _touching_particles(seed)
    for class_id in (1, 2):
        mask = labels == class_id
        ours, n_clusters = dbscan_voxel_labels(mask, eps_px, min_samples)
        zyx = np.argwhere(mask)  # raster order, as np.flatnonzero
        reference = DBSCAN(eps=eps_px, min_samples=min_samples).fit_predict(zyx.astype(np.float64))
        assert n_clusters == reference.max() + 1 and n_clusters > 0
        np.testing.assert_array_equal(ours[mask], reference + 1)  # same numbering, noise 0, same border ties
        assert not ours[~mask].any()


TRUTH = pd.DataFrame(
    {
        "x_px": [10.0, 30.0, 10.0, 30.0],
        "y_px": [10.0, 10.0, 30.0, 30.0],
        "z_px": [10.0, 10.0, 10.0, 30.0],
        "class_id": [1, 1, 2, 3],
    }
)
PICKS = pd.DataFrame(
    {
        "x_px": [11.0, 10.0, 10.0, 31.0, 20.0],
        "y_px": [10.0, 10.0, 30.0, 30.0, 20.0],
        "z_px": [10.0, 10.0, 10.0, 30.0, 20.0],
        "class_id": [1, 1, 1, 3, 4],
        "score": [0.8, 0.9, 0.7, 0.6, 0.5],
    }
)
NAMES = {1: "ribosome", 2: "proteasome (20S)", 3: "thyroglobulin", 4: "apoferritin"}
GROUPS = {1: "large", 2: "small", 3: "small", 4: "small"}


def _instance_map() -> np.ndarray:
    """Cubes of half-width 3 voxels labelled with truth row + 1."""
    labels = np.zeros((40, 40, 40), dtype=np.int64)
    for row, (x, y, z) in enumerate(TRUTH[["x_px", "y_px", "z_px"]].to_numpy(dtype=int)):
        labels[z - 3 : z + 4, y - 3 : y + 4, x - 3 : x + 4] = row + 1
    return labels


def test_hit_box_and_distance_rules_on_a_hand_made_case() -> None:
    result = evaluate_picks(PICKS, TRUTH, instance_map=_instance_map(), tolerance_px=2.0, class_names=NAMES, size_groups=GROUPS)
    assert set(result) == {"hitbox", "distance"}
    for rule in ("hitbox", "distance"):
        per_class = result[rule]["per_class"]
        # class 1: two picks in particle 0 (one TP, one FP), one pick in the class-2 particle (FP), particle 1 missed
        assert {k: per_class[1][k] for k in ("tp", "fp", "fn")} == {"tp": 1, "fp": 2, "fn": 1}
        assert per_class[1]["precision"] == pytest.approx(1 / 3) and per_class[1]["recall"] == 0.5
        assert per_class[1]["f1"] == pytest.approx(0.4)
        assert {k: per_class[2][k] for k in ("tp", "fp", "fn", "f1")} == {"tp": 0, "fp": 0, "fn": 1, "f1": 0.0}
        assert per_class[3]["f1"] == 1.0
        assert {k: per_class[4][k] for k in ("tp", "fp", "fn")} == {"tp": 0, "fp": 1, "fn": 0}  # only among the picks
        assert per_class[2]["name"] == "proteasome (20S)" and per_class[2]["size_group"] == "small"
        assert result[rule]["macro"]["f1"] == pytest.approx((0.4 + 0.0 + 1.0) / 3)  # class 4 is not in the truth
        micro = result[rule]["micro"]
        assert (micro["tp"], micro["fp"], micro["fn"]) == (2, 3, 2)
        assert micro["f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9)
        assert result[rule]["size_groups"]["small"]["f1"] == pytest.approx(0.5)  # classes 2 and 3
        assert result[rule]["size_groups"]["small"]["classes"] == [2, 3]
        assert result[rule]["size_groups"]["large"]["f1"] == pytest.approx(0.4)
    only_hitbox = evaluate_picks(PICKS.iloc[::-1], TRUTH, instance_map=_instance_map())
    assert set(only_hitbox) == {"hitbox"} and only_hitbox["hitbox"]["micro"]["tp"] == 2


def test_distance_tolerance_boundary_is_inclusive() -> None:
    truth = pd.DataFrame({"x_px": [10.0], "y_px": [10.0], "z_px": [10.0], "class_id": [1]})
    pick = pd.DataFrame({"x_px": [13.0], "y_px": [10.0], "z_px": [10.0], "class_id": [1]})
    assert evaluate_picks(pick, truth, tolerance_px=3.0)["distance"]["micro"]["tp"] == 1
    missed = evaluate_picks(pick, truth, tolerance_px=2.999)["distance"]["micro"]
    assert (missed["tp"], missed["fp"], missed["fn"]) == (0, 1, 1)


def test_evaluate_picks_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="instance_map"):
        evaluate_picks(PICKS, TRUTH)
    with pytest.raises(CryorayInputError, match="class_id"):
        evaluate_picks(PICKS.drop(columns="class_id"), TRUTH, tolerance_px=2.0)


def test_flat_metrics_and_table() -> None:
    result = evaluate_picks(PICKS, TRUTH, instance_map=_instance_map(), tolerance_px=2.0, class_names=NAMES, size_groups=GROUPS)
    flat = flatten_pick_scores(result, "test")
    assert flat["test/hitbox/f1/ribosome"] == pytest.approx(0.4)
    assert flat["test/hitbox/fn/proteasome _20S_"] == 1.0
    assert flat["test/distance/f1_macro"] == pytest.approx(1.4 / 3)
    assert flat["test/hitbox/tp_micro"] == 2.0
    assert flat["test/hitbox/f1_group/small"] == pytest.approx(0.5)
    assert all(isinstance(v, float) for v in flat.values())
    assert "hitbox/f1_macro" in flatten_pick_scores(result)
    table = scores_table(result)
    assert len(table) == 8 and set(table["rule"]) == {"hitbox", "distance"}
    row = table[(table["rule"] == "hitbox") & (table["class_id"] == 1)].iloc[0]
    assert (row["class_name"], row["tp"], row["fp"], row["fn"]) == ("ribosome", 1, 2, 1)


def test_segmentation_to_picks_end_to_end() -> None:
    """A perfect 'network' (one-hot of the true labels), tiled, argmaxed and clustered, scores F1 = 1."""
    truth_rows, instances = [], np.zeros(SHAPE, dtype=np.int64)
    for class_id, centre in ((1, BALL_A), (2, BALL_B), (2, BALL_C)):
        instances[_ball(SHAPE, centre, 3)] = len(truth_rows) + 1
        truth_rows.append({"x_px": centre[2], "y_px": centre[1], "z_px": centre[0], "class_id": class_id})
    truth = pd.DataFrame(truth_rows)
    volume = torch.from_numpy(np.where(instances > 0, truth["class_id"].to_numpy()[instances - 1], 0)).float()

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(batch[:, 0].long(), 3).permute(0, 4, 1, 2, 3).float()

    probabilities = sliding_window_predict(volume, predict, PATCH_PX, OVERLAP_PX)
    picks = cluster_picks(probabilities.argmax(0).numpy(), probabilities)
    result = evaluate_picks(picks, truth, instance_map=instances, tolerance_px=1.0)
    assert result["hitbox"]["macro"]["f1"] == 1.0 and result["distance"]["micro"]["f1"] == 1.0


def test_orthoslice_figure_is_a_png(tmp_path) -> None:
    rng = np.random.default_rng(1)
    tomogram = rng.normal(size=(24, 32, 40)).astype(np.float32)
    tomogram[_ball((24, 32, 40), (12, 16, 20), 4)] += 3
    picks = pd.DataFrame({"x_px": [20.0, 5.0], "y_px": [16.0, 5.0], "z_px": [12.0, 2.0], "class_id": [1, 2], "score": [0.9, 0.5]})
    truth = pd.DataFrame({"x_px": [20.0], "y_px": [16.0], "z_px": [12.0], "class_id": [1]})
    path = tmp_path / "figs" / "picks.png"
    written = write_orthoslices_with_picks(path, tomogram, picks, truth, slab_px=3, class_names={1: "ribosome"})
    assert written == path and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 600 and image.std() > 0.05
    with pytest.raises(CryorayInputError, match="overwrite=True"):
        write_orthoslices_with_picks(path, tomogram, picks, None, slab_px=3)
    write_orthoslices_with_picks(path, tomogram, picks.iloc[:0], None, slab_px=3, overwrite=True)
    with pytest.raises(CryorayInputError, match=".png"):
        write_orthoslices_with_picks(tmp_path / "picks.jpg", tomogram, picks, None, slab_px=3)


def _picking_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    true_xyz = np.array([[10, 10, 10], [30, 10, 10], [50, 10, 10], [10, 40, 20], [30, 40, 20], [50, 40, 20]], float)
    true_cls = np.array([1, 1, 1, 2, 2, 2])
    pred_xyz = np.array(
        [
            [11, 10, 10],  # TP class 1 (particle 0)
            [30, 12, 10],  # TP class 1 (particle 1)
            [10, 11, 10],  # duplicate of particle 0: FP
            [10, 41, 20],  # TP class 2 (particle 3)
            [50, 40, 22],  # near particle 5 but labelled class 1: FP (class 1) and particle 5 stays FN
            [70, 70, 30],  # far away: FP class 2
        ],
        float,
    )
    pred_cls = np.array([1, 1, 1, 2, 1, 2])
    return pred_xyz, pred_cls, true_xyz, true_cls


def test_match_picks_one_to_one() -> None:
    pred_xyz, pred_cls, true_xyz, true_cls = _picking_case()
    matched = match_picks(pred_xyz, pred_cls, true_xyz, true_cls, max_distance_px=4.0)
    pairs = sorted(zip(matched["pred_index"].tolist(), matched["true_index"].tolist()))
    assert pairs in ([(0, 0), (1, 1), (3, 3)], [(1, 1), (2, 0), (3, 3)])
    assert len(set(matched["true_index"].tolist())) == 3


def test_picking_scores_distance_rule() -> None:
    scores = picking_scores(*_picking_case(), max_distance_px=4.0)
    overall = scores["overall"]
    assert (overall["tp"], overall["fp"], overall["fn"]) == (3, 3, 3)
    assert overall["precision"] == pytest.approx(0.5) and overall["recall"] == pytest.approx(0.5)
    assert overall["f1"] == pytest.approx(0.5)
    c1, c2 = scores["per_class"][1], scores["per_class"][2]
    assert (c1["tp"], c1["fp"], c1["fn"]) == (2, 2, 1)
    assert (c2["tp"], c2["fp"], c2["fn"]) == (1, 1, 2)
    assert c2["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    pred_xyz, _, true_xyz, _ = _picking_case()
    class_blind = picking_scores(pred_xyz, None, true_xyz, None, max_distance_px=4.0)
    assert class_blind["overall"]["tp"] == 4  # the mislabelled pick now matches particle 5


def test_picking_scores_hit_box_rule() -> None:
    pred_xyz, pred_cls, true_xyz, true_cls = _picking_case()
    labels = np.zeros((40, 60, 80), dtype=np.int64)  # (z, y, x)
    for j, (x, y, z) in enumerate(true_xyz.astype(int)):
        labels[z - 3 : z + 4, y - 3 : y + 4, x - 3 : x + 4] = j + 1
    scores = picking_scores(pred_xyz, pred_cls, true_xyz, true_cls, label_map=labels)
    assert (scores["overall"]["tp"], scores["overall"]["fp"], scores["overall"]["fn"]) == (3, 3, 3)
    shifted = pred_xyz.copy()
    shifted[0] = [14, 10, 10]  # outside particle 0's box: now the duplicate at index 2 claims it
    again = picking_scores(shifted, pred_cls, true_xyz, true_cls, label_map=labels)
    assert again["overall"]["tp"] == 3 and again["per_class"][1]["tp"] == 2
    with pytest.raises(ValueError):
        picking_scores(pred_xyz, pred_cls, true_xyz, true_cls)
    with pytest.raises(ValueError):
        picking_scores(pred_xyz, pred_cls, true_xyz, true_cls, max_distance_px=4.0, label_map=labels)


def test_size_floors_are_calibrated_per_class_on_held_out_tomograms() -> None:
    """Class 1's particles are big and its map has 3-voxel specks (false picks); class 2's particles are small.
    Per class, the floor with the best held-out F1 (smallest on ties): specks go, class 2 keeps its particles."""
    from types import SimpleNamespace

    from cryoray.methods.robpicker.inference import PickingSettings, SegmentedTomogram, calibrate_min_cluster_voxels, score_split

    labels, instances = np.zeros(SHAPE, dtype=np.int64), np.zeros(SHAPE, dtype=np.int64)
    rows = []
    for index, (centre, class_id, radius) in enumerate([(BALL_A, 1, 4), ((28, 12, 12), 1, 4), (BALL_B, 2, 2)], start=1):
        ball = _ball(SHAPE, centre, radius)
        labels[ball], instances[ball] = class_id, index
        rows.append({"x_px": centre[2], "y_px": centre[1], "z_px": centre[0], "class_id": class_id})
    for z in (5, 20, 35):
        labels[z, 35, 40:43] = 1  # specks of class 1 far from every particle
    probabilities = torch.from_numpy(np.eye(3, dtype=np.float32)[labels].transpose(3, 0, 1, 2).copy())
    item = SegmentedTomogram("t", np.zeros(SHAPE, np.float32), probabilities, pd.DataFrame(rows), instances)
    manifest = SimpleNamespace(species=[SimpleNamespace(class_id=c, name=f"c{c}", size_group="large") for c in (1, 2)])
    settings = PickingSettings(32, 8, 8, 1.0, 1, 1, 4.0)  # DBSCAN min 1: the specks are clusters
    sizes = calibrate_min_cluster_voxels([item], manifest, settings)
    assert 3 < sizes[1] <= _ball(SHAPE, BALL_A, 4).sum() and sizes[2] == 1, sizes
    before, _ = score_split([item], manifest, settings)
    after, _ = score_split([item], manifest, PickingSettings(32, 8, 8, 1.0, 1, sizes, 4.0))
    assert before["hitbox"]["per_class"][1]["f1"] == pytest.approx(2 * 2 / (2 * 2 + 3))  # 2 tp, 3 fp
    assert after["hitbox"]["macro"]["f1"] == 1.0


def test_auto_clustering_is_chosen_on_held_out_tomograms_and_travels_to_predict() -> None:
    """A net that splits one particle between two classes: per class it is picked twice, over the foreground once,
    so ``cluster_by: auto`` chooses the foreground there; on a net that splits nothing the two tie and the paper's
    per-class clustering stays. The model file's choice is what ``predict`` picks with."""
    from types import SimpleNamespace

    from cryoray.methods.robpicker import RobPickerConfig
    from cryoray.methods.robpicker.inference import Calibration, SegmentedTomogram, calibrate_picking, score_split
    from cryoray.methods.robpicker.predict import picking_settings

    labels, instances = np.zeros(SHAPE, dtype=np.int64), np.zeros(SHAPE, dtype=np.int64)
    rows = []
    for index, (centre, class_id) in enumerate([(BALL_A, 1), (BALL_B, 2)], start=1):
        ball = _ball(SHAPE, centre, 4)
        labels[ball], instances[ball] = class_id, index
        rows.append({"x_px": centre[2], "y_px": centre[1], "z_px": centre[0], "class_id": class_id})
    manifest = SimpleNamespace(species=[SimpleNamespace(class_id=c, name=f"c{c}", size_group="large") for c in (1, 2)])
    config = RobPickerConfig(cluster_by="auto", dbscan_min_voxels=1)

    def segmented(class_map: np.ndarray) -> list[SegmentedTomogram]:
        probabilities = torch.from_numpy(np.eye(3, dtype=np.float32)[class_map].transpose(3, 0, 1, 2).copy())
        return [SegmentedTomogram("t", np.zeros(SHAPE, np.float32), probabilities, pd.DataFrame(rows), instances)]

    split = labels.copy()
    split[_ball(SHAPE, BALL_A, 4) & (np.indices(SHAPE)[2] >= BALL_A[2] + 2)] = 2  # ball A's far cap: class 2
    chosen = calibrate_picking(segmented(split), manifest, config.picking(), config.cluster_options, False)
    assert chosen == Calibration("foreground", None)
    per_class, _ = score_split(segmented(split), manifest, config.picking())
    merged, _ = score_split(segmented(split), manifest, config.picking(chosen))
    assert per_class["hitbox"]["macro"]["f1"] < 1.0 == merged["hitbox"]["macro"]["f1"]
    assert calibrate_picking(segmented(labels), manifest, config.picking(), config.cluster_options, False).cluster_by == "class"
    model_config = config.model_dump(mode="json")
    assert picking_settings(model_config).cluster_by == "class"  # auto without a calibration: the paper's
    assert (
        picking_settings(model_config, {"cluster_by": "foreground", "min_cluster_voxels": {"1": 20}}).cluster_by == "foreground"
    )
