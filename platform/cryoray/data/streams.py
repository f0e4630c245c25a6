"""What a method streams, said once and run two ways: by Ray Data on Train workers, or here in this process.

A method's ``datasets`` hook returns stream specs, frozen descriptions without Ray in them.
``cryoray.data.ray_streams.ray_dataset`` turns a spec into a lazy ``ray.data.Dataset`` (the runner splits ``train``
across the workers and replicates the others); :class:`LocalStream` iterates the same spec with pyarrow and numpy
(the in-process route, ``--num-workers 0``, and the GPU suite on a machine without Ray). Both re-execute a spec
every epoch: a Parquet stream's file order and a generated stream's draws change per epoch and repeat with the
seed. What differs between the routes: Ray's local shuffle buffer and block boundaries are its own, so the two
routes see the same rows in a different order.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cryoray.errors import CryorayInputError


@dataclass(frozen=True)
class ParquetRows:
    """The rows of Parquet shards, ``columns`` only: the file order shuffled per epoch from ``seed`` (unless
    ``shuffle_files`` is False), only rows with ``column < value`` when ``below`` is set, at most ``limit`` rows."""

    files: tuple[str, ...]
    columns: tuple[str, ...]
    seed: int = 0
    shuffle_files: bool = True
    below: tuple[str, int] | None = None
    limit: int | None = None

    @property
    def read_columns(self) -> list[str]:
        """The columns to read: ``columns`` plus the one ``below`` filters on."""
        return list(dict.fromkeys([*self.columns, *([self.below[0]] if self.below else [])]))


@dataclass(frozen=True)
class GeneratedRows:
    """``n_rows`` rows made block by block: ``make(ids, rng, **kwargs)`` returns the columns of the rows ``ids``.

    ``rng`` comes from :func:`block_rng`, keyed by the seed, the epoch (the stream's execution), the replica (a
    worker's copy of a replicated stream), ``key`` (which of a run's streams) and the block's first row, so a
    block repeats with the seed whoever computes it, each epoch draws anew and the replicas differ. ``make`` and
    ``kwargs`` must pickle (a module-level function and plain data): Ray ships them to its tasks.
    """

    n_rows: int
    make: Callable[..., dict[str, np.ndarray]]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    key: int = 0
    rows_per_block: int = 32
    task_cpus: float = 1.0  # Ray's reservation per block task


Stream = ParquetRows | GeneratedRows


def block_rng(seed: int, execution: int, replica: int, key: int, first_id: int) -> np.random.Generator:
    """The generator of one block of a :class:`GeneratedRows` stream (the same on both routes)."""
    return np.random.default_rng([seed, execution, replica, key, first_id])


def file_order(spec: ParquetRows, execution: int) -> list[str]:
    """The files in the order one execution reads them: a seeded permutation per execution, or as given."""
    if not spec.shuffle_files:
        return list(spec.files)
    order = np.random.default_rng([spec.seed, execution]).permutation(len(spec.files))
    return [spec.files[i] for i in order]


def arrow_columns(data: pa.RecordBatch | pa.Table) -> dict[str, np.ndarray]:
    """Numpy columns of Arrow data; tensor columns keep their shape (zero-copy views where Arrow allows)."""
    columns: dict[str, np.ndarray] = {}
    for name, column in zip(data.schema.names, data.columns):
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if isinstance(array, pa.FixedShapeTensorArray):
            columns[name] = array.to_numpy_ndarray()
        else:  # plain columns, and Ray Data's own tensor extension type (its to_numpy keeps the shape)
            columns[name] = array.to_numpy(zero_copy_only=False)
    return columns


RowGroups = dict[str, list[tuple[int, int]]]  # per file: (row group index, rows the stream takes from it)


def parquet_row_groups(spec: ParquetRows) -> RowGroups:
    """Each file's row groups and how many of their rows ``spec`` takes (``below`` applied; read from the footer,
    or from the filter column alone), so that a worker can find its equal part without reading the images."""
    groups: RowGroups = {}
    for path in spec.files:
        try:
            reader = pq.ParquetFile(path)
            if spec.below is None:
                groups[path] = [(i, reader.metadata.row_group(i).num_rows) for i in range(reader.num_row_groups)]
            else:
                name, value = spec.below
                groups[path] = [
                    (i, int(np.count_nonzero(arrow_columns(reader.read_row_group(i, columns=[name]))[name] < value)))
                    for i in range(reader.num_row_groups)
                ]
        except (OSError, pa.ArrowInvalid) as exc:
            raise CryorayInputError(path, "parquet", "a readable Parquet shard", str(exc)) from None
    return groups


def _parquet_blocks(
    spec: ParquetRows, groups: RowGroups, execution: int, part: tuple[int, int]
) -> Iterator[dict[str, np.ndarray]]:
    """One execution's rows, row group by row group; ``part`` (index, count) takes that equal part of them (the
    rows in this execution's file order, cut into ``count`` equal runs, the remainder dropped, as Ray's equal split
    does), reading only the row groups it overlaps."""
    index, count = part
    total = sum(rows for path in spec.files for _, rows in groups[path])
    total = total if spec.limit is None else min(total, spec.limit)
    share = total if count == 1 else total // count
    start, end = index * share, (index + 1) * share
    offset = 0
    for path in file_order(spec, execution):
        try:
            reader = pq.ParquetFile(path)
            for group, rows in groups[path]:
                first, offset = offset, offset + rows
                if offset <= start or not rows:
                    continue
                if first >= end:
                    return
                block = arrow_columns(reader.read_row_group(group, columns=spec.read_columns))
                if spec.below is not None:
                    name, value = spec.below
                    keep = block[name] < value
                    block = {k: block[k][keep] for k in spec.columns}
                yield {k: v[max(start - first, 0) : min(end, offset) - first] for k, v in block.items()}
        except (OSError, pa.ArrowInvalid) as exc:
            raise CryorayInputError(path, "parquet", "a readable Parquet shard", str(exc)) from None


def _generated_blocks(spec: GeneratedRows, execution: int, replica: int) -> Iterator[dict[str, np.ndarray]]:
    for first in range(0, spec.n_rows, spec.rows_per_block):
        ids = np.arange(first, min(first + spec.rows_per_block, spec.n_rows), dtype=np.int64)
        yield spec.make(ids, block_rng(spec.seed, execution, replica, spec.key, first), **spec.kwargs)


def _rows(block: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(block.values())))


def _rebatch(
    blocks: Iterator[dict[str, np.ndarray]], batch_size: int, drop_last: bool, shuffle_rows: int | None, seed: int | None
) -> Iterator[dict[str, np.ndarray]]:
    """Blocks cut into ``batch_size`` rows. With ``shuffle_rows``, rows are gathered until that many are held and
    then emitted in a seeded random order (a windowed shuffle, like Ray's local shuffle buffer)."""
    rng = np.random.default_rng(seed)
    window = max(batch_size, shuffle_rows or 0)
    held: list[dict[str, np.ndarray]] = []
    count = 0

    def flush(final: bool) -> Iterator[dict[str, np.ndarray]]:
        nonlocal held, count
        joined = {k: np.concatenate([b[k] for b in held]) for k in held[0]}
        if shuffle_rows:
            order = rng.permutation(count)
            joined = {k: v[order] for k, v in joined.items()}
        full = count // batch_size * batch_size
        for start in range(0, full, batch_size):
            yield {k: v[start : start + batch_size] for k, v in joined.items()}
        rest = {k: v[full:] for k, v in joined.items()}
        held, count = ([rest], count - full) if count > full else ([], 0)
        if final and held and not drop_last:
            yield held[0]

    for block in blocks:
        held.append(block)
        count += _rows(block)
        if count >= window:
            yield from flush(final=False)
    if held:
        yield from flush(final=True)


def _prefetched(source: Iterator[Any], depth: int) -> Iterator[Any]:
    """``source`` produced ``depth`` items ahead in a background thread (reading, drawing and cutting release the
    GIL, so the next batches are made while the model steps); errors surface in the consumer. When the consumer
    stops early (a step budget), the thread closes ``source`` before this generator returns, so a Ray shard's epoch
    has ended before the next one starts, as with Ray's own iterators."""
    if depth <= 0:
        yield from source
        return
    items: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put((kind, item), timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put("item", item):
                    return
            put("end", None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer as it is
            put("error", exc)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="cryoray-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = items.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


DTypes = torch.dtype | Mapping[str, torch.dtype] | None


def host_tensors(batch: Mapping[str, np.ndarray], dtypes: DTypes, pin: bool) -> dict[str, torch.Tensor]:
    """CPU tensors of a numpy batch with one host copy; ``pin``: in page-locked memory, so that the copy to a GPU is
    asynchronous."""
    out: dict[str, torch.Tensor] = {}
    for name, values in batch.items():
        dtype = dtypes.get(name) if isinstance(dtypes, Mapping) else dtypes
        writable = values if values.flags.writeable else values.copy()  # Arrow's zero-copy views are read-only
        tensor = torch.from_numpy(np.ascontiguousarray(writable))
        if dtype is not None:
            tensor = tensor.to(dtype)
        out[name] = tensor.pin_memory() if pin else tensor
    return out


class BlockStream(ABC):
    """Batches of tensors from a stream of numpy blocks: what a method iterates on either route.

    The blocks are cut into batches (optionally shuffled in a window first, like Ray's local shuffle buffer),
    turned into tensors without a per-row step (Arrow → numpy views → one host copy, pinned for a GPU), and made
    ``prefetch_batches`` ahead in a thread while the model steps.
    """

    @abstractmethod
    def blocks(self) -> Iterator[dict[str, np.ndarray]]:
        """One execution (one epoch) of the stream, as numpy blocks."""

    def iter_batches(self, batch_size: int | None = None, batch_format: str = "numpy") -> Iterator[dict[str, np.ndarray]]:
        """Numpy batches (``batch_size=None``: the blocks as they come)."""
        if batch_format != "numpy":
            raise ValueError(f"{type(self).__name__} yields numpy batches, not {batch_format!r}")
        blocks = self.blocks()
        return blocks if batch_size is None else _rebatch(blocks, batch_size, False, None, None)

    def iter_torch_batches(
        self,
        batch_size: int,
        dtypes: DTypes = None,
        device: torch.device | str = "cpu",
        prefetch_batches: int = 1,
        local_shuffle_buffer_size: int | None = None,
        local_shuffle_seed: int | None = None,
        drop_last: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of tensors on ``device``, made ``prefetch_batches`` ahead, optionally shuffled in a window."""
        device = torch.device(device)
        pin = device.type == "cuda"
        batches = _rebatch(self.blocks(), batch_size, drop_last, local_shuffle_buffer_size, local_shuffle_seed)
        # The host copies (and page-locking for a GPU) happen in the prefetch thread, while the model steps; here
        # only the asynchronous copy to the device (measured on an H200: the small 2D methods waited 18-42 % of
        # their time for data when all of it ran here).
        for batch in _prefetched((host_tensors(b, dtypes, pin) for b in batches), prefetch_batches):
            yield batch if device.type == "cpu" else {k: v.to(device, non_blocking=pin) for k, v in batch.items()}


class LocalStream(BlockStream):
    """A stream spec read or drawn in this process (the in-process route, and a Train worker's own reads).

    Each iteration is one execution (one epoch): ``execution`` counts them, from ``first_execution``. ``part``
    (index, count) of a Parquet stream reads only that equal part of each execution's rows: a worker's split of a
    training stream read by the worker itself (``parquet_feed: worker``).
    """

    def __init__(self, spec: Stream, replica: int = 0, first_execution: int = 0, part: tuple[int, int] = (0, 1)) -> None:
        if not 0 <= part[0] < part[1]:
            raise ValueError(f"LocalStream: part must be (index, count) with 0 <= index < count, got {part}")
        self.spec = spec
        self.replica = replica
        self.execution = first_execution
        self.part = part
        self._groups: RowGroups | None = None

    def blocks(self) -> Iterator[dict[str, np.ndarray]]:
        execution = self.execution
        self.execution += 1
        if isinstance(self.spec, ParquetRows):
            if self._groups is None:
                self._groups = parquet_row_groups(self.spec)
            return _parquet_blocks(self.spec, self._groups, execution, self.part)
        return _generated_blocks(self.spec, execution, self.replica)
