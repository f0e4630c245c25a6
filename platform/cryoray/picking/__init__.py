"""Particle picking from a 3D segmentation network: tiled inference, DBSCAN clustering into picks, F1 scoring.

The RobPicker post-processing (Methods): sliding-window inference on 64³ tiles overlapping by 20
voxels with the overlaps averaged, argmax per voxel, DBSCAN per class (eps 1 voxel, min_samples 5),
each cluster's centre of gravity a pick, and F1 per class by the SHREC hit-box rule or a distance
tolerance. ``cryoray.io.figures.write_orthoslices_with_picks`` draws the picks on the tomogram.
"""

from cryoray.picking.clustering import PICK_COLUMNS, ClusterBy, cluster_picks, dbscan_voxel_labels
from cryoray.picking.matching import match_picks, picking_scores
from cryoray.picking.scoring import evaluate_picks, flatten_pick_scores, scores_table
from cryoray.picking.sliding_window import sliding_window_predict, tile_starts_px

__all__ = [
    "ClusterBy",
    "PICK_COLUMNS",
    "cluster_picks",
    "dbscan_voxel_labels",
    "evaluate_picks",
    "flatten_pick_scores",
    "match_picks",
    "picking_scores",
    "scores_table",
    "sliding_window_predict",
    "tile_starts_px",
]
