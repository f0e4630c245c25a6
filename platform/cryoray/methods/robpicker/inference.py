"""placeholder"""
from dataclasses import dataclass
@dataclass(frozen=True)
class PickingSettings:
    patch_px: int
    overlap_px: int
    batch_size: int
    dbscan_eps_px: float
    dbscan_min_voxels: int
    min_cluster_voxels: int
    tolerance_px: float
def evaluate_split(*a): ...
def write_split_outputs(*a): ...
