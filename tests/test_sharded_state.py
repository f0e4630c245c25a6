"""Per-rank (sharded) training state in runner checkpoints: every rank writes its own file into the one
checkpoint directory, and a restore offers each rank every file, its own first, so a per-image table comes
back row for row, also with a different number of workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from cryoray.data.pose_table import PoseTable, owned_row_range
from cryoray.physics import random_rotations
from cryoray.train.context import TrainContext
from cryoray.train.loop import iter_sharded_states, save_shards
from cryoray.train.method import TrainState


def _ctx(rank: int, world_size: int) -> TrainContext:
    return TrainContext(
        rank=rank, world_size=world_size, device=torch.device("cpu"), dataset_dir=Path("."), manifest=None, runner=None
    )


def _tables(n_images: int, world_size: int, particle_index: np.ndarray) -> list[PoseTable]:
    return [PoseTable(particle_index[slice(*owned_row_range(n_images, r, world_size))]) for r in range(world_size)]


def test_each_rank_restores_its_rows_also_with_another_worker_count(tmp_path):
    n = 50
    particle_index = np.random.default_rng(0).permutation(1000)[:n]  # arbitrary ids, not row numbers
    truth = random_rotations(1000, generator=torch.Generator().manual_seed(0))
    saved = _tables(n, 2, particle_index)
    for rank, table in enumerate(saved):
        rows = torch.arange(len(table))
        table.set_poses(rows, truth[table.particle_index])
        table.adam_step(rows, torch.randn(len(table), 3), None, lr=0.01)
        save_shards(tmp_path, TrainState(modules={}, optimizers={}, sharded={"pose_table": table}), _ctx(rank, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sharded-rank00000-of-00002.pt", "sharded-rank00001-of-00002.pt"]

    # Same worker count: each rank is offered its own file first and stops there.
    opened = []
    for rank in range(2):
        restored = _tables(n, 2, particle_index)[rank]
        shards = iter_sharded_states(tmp_path, "pose_table", _ctx(rank, 2))
        restored.load_shard_state_dicts(s for s in shards if not opened.append(rank))
        assert opened.count(rank) == 1
        for name, value in saved[rank].shard_state_dict().items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(restored.shard_state_dict()[name], value), name

    # Three workers resume a two-worker run: every image's pose and Adam state, found by particle_index.
    restored = _tables(n, 3, particle_index)
    for rank, table in enumerate(restored):
        table.load_shard_state_dicts(iter_sharded_states(tmp_path, "pose_table", _ctx(rank, 3)))
        assert table.fully_initialized
    merged_index = torch.cat([t.particle_index for t in restored])
    merged = torch.cat([t.rotations(torch.arange(len(t))) for t in restored])
    before = torch.cat([t.rotations(torch.arange(len(t))) for t in saved])
    before_index = torch.cat([t.particle_index for t in saved])
    assert sorted(merged_index.tolist()) == sorted(before_index.tolist())
    torch.testing.assert_close(merged[torch.argsort(merged_index)], before[torch.argsort(before_index)])
    steps = torch.cat([t.adam_steps for t in restored])
    assert bool((steps == 1).all())
