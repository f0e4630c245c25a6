"""Streams of particle images: read the Parquet shards, batches into each training process.

A method describes one stream over the shards (:func:`particle_stream`); on Ray, ``TorchTrainer`` splits it across
workers (``get_dataset_shard``), and each epoch re-executes the read with the shard files in a new random
order, followed by a local shuffle buffer in each worker, so the data are shuffled per epoch without ever
being materialised. (``randomize_block_order`` would be an all-to-all barrier that holds the whole dataset in
the object store before the first batch; benchmarks/RESULTS.md has the numbers.) Both shuffles are seeded: the
file order by the run seed and Ray Data's execution index of the dataset (one per epoch), the buffer by the
worker's ``epoch_seed``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from cryoray.data.shards import IMAGE_COLUMN, PARTICLE_COLUMNS
from cryoray.data.streams import BlockStream, ParquetRows
from cryoray.io.manifest import DatasetManifest, shard_paths
from cryoray.physics import euler_relion_to_matrix

# Prefetching a few batches keeps the next batch ready while the model steps (benchmarks/data_throughput.py).
PREFETCH_BATCHES = 4


# What a training stream reads by default: the image and its pose and CTF metadata.
STREAM_COLUMNS = (IMAGE_COLUMN, *PARTICLE_COLUMNS)


def particle_stream(
    dataset_dir: str | Path, manifest: DatasetManifest, seed: int = 0, columns: tuple[str, ...] = STREAM_COLUMNS
) -> ParquetRows:
    """All rows of the shards (``columns`` only), the shard order shuffled per epoch from ``seed``."""
    return ParquetRows(files=tuple(shard_paths(dataset_dir, manifest)), columns=columns, seed=seed)


def iter_particle_batches(
    shard: BlockStream,
    batch_size: int,
    device: torch.device,
    shuffle_buffer_images: int | None = None,
    seed: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of float32 tensors on ``device``, plus ``rotation`` (B, 3, 3) built from the Euler angles."""
    for batch in shard.iter_torch_batches(
        batch_size=batch_size,
        dtypes=torch.float32,
        device=device,
        prefetch_batches=PREFETCH_BATCHES,
        local_shuffle_buffer_size=shuffle_buffer_images,
        local_shuffle_seed=seed,
        drop_last=False,
    ):
        batch["rotation"] = euler_relion_to_matrix(batch["rot_deg"], batch["tilt_deg"], batch["psi_deg"])
        yield batch
