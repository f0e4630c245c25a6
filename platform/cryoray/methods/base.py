"""The one small interface every method implements to plug into the generic runner.

A method says which data it streams (driver side), builds its networks and optimisers (worker side), takes
one training step on a batch, evaluates, and writes its artifacts. The runner owns everything else: Ray
Train workers, DDP wrapping, the data shard, checkpoint/resume, the non-finite-loss guard, MLflow logging.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from pydantic import BaseModel

from cryoray.io.manifest import DatasetKind, DatasetManifest

if TYPE_CHECKING:
    import ray.data

    from cryoray.train.context import TrainContext


class ShardedState(Protocol):
    """Per-worker state that is not replicated (e.g. a per-image table over this worker's images).

    Every rank writes its own ``shard_state_dict()`` into the checkpoint; on restore each rank is offered
    every saved shard (its own rank's first, loaded lazily one file at a time) and keeps what it owns.
    """

    def shard_state_dict(self) -> dict[str, Any]: ...

    def load_shard_state_dicts(self, shards: Iterable[dict[str, Any]]) -> None: ...


@dataclass
class TrainState:
    """What a method trains; the runner wraps ``modules`` for DDP and checkpoints all of it.

    ``extra`` holds small picklable state (schedules, counters) saved in every checkpoint (rank 0's copy).
    ``sharded`` holds per-worker state that every rank checkpoints and restores itself.
    """

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    sharded: dict[str, ShardedState] = field(default_factory=dict)

    def unwrapped(self, name: str) -> torch.nn.Module:
        """The module without its DDP wrapper (for state dicts and evaluation)."""
        module = self.modules[name]
        return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


class Method(ABC):
    """A trainable method. Subclasses set the class attributes and implement the five hooks."""

    name: ClassVar[str]
    config_schema: ClassVar[type[BaseModel]]
    dataset_kind: ClassVar[DatasetKind]
    default_dataset: ClassVar[str]
    smoke_dataset: ClassVar[str]
    # The method's own defaults for the shared runner settings ({"train": {...}}), e.g. a batch of 3D patches
    # is far smaller than a batch of 2D images.
    default_preset: ClassVar[dict[str, Any]] = {}
    # Overrides applied by --smoke (a run of at most 2 minutes on 2 CPU cores): {"train": {...}, "method": {...}}.
    smoke_preset: ClassVar[dict[str, Any]] = {}
    # Multi-head or partly frozen models leave parameters unused on some steps; DDP must know.
    find_unused_parameters: ClassVar[bool] = False

    @abstractmethod
    def datasets(
        self, dataset_dir: Path, manifest: DatasetManifest, config: BaseModel
    ) -> dict[str, ray.data.Dataset]:
        """Driver side: the Ray datasets; ``train`` is split across workers, the others are replicated."""

    @abstractmethod
    def setup(self, config: BaseModel, manifest: DatasetManifest, ctx: TrainContext) -> TrainState:
        """Worker side: networks (on ``ctx.device``) and optimisers."""

    def train_batches(self, config: BaseModel, ctx: TrainContext) -> Iterator[dict[str, torch.Tensor]]:
        """This worker's batches for one epoch; the default streams every column of its ``train`` shard."""
        return ctx.datasets["train"].iter_torch_batches(
            batch_size=ctx.runner.batch_size,
            dtypes=torch.float32,
            device=ctx.device,
            prefetch_batches=4,
            local_shuffle_buffer_size=ctx.runner.shuffle_buffer_images,
        )

    @abstractmethod
    def train_step(
        self, state: TrainState, batch: dict[str, torch.Tensor], config: BaseModel, ctx: TrainContext
    ) -> dict[str, float]:
        """One step on one batch; optimise through ``ctx.step`` so non-finite losses are caught."""

    @abstractmethod
    def evaluate(self, state: TrainState, config: BaseModel, ctx: TrainContext) -> dict[str, float]:
        """Epoch-end metrics (called on every rank; may use collectives)."""

    def test(
        self, state: TrainState, config: BaseModel, ctx: TrainContext, output_dir: Path
    ) -> tuple[dict[str, float], dict[str, str]]:
        """After training, on every rank: held-out metrics and the files that show them (rank 0 writes).

        The metrics join the run's final metrics (``RESULT``) and MLflow; a method without a held-out
        split keeps this default.
        """
        return {}, {}

    @abstractmethod
    def write_artifacts(
        self, state: TrainState, config: BaseModel, ctx: TrainContext, output_dir: Path
    ) -> dict[str, str]:
        """At the end, on every rank (collectives allowed): rank 0 writes the artifacts in standard formats
        and returns {name: absolute path}; other ranks return {}."""
