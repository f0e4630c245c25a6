"""Stream specs (``cryoray.data.streams``) as lazy Ray Data datasets, for the Ray Train runner.

Every dataset gets its own ``DataContext`` copy with progress bars off and :class:`~cryoray.data.pacing.IdleBackoff`
registered. A generated stream's blocks read the epoch from Ray Data's execution index of the dataset
(``_execution_idx``, the counter its own seeded shuffles read; it advances once per epoch and a task sees its
dataset's value) and the replica from the worker's context (:func:`set_replica`), never from global state, which
differs between the tasks that run the blocks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import ray.data
from ray.data import FileShuffleConfig

from cryoray import console
from cryoray.data.pacing import paced
from cryoray.data.streams import BlockStream, GeneratedRows, ParquetRows, Stream, arrow_columns, block_rng

_REPLICA_KEY = "cryoray.streams.replica"


def ray_dataset(spec: Stream) -> ray.data.Dataset:
    """The lazy dataset of ``spec``; re-executed (re-shuffled, re-drawn) every time it is iterated."""
    if isinstance(spec, ParquetRows):
        shuffle = FileShuffleConfig(seed=spec.seed, reseed_after_execution=True) if spec.shuffle_files else None
        dataset = ray.data.read_parquet(list(spec.files), columns=spec.read_columns, shuffle=shuffle)
        if spec.below is not None:
            dataset = dataset.filter(expr=f"{spec.below[0]} < {spec.below[1]}")
        if spec.limit is not None:
            dataset = dataset.limit(spec.limit)
        dataset = dataset.select_columns(list(spec.columns))
    else:
        blocks = max(1, -(-spec.n_rows // spec.rows_per_block))
        dataset = ray.data.range(spec.n_rows, override_num_blocks=blocks).map_batches(
            _make_block,
            fn_kwargs={"spec": spec},
            batch_size=spec.rows_per_block,
            batch_format="numpy",
            num_cpus=spec.task_cpus,
        )
    dataset.context.enable_progress_bars = False  # this dataset's own DataContext copy, not the process-wide one
    dataset.context.print_on_execution_start = console.verbosity() == "verbose"  # a plan line per epoch otherwise
    return paced(dataset)


def set_replica(stream: ray.data.DataIterator, replica: int) -> None:
    """Give this worker's copy of a replicated generated stream its own draws (pass the worker's rank): every
    worker executes its own copy with the same seed and execution index."""
    stream.get_context().set_config(_REPLICA_KEY, replica)


class RayShard(BlockStream):
    """A Train worker's shard of a Ray dataset, taken as whole Arrow blocks and batched by cryoray's own code.

    Both routes then cut, shuffle, pin and prefetch batches with the same code (``BlockStream``). Per rank it is as
    fast as Ray's own ``iter_torch_batches``, not faster: on 2 cores Ray Data's read path is the limit
    (``benchmarks/data_throughput.py``, benchmarks/RESULTS.md).
    """

    def __init__(self, iterator: ray.data.DataIterator, prefetch_blocks: int = 2) -> None:
        self.iterator = iterator
        self.prefetch_blocks = prefetch_blocks

    def blocks(self) -> Iterator[dict[str, np.ndarray]]:
        for table in self.iterator.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=self.prefetch_blocks):
            if table.num_rows:
                yield arrow_columns(table)


def _make_block(batch: dict[str, np.ndarray], spec: GeneratedRows) -> dict[str, np.ndarray]:
    ids = np.asarray(batch["id"], dtype=np.int64)
    context = ray.data.DataContext.get_current()
    rng = block_rng(spec.seed, context._execution_idx, context.get_config(_REPLICA_KEY, 0), spec.key, int(ids[0]))
    return spec.make(ids, rng, **spec.kwargs)
