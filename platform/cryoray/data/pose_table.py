"""Per-image state that lives with its images: a fixed row partition per worker and a sharded pose table.

Semi-amortized pose inference keeps one pose per particle image (cryoSPIN's auto-decoding stage). With N Ray
Train workers that table must not be replicated: each worker owns the images of a fixed, contiguous block of
the dataset's global row order (manifest shard order, then row order inside each Parquet file) and reads only
those rows, every epoch, straight from the Parquet row groups. (The runner's Ray Data ``streaming_split``
hands rows to workers dynamically, so a worker would not see the same images twice.) The pose table of a
worker holds only its own images, keyed by ``particle_index``; its optimiser state is per row; it writes and
reads its own checkpoint file (``TrainState.sharded``), and a restore picks rows by ``particle_index`` so a
run may resume with a different number of workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cryoray.data.shards import IMAGE_COLUMN, PARTICLE_COLUMNS
from cryoray.errors import CryorayInputError
from cryoray.io.manifest import DatasetManifest, shard_paths
from cryoray.physics import axis_angle_to_matrix

POSE_TABLE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RowChunk:
    """Rows ``[start, stop)`` of row group ``row_group`` of one Parquet file (row numbers within the group)."""

    path: str
    row_group: int
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start


def owned_row_range(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous block ``[lo, hi)`` of global rows that ``rank`` owns (sizes differ by at most one)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"owned_row_range: rank {rank} is not in a world of size {world_size}")
    return count * rank // world_size, count * (rank + 1) // world_size


def owned_chunks(dataset_dir: str | Path, manifest: DatasetManifest, rank: int, world_size: int) -> list[RowChunk]:
    """The row-group pieces that hold this rank's block of rows, in global row order."""
    lo, hi = owned_row_range(manifest.count, rank, world_size)
    chunks: list[RowChunk] = []
    offset = 0
    for path in shard_paths(dataset_dir, manifest):
        metadata = pq.ParquetFile(path).metadata
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            start, stop = max(lo - offset, 0), min(hi - offset, rows)
            if start < stop:
                chunks.append(RowChunk(path, group, start, stop))
            offset += rows
    if sum(c.count for c in chunks) != hi - lo:
        raise CryorayInputError(
            dataset_dir, "shards", f"{manifest.count} rows as the manifest says", f"{offset} rows in the Parquet files"
        )
    return chunks


def _read_chunk(chunk: RowChunk, columns: list[str]) -> pa.Table:
    table = pq.ParquetFile(chunk.path).read_row_group(chunk.row_group, columns=columns)
    return table.slice(chunk.start, chunk.count)


def read_owned_columns(chunks: Iterable[RowChunk], columns: list[str]) -> dict[str, np.ndarray]:
    """Scalar columns of every owned row, in row order, without reading the images."""
    tables = [_read_chunk(c, columns) for c in chunks]
    return {name: np.concatenate([t.column(name).to_numpy() for t in tables]) if tables else np.zeros(0) for name in columns}


def read_particle_indices(chunks: Iterable[RowChunk]) -> np.ndarray:
    """The ``particle_index`` of every owned row (reads one integer column only), in row order."""
    return read_owned_columns(chunks, ["particle_index"])["particle_index"].astype(np.int64)


def _to_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    arrays = {IMAGE_COLUMN: table.column(IMAGE_COLUMN).combine_chunks().to_numpy_ndarray().astype(np.float32)}
    for name in PARTICLE_COLUMNS:
        values = table.column(name).to_numpy()
        arrays[name] = values.astype(np.int64 if name == "particle_index" else np.float32)
    return arrays


def _to_batch(arrays: dict[str, np.ndarray], index: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(values[index])).to(device) for name, values in arrays.items()}


def iter_owned_batches(
    chunks: list[RowChunk],
    batch_size: int,
    device: torch.device,
    *,
    num_batches: int | None = None,
    shuffle_buffer_images: int | None = None,
    seed: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of this rank's rows: ``image`` (B, D, D) float32, ``particle_index`` int64, the rest float32.

    With ``seed`` the row groups come in a random order and rows are shuffled inside a buffer of
    ``shuffle_buffer_images``; without, rows come in order (the switch pass). ``num_batches`` makes every rank
    take the same number of DDP steps: a rank with fewer rows starts a new pass to make up the count, and
    ends early if it has more.
    """
    columns = [IMAGE_COLUMN, *PARTICLE_COLUMNS]
    rng = np.random.default_rng(seed)
    buffer_rows = max(shuffle_buffer_images or batch_size, batch_size)
    produced = 0
    while True:
        order = rng.permutation(len(chunks)) if seed is not None else np.arange(len(chunks))
        pending: list[dict[str, np.ndarray]] = []
        pending_rows = 0
        for position, chunk_index in enumerate(order):
            pending.append(_to_arrays(_read_chunk(chunks[chunk_index], columns)))
            pending_rows += chunks[chunk_index].count
            last = position == len(order) - 1
            if pending_rows < buffer_rows and not last:
                continue
            arrays = {name: np.concatenate([p[name] for p in pending]) for name in pending[0]}
            rows = rng.permutation(pending_rows) if seed is not None else np.arange(pending_rows)
            full = pending_rows if last else pending_rows - pending_rows % batch_size
            for begin in range(0, full, batch_size):
                yield _to_batch(arrays, rows[begin : min(begin + batch_size, full)], device)
                produced += 1
                if num_batches is not None and produced >= num_batches:
                    return
            keep = rows[full:]
            pending = [{name: values[keep] for name, values in arrays.items()}] if len(keep) else []
            pending_rows = len(keep)
        if num_batches is None or not chunks:
            return


class PoseTable:
    """This worker's per-image poses ``R = Exp(ω)·R_base`` (+ in-plane shifts) and their per-row Adam state.

    Rows are the owned images sorted by ``particle_index``. ``ω`` is an axis-angle perturbation of the base
    rotation (left multiplication, cryoSPIN's ``R_{t+1} = R_δ R_t``); :meth:`fold` re-linearises by moving
    ``Exp(ω)`` into the base and zeroing ``ω``. The Adam is per row: only the rows of the batch move, and each
    row counts its own steps for the bias correction (a dense Adam over the whole table would keep moving
    images that are not in the batch with their stale momentum).
    """

    def __init__(self, particle_index: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> None:
        keys = torch.as_tensor(np.asarray(particle_index), dtype=torch.int64)
        keys, _ = torch.sort(keys)
        if len(keys) > 1 and bool((keys[1:] == keys[:-1]).any()):
            raise ValueError("PoseTable: particle_index values must be unique")
        n = len(keys)
        self.device = torch.device(device)
        self.particle_index = keys.to(self.device)
        self.base_rotation = torch.eye(3, device=self.device).repeat(n, 1, 1)
        self.omega = torch.zeros(n, 3, device=self.device)
        self.shift_px = torch.zeros(n, 2, device=self.device)
        self.adam_exp_avg = torch.zeros(n, 5, device=self.device)
        self.adam_exp_avg_sq = torch.zeros(n, 5, device=self.device)
        self.adam_steps = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.initialized = torch.zeros(n, dtype=torch.bool, device=self.device)

    def __len__(self) -> int:
        return len(self.particle_index)

    @property
    def fully_initialized(self) -> bool:
        """Every row has a pose (a host read: for a once-per-epoch check, not a step)."""
        return bool(self.initialized.all())

    def rows(self, particle_index: torch.Tensor) -> torch.Tensor:
        """Table rows of ``particle_index`` values; an image this worker does not own is an error."""
        wanted = particle_index.to(self.device, torch.int64)
        rows = torch.searchsorted(self.particle_index, wanted).clamp_max(max(len(self) - 1, 0))
        # One host sync per batch, kept on purpose: a foreign index would silently train another image's pose.
        if len(self) == 0 or not bool((self.particle_index[rows] == wanted).all()):
            missing = wanted[(self.particle_index[rows] != wanted) if len(self) else slice(None)]
            raise KeyError(f"PoseTable: particle_index {missing[:5].tolist()} not in this worker's shard")
        return rows

    def set_poses(self, rows: torch.Tensor, rotations: torch.Tensor, shift_px: torch.Tensor | None = None) -> None:
        """Initialise rows (the switch to auto-decoding): base = the given rotation, ω = 0, fresh Adam state."""
        self.base_rotation[rows] = rotations.detach().to(self.base_rotation)
        self.omega[rows] = 0
        self.shift_px[rows] = 0 if shift_px is None else shift_px.detach().to(self.shift_px)
        self.adam_exp_avg[rows] = 0
        self.adam_exp_avg_sq[rows] = 0
        self.adam_steps[rows] = 0
        self.initialized[rows] = True

    def rotations(self, rows: torch.Tensor, omega: torch.Tensor | None = None) -> torch.Tensor:
        """``Exp(ω)·R_base`` for ``rows``; pass a leaf ``omega`` (len(rows), 3) to differentiate through it."""
        omega = self.omega[rows] if omega is None else omega
        return axis_angle_to_matrix(omega) @ self.base_rotation[rows]

    def adam_step(
        self,
        rows: torch.Tensor,
        grad_omega: torch.Tensor,
        grad_shift_px: torch.Tensor | None,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        """One Adam step on the ω (and shift) of ``rows`` only, each row with its own step count."""
        grad = torch.cat((grad_omega, torch.zeros_like(grad_omega[:, :2]) if grad_shift_px is None else grad_shift_px), 1)
        steps = self.adam_steps[rows] + 1
        exp_avg = betas[0] * self.adam_exp_avg[rows] + (1 - betas[0]) * grad
        exp_avg_sq = betas[1] * self.adam_exp_avg_sq[rows] + (1 - betas[1]) * grad * grad
        bias1 = 1 - betas[0] ** steps.to(grad.dtype)
        bias2 = 1 - betas[1] ** steps.to(grad.dtype)
        update = lr * (exp_avg / bias1[:, None]) / ((exp_avg_sq / bias2[:, None]).sqrt() + eps)
        self.adam_exp_avg[rows] = exp_avg
        self.adam_exp_avg_sq[rows] = exp_avg_sq
        self.adam_steps[rows] = steps
        self.omega[rows] -= update[:, :3]
        if grad_shift_px is not None:
            self.shift_px[rows] -= update[:, 3:]

    def fold(self, rows: torch.Tensor) -> None:
        """Re-linearise: ``R_base ← Exp(ω)·R_base``, ``ω ← 0`` (the Adam moments are kept)."""
        self.base_rotation[rows] = self.rotations(rows)
        self.omega[rows] = 0

    # ---- sharded checkpointing (TrainState.sharded protocol) ----

    def shard_state_dict(self) -> dict[str, Any]:
        """This worker's rows, on the CPU, keyed by ``particle_index``."""
        return {
            "schema_version": POSE_TABLE_SCHEMA_VERSION,
            "particle_index": self.particle_index.cpu(),
            "base_rotation": self.base_rotation.cpu(),
            "omega": self.omega.cpu(),
            "shift_px": self.shift_px.cpu(),
            "adam_exp_avg": self.adam_exp_avg.cpu(),
            "adam_exp_avg_sq": self.adam_exp_avg_sq.cpu(),
            "adam_steps": self.adam_steps.cpu(),
            "initialized": self.initialized.cpu(),
        }

    def load_shard_state_dicts(self, shards: Iterable[dict[str, Any]]) -> None:
        """Take this worker's rows from saved shards (any number of them, written by any worker count).

        Stops reading as soon as every owned row is found, so a restore with the same worker count reads
        only its own file (the runner offers that one first). Rows a checkpoint does not hold stay
        uninitialised; every initialised row of the checkpoint that this worker owns is restored.
        """
        found = torch.zeros(len(self), dtype=torch.bool, device=self.device)
        names = ("base_rotation", "omega", "shift_px", "adam_exp_avg", "adam_exp_avg_sq", "adam_steps", "initialized")
        for shard in shards:
            if shard.get("schema_version") != POSE_TABLE_SCHEMA_VERSION:
                raise ValueError(
                    f"pose table shard: schema_version {shard.get('schema_version')}, expected {POSE_TABLE_SCHEMA_VERSION}"
                )
            keys = shard["particle_index"].to(self.device)
            if len(self) == 0 or len(keys) == 0:
                continue
            position = torch.searchsorted(self.particle_index, keys).clamp_max(len(self) - 1)
            mine = self.particle_index[position] == keys
            rows = position[mine]
            for name in names:
                getattr(self, name)[rows] = shard[name].to(self.device)[mine.to(shard[name].device)]
            found[rows] = True
            if bool(found.all()):
                break
