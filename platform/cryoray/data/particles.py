"""Ray Data pipelines for particle images: read the shards, stream batches into each Train worker.

The driver builds one lazy ``ray.data.Dataset`` over the Parquet shards; ``TorchTrainer`` splits it across
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

import ray.data
import torch
from ray.data import FileShuffleConfig

from cryoray.data.shards import IMAGE_COLUMN, PARTICLE_COLUMNS
from cryoray.io.manifest import DatasetManifest, shard_paths
from cryoray.physics import euler_relion_to_matrix

# Prefetching a few batches keeps the next batch ready while the model steps (benchmarks/data_throughput.py).
PREFETCH_BATCHES = 4


def particle_dataset(
    dataset_dir: str | Path, manifest: DatasetManifest, extra_image_columns: tuple[str, ...] = (), seed: int = 0
) -> ray.data.Dataset:
    """A lazy dataset of the numeric columns (images + pose + CTF), shard order shuffled per execution from ``seed``."""
    columns = [IMAGE_COLUMN, *extra_image_columns, *PARTICLE_COLUMNS]
    shuffle = FileShuffleConfig(seed=seed, reseed_after_execution=True)
    dataset = ray.data.read_parquet(shard_paths(dataset_dir, manifest), shuffle=shuffle).select_columns(columns)
    dataset.context.enable_progress_bars = False  # this dataset's own DataContext copy, not the process-wide one
    return dataset


def iter_particle_batches(
    shard: ray.data.DataIterator,
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
