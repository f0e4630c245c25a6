"""Images/s delivered into a training loop: cryoray's Ray Data pipeline vs. a torch DataLoader over a
memory-mapped .mrcs, same images, same machine, one run; and the rate one real training step consumes.

Example usage:
    .venv/bin/python benchmarks/data_throughput.py                 # 64 px and 128 px
    .venv/bin/python benchmarks/data_throughput.py --box 64 --images 16384

Paths measured per box size (steady state = the second pass over the data, page cache warm):
  mmap_loader      torch DataLoader, each item a 256-image slice of mrcfile.mmap (the fastest plain loader)
  local_stream     the in-process route's reader (LocalStream: pyarrow, prefetch 4) of the same shards
  ray_driver       ray_dataset(particle_stream(...)).iter_torch_batches in the driver (one consumer)
  ray_driver_mrcs_shards  the same images as .mrcs shards read by Ray and decoded by mrcfile (format choice)
  ray_trainer      inside a 2-worker TorchTrainer via get_dataset_shard, per rank and summed, with
                   cryoray's settings (row groups of 1024, prefetch 4, 0.5 CPU per worker)
  ray_trainer_base the same with the settings the first measurement used (row groups of 128, prefetch 1,
                   a row-wise map, 1 CPU per worker would deadlock here so 0.5)
  worker_trainer   the same 2-worker TorchTrainer, each worker reading its own equal part of the shards with
                   pyarrow (``parquet_feed: worker``: LocalStream with ``part``), per rank
  model_step       known-pose reconstruction training step (projection + CTF + backward), batch 64
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import ray
import ray.train
import torch
from cryoray.config import RunnerConfig
from cryoray.data import shards
from cryoray.data.particles import iter_particle_batches, particle_stream
from cryoray.data.ray_streams import RayShard, ray_dataset
from cryoray.data.shards import PARTICLE_COLUMNS, particle_rows_to_arrow
from cryoray.data.streams import LocalStream
from cryoray.io.manifest import DatasetManifest, ShardEntry
from cryoray.methods.reconstruct import KnownPoseReconstruction, ReconstructConfig
from cryoray.physics import matrix_to_euler_relion, random_rotations
from cryoray.train.context import TrainContext
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer

BATCH = 256


def make_data(
    folder: Path, box: int, n_images: int, row_group: int, images_per_shard: int = 4096
) -> tuple[Path, DatasetManifest]:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n_images, box, box), dtype=np.float32)
    rot, tilt, psi = (
        t.numpy() for t in matrix_to_euler_relion(random_rotations(n_images, generator=torch.Generator().manual_seed(0)))
    )
    table = pd.DataFrame({c: np.zeros(n_images) for c in PARTICLE_COLUMNS})
    table = table.assign(
        particle_index=np.arange(n_images),
        rot_deg=rot,
        tilt_deg=tilt,
        psi_deg=psi,
        defocus_u_angstrom=15000.0,
        defocus_v_angstrom=14800.0,
        voltage_kv=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.07,
    )
    folder.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(folder / "stack.mrcs", overwrite=True) as mrc:
        mrc.set_data(images)
        mrc.voxel_size = 4.0
    (folder / "mrcs_shards").mkdir(exist_ok=True)
    for i, start in enumerate(range(0, n_images, images_per_shard)):
        with mrcfile.new(folder / f"mrcs_shards/part-{i:05d}.mrcs", overwrite=True) as mrc:
            mrc.set_data(images[start : start + images_per_shard])
    entries = []
    for i, start in enumerate(range(0, n_images, images_per_shard)):
        part = slice(start, start + images_per_shard)
        path = folder / f"shards/part-{i:05d}.parquet"
        path.parent.mkdir(exist_ok=True)
        pq.write_table(particle_rows_to_arrow(images[part], table.iloc[part]), path, row_group_size=row_group)
        entries.append(ShardEntry(path=f"shards/part-{i:05d}.parquet", count=len(images[part])))
    manifest = DatasetManifest(
        name="bench",
        kind="particles",
        voxel_size_angstrom=4.0,
        box_px=box,
        count=n_images,
        shards=entries,
        columns={"image": "noise"},
    )
    return folder, manifest


class _ChunkedMmap(torch.utils.data.Dataset):
    def __init__(self, path: Path, chunk: int) -> None:
        self.path, self.chunk = path, chunk
        with mrcfile.mmap(path, permissive=True) as m:
            self.n = m.data.shape[0]

    def __len__(self) -> int:
        return (self.n + self.chunk - 1) // self.chunk

    def __getitem__(self, i: int) -> torch.Tensor:
        with mrcfile.mmap(self.path, permissive=True) as m:
            return torch.from_numpy(np.array(m.data[i * self.chunk : (i + 1) * self.chunk]))


def rate_mmap_loader(folder: Path) -> float:
    loader = torch.utils.data.DataLoader(_ChunkedMmap(folder / "stack.mrcs", BATCH), batch_size=None, shuffle=True)
    for _ in loader:  # warm-up pass
        pass
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch)
    return n / (time.perf_counter() - start)


def _decode_mrcs(batch: dict) -> dict:
    stacks = []
    for blob in batch["bytes"]:
        with mrcfile.mrcinterpreter.MrcInterpreter(iostream=io.BytesIO(blob), permissive=True) as mrc:
            stacks.append(np.asarray(mrc.data, dtype=np.float32))
    return {"image": np.concatenate(stacks)}


def mrcs_shard_dataset(folder: Path) -> ray.data.Dataset:
    """The alternative shard format: .mrcs shards read whole by Ray and decoded by mrcfile."""
    return ray.data.read_binary_files(sorted(str(p) for p in (folder / "mrcs_shards").glob("*.mrcs"))).map_batches(
        _decode_mrcs, batch_size=1, batch_format="numpy"
    )


def rate_ray_driver(folder: Path, manifest: DatasetManifest, mrcs_shards: bool = False) -> float:
    ds = mrcs_shard_dataset(folder) if mrcs_shards else ray_dataset(particle_stream(folder, manifest))
    rates = []
    for _ in range(2):
        start, n = time.perf_counter(), 0
        for batch in ds.iter_torch_batches(batch_size=BATCH, dtypes=torch.float32, prefetch_batches=4):
            n += len(batch["image"])
        rates.append(n / (time.perf_counter() - start))
    return rates[-1]


def rate_local_stream(folder: Path, manifest: DatasetManifest) -> float:
    """Steady-state images/s of the in-process route's reader, with the shuffle window a training run uses."""
    stream = LocalStream(particle_stream(folder, manifest))
    rates = []
    for epoch in range(2):
        start, n = time.perf_counter(), 0
        for batch in iter_particle_batches(stream, BATCH, torch.device("cpu"), RunnerConfig().shuffle_buffer_images, epoch):
            n += len(batch["image"])
        rates.append(n / (time.perf_counter() - start))
    return rates[-1]


def _consume(config: dict) -> float:
    device = torch.device("cpu")
    context = ray.train.get_context()
    if config["feed"] == "worker":  # as the runner hands a worker its part with ``parquet_feed: worker``
        stream = LocalStream(config["spec"], part=(context.get_world_rank(), context.get_world_size()))
    else:
        shard = ray.train.get_dataset_shard("train")
    rates = []
    for epoch in range(2):
        start, n = time.perf_counter(), 0
        if config["feed"] == "worker":
            batches = iter_particle_batches(stream, BATCH, device, RunnerConfig().shuffle_buffer_images, epoch)
        elif config["feed"] == "ray":  # as the runner hands a shard to a method
            batches = iter_particle_batches(RayShard(shard), BATCH, device)
        else:
            batches = shard.iter_torch_batches(batch_size=BATCH, dtypes=torch.float32, prefetch_batches=1)
        for batch in batches:
            n += len(batch["image"])
        rates.append(n / (time.perf_counter() - start))
    return rates[-1]


def rate_ray_trainer(folder: Path, manifest: DatasetManifest, feed: str) -> float:
    """Steady-state images/s of rank 0 of a 2-worker TorchTrainer: its streaming split of Ray Data with cryoray's
    settings (``ray``) or the first ones (``ray_base``), or its own part of the shards (``worker``)."""
    spec = particle_stream(folder, manifest)
    datasets = {}
    if feed != "worker":
        datasets["train"] = ray_dataset(spec)
        if feed == "ray_base":  # a row-wise identity map: the per-row Python overhead of the first measurement
            datasets["train"] = datasets["train"].map(lambda row: row)
    trainer = TorchTrainer(
        _consume,
        train_loop_config={"feed": feed, "spec": spec},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp(), name=f"bench-{time.time_ns()}"),
        datasets=datasets,
    )
    return float(trainer.fit().return_value)


def rate_model_step(box: int, batch_size: int = 64, steps: int = 10) -> float:
    """Images/s one known-pose reconstruction step consumes (projection + CTF + shift + backward + Adam)."""
    method = KnownPoseReconstruction()
    manifest = DatasetManifest(
        name="b",
        kind="particles",
        voxel_size_angstrom=4.0,
        box_px=box,
        count=1,
        shards=[ShardEntry(path="x", count=1)],
        columns={},
    )
    ctx = TrainContext(
        rank=0, world_size=1, device=torch.device("cpu"), dataset_dir=Path("."), manifest=manifest, runner=RunnerConfig()
    )
    config = ReconstructConfig()
    state = method.setup(config, manifest, ctx)
    batch = {c: torch.zeros(batch_size) for c in PARTICLE_COLUMNS}
    batch.update(
        image=torch.randn(batch_size, box, box),
        rotation=random_rotations(batch_size, generator=torch.Generator().manual_seed(1)),
        defocus_u_angstrom=torch.full((batch_size,), 15000.0),
        defocus_v_angstrom=torch.full((batch_size,), 14800.0),
        voltage_kv=torch.full((batch_size,), 300.0),
        cs_mm=torch.full((batch_size,), 2.7),
        amplitude_contrast=torch.full((batch_size,), 0.07),
    )
    method.train_step(state, batch, config, ctx)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        method.train_step(state, batch, config, ctx)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--box", type=int, nargs="*", default=[64, 128])
    parser.add_argument("--images", type=int, default=None, help="default 16384 at 64 px, 8192 at 128 px")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/_work"))
    args = parser.parse_args()
    # address="local": a private cluster, never one a `ray start` left running on the machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    report = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    }
    for box in args.box:
        n = args.images or (16384 if box <= 64 else 8192)
        folder, manifest = make_data(args.out / f"box{box}", box, n, row_group=shards.ROW_GROUP_SIZE)
        base_folder, base_manifest = make_data(args.out / f"box{box}_base", box, n, row_group=128)
        row = {"images": n, "MB": n * box * box * 4 / 1e6}
        row["mmap_loader"] = rate_mmap_loader(folder)
        row["local_stream"] = rate_local_stream(folder, manifest)
        row["ray_driver"] = rate_ray_driver(folder, manifest)
        row["ray_driver_mrcs_shards"] = rate_ray_driver(folder, manifest, mrcs_shards=True)
        row["ray_trainer_per_rank"] = rate_ray_trainer(folder, manifest, "ray")
        row["ray_trainer_base_per_rank"] = rate_ray_trainer(base_folder, base_manifest, "ray_base")
        row["worker_trainer_per_rank"] = rate_ray_trainer(folder, manifest, "worker")
        row["model_step"] = rate_model_step(box)
        row["ratio_trainer_over_model"] = row["ray_trainer_per_rank"] / row["model_step"]
        row["ratio_trainer_over_base"] = row["ray_trainer_per_rank"] / row["ray_trainer_base_per_rank"]
        row["ratio_mmap_over_trainer"] = row["mmap_loader"] / row["ray_trainer_per_rank"]
        row["ratio_worker_over_ray_trainer"] = row["worker_trainer_per_rank"] / row["ray_trainer_per_rank"]
        row["ratio_mmap_over_worker_trainer"] = row["mmap_loader"] / row["worker_trainer_per_rank"]
        report[f"{box}px"] = row
        print(json.dumps({f"{box}px": row}, indent=1), flush=True)
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
