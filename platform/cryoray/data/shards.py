"""Particle shards: Parquet files with the images in an Arrow ``fixed_shape_tensor`` column.

Why Parquet with a canonical tensor column (numbers in benchmarks/RESULTS.md): Ray Data reads it natively and
splits it across Train workers; plain pyarrow reads it back without Ray with the image shape intact; the pose
and CTF metadata travel in the same row as the image, so shuffling never separates them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cryoray.errors import CryorayInputError
from cryoray.io.manifest import ShardEntry

IMAGE_COLUMN = "image"

# Metadata every particle row carries; the names are the normalised STAR columns of cryoray.io.star.
PARTICLE_COLUMNS: dict[str, str] = {
    "particle_index": "row of the particle in the source stack / STAR file",
    "rot_deg": "RELION Euler rot (ZYZ), degrees",
    "tilt_deg": "RELION Euler tilt (ZYZ), degrees",
    "psi_deg": "RELION Euler psi (ZYZ), degrees",
    "shift_x_angstrom": "in-plane origin shift x, Angstrom",
    "shift_y_angstrom": "in-plane origin shift y, Angstrom",
    "defocus_u_angstrom": "defocus U, Angstrom (positive = underfocus)",
    "defocus_v_angstrom": "defocus V, Angstrom",
    "defocus_angle_deg": "astigmatism angle, degrees",
    "voltage_kv": "acceleration voltage, kV",
    "cs_mm": "spherical aberration, mm",
    "amplitude_contrast": "amplitude contrast fraction",
    "phase_shift_deg": "phase-plate shift, degrees",
}

# Rows per Parquet row group: the unit a Ray Data read task streams (measured in benchmarks/data_throughput.py).
ROW_GROUP_SIZE = 1024


def particle_rows_to_arrow(
    images: np.ndarray, table: pd.DataFrame, extra_images: dict[str, np.ndarray] | None = None
) -> pa.Table:
    """One Arrow table: ``image`` (+ optional extra image columns such as ``clean_image``) and the metadata."""
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be (n, D, D), got {images.shape}")
    if len(table) != len(images):
        raise ValueError(f"{len(images)} images but {len(table)} metadata rows")
    columns: dict[str, pa.Array] = {
        IMAGE_COLUMN: pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(images, dtype=np.float32))
    }
    for name, extra in (extra_images or {}).items():
        if extra.shape != images.shape:
            raise ValueError(f"{name} has shape {extra.shape}, images {images.shape}")
        columns[name] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(extra, dtype=np.float32))
    for name in PARTICLE_COLUMNS:
        dtype = np.int64 if name == "particle_index" else np.float32
        columns[name] = pa.array(table[name].to_numpy(dtype=dtype))
    return pa.table(columns)


def write_particle_shard(
    dataset_dir: str | Path,
    shard_index: int,
    images: np.ndarray,
    table: pd.DataFrame,
    extra_images: dict[str, np.ndarray] | None = None,
) -> ShardEntry:
    """Write ``shards/part-NNNNN.parquet`` and return its manifest entry."""
    relative = f"shards/part-{shard_index:05d}.parquet"
    path = Path(dataset_dir) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(particle_rows_to_arrow(images, table, extra_images), path, row_group_size=ROW_GROUP_SIZE)
    return ShardEntry(path=relative, count=len(images))


def read_particle_shard(path: str | Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Read one shard without Ray (images (n, D, D) float32, metadata DataFrame)."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise CryorayInputError(path, "parquet", "a readable Parquet shard", str(exc)) from None
    if IMAGE_COLUMN not in table.column_names:
        raise CryorayInputError(path, IMAGE_COLUMN, "an image tensor column", f"columns {table.column_names}")
    images = table.column(IMAGE_COLUMN).combine_chunks().to_numpy_ndarray()
    meta = table.drop_columns([c for c in table.column_names if isinstance(table.schema.field(c).type, pa.ExtensionType)])
    return images, meta.to_pandas()
