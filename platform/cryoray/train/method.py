"""The one small interface every method implements to plug into the generic runner.

A method says which data it streams (driver side), builds its networks, optimisers and learning-rate schedules
(worker side), takes one training step on a batch, evaluates, tests and writes its model. The runner owns
everything else: Ray Train workers, DDP wrapping, the data shard, the step budget, stepping the schedulers,
checkpoint/resume, the non-finite-loss guard, MLflow logging. A method keeps no run state on ``self``: what a
worker needs between hooks lives in the ``TrainState`` its ``setup`` returns (``runtime`` for what is not
checkpointed), so one instance may serve any number of runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar, overload

import torch
from pydantic import BaseModel

from cryoray.errors import CryorayInputError
from cryoray.io.manifest import DatasetKind, DatasetManifest
from cryoray.train.context import TrainContext

if TYPE_CHECKING:
    from cryoray.data.streams import Stream

ConfigT = TypeVar("ConfigT", bound=BaseModel)
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


class ShardedState(Protocol):
    """Per-worker state that is not replicated (e.g. a per-image table over this worker's images).

    Every rank writes its own ``shard_state_dict()`` into the checkpoint; on restore each rank is offered
    every saved shard (its own rank's first, loaded lazily one file at a time) and keeps what it owns.
    """

    def shard_state_dict(self) -> dict[str, Any]: ...

    def load_shard_state_dicts(self, shards: Iterable[dict[str, Any]]) -> None: ...


@dataclass
class TrainState:
    """What a method trains; the runner wraps ``modules`` for DDP and checkpoints all of it but ``runtime``.

    ``schedulers`` are torch LR schedulers the runner steps once after every training step.
    ``extra`` holds small plain state (flags, counters; tensors, numbers, strings, lists and dicts only, since
    checkpoints are read without unpickling code) saved in every checkpoint (rank 0's copy).
    ``sharded`` holds per-worker state that every rank checkpoints and restores itself.
    ``runtime`` is the method's per-worker scratch object (this rank's rows, running tallies), rebuilt by
    ``setup`` and never saved.
    """

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    sharded: dict[str, ShardedState] = field(default_factory=dict)
    runtime: Any = None

    @overload
    def unwrapped(self, name: str) -> torch.nn.Module: ...

    @overload
    def unwrapped(self, name: str, kind: type[ModuleT]) -> ModuleT: ...

    def unwrapped(self, name: str, kind: type[torch.nn.Module] = torch.nn.Module) -> torch.nn.Module:
        """The module without its DDP wrapper (for state dicts and evaluation), checked to be a ``kind``.

        ``kind`` gives the caller the subclass's own attributes (``state.unwrapped("decoder", HartleyDecoder)``).
        """
        module = self.modules[name]
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        if not isinstance(module, kind):
            raise TypeError(f"module {name!r} is a {type(module).__name__}, not a {kind.__name__}")
        return module


class Method(ABC, Generic[ConfigT]):
    """A trainable method, generic in its config type. Subclasses set the class attributes and the hooks."""

    name: ClassVar[str]
    config_schema: ClassVar[type[BaseModel]]
    dataset_kind: ClassVar[DatasetKind]
    # The method's own defaults for the shared runner settings ({"train": {...}}), e.g. a batch of 3D patches
    # is far smaller than a batch of 2D images.
    default_preset: ClassVar[dict[str, Any]] = {}
    # Overrides applied by --smoke (a run of at most 2 minutes on 2 CPU cores): {"train": {...}, "method": {...}}.
    smoke_preset: ClassVar[dict[str, Any]] = {}
    # Multi-head or partly frozen models leave parameters unused on some steps; DDP must know.
    find_unused_parameters: ClassVar[bool] = False
    # The epoch metrics worth ranking runs by, each with its better direction; the first is the one the console's
    # evaluation line shows. A sweep may rank trials by these or by a ``train_<step metric>`` epoch mean.
    key_metrics: ClassVar[dict[str, Literal["min", "max"]]] = {}

    def check_dataset(self, dataset_dir: Path, manifest: DatasetManifest, config: ConfigT) -> None:
        """Driver side, before Ray starts: refuse a dataset this method cannot train on with a ``CryorayInputError``
        (raised later, from ``datasets`` or a worker, it would surface only after Ray and MLflow started). The base
        checks the kind; a method with more needs (columns, sizes) extends it and calls ``super()``."""
        if manifest.kind != self.dataset_kind:
            raise CryorayInputError(dataset_dir, "kind", f"a {self.dataset_kind} dataset for {self.name}", manifest.kind)

    @abstractmethod
    def datasets(self, dataset_dir: Path, manifest: DatasetManifest, config: ConfigT, seed: int = 0) -> dict[str, Stream]:
        """Driver side: the streams (``cryoray.data.streams`` specs); on Ray ``train`` is split across the workers
        and the others are replicated (each worker draws its own copy of a generated one).

        ``seed`` (the run's ``train.seed``) seeds every random choice a stream makes (file order, sampled patches),
        per execution of the stream, so that epochs differ and a run with the same seed repeats them."""

    def epoch_items(self, config: ConfigT, manifest: DatasetManifest) -> int:
        """Training examples one epoch streams over all workers; the runner derives the step budget from it."""
        return manifest.count

    @abstractmethod
    def setup(self, config: ConfigT, manifest: DatasetManifest, ctx: TrainContext) -> TrainState:
        """Worker side: networks (on ``ctx.device``), optimisers, schedulers (``ctx.total_steps`` is known)."""

    def begin_epoch(self, state: TrainState, config: ConfigT, ctx: TrainContext) -> None:
        """Before an epoch's first batch, on every rank (collectives allowed): e.g. a switch of training stage."""

    def train_batches(self, state: TrainState, config: ConfigT, ctx: TrainContext) -> Iterator[dict[str, torch.Tensor]]:
        """This worker's batches for one epoch; the default streams every column of its ``train`` shard."""
        return ctx.datasets["train"].iter_torch_batches(
            batch_size=ctx.runner.batch_size,
            dtypes=torch.float32,
            device=ctx.device,
            prefetch_batches=4,
            local_shuffle_buffer_size=ctx.runner.shuffle_buffer_images,
            local_shuffle_seed=ctx.epoch_seed,
        )

    @abstractmethod
    def train_step(
        self, state: TrainState, batch: dict[str, torch.Tensor], config: ConfigT, ctx: TrainContext
    ) -> dict[str, float]:
        """One step on one batch; optimise through ``ctx.step`` so non-finite losses are caught."""

    @abstractmethod
    def evaluate(self, state: TrainState, config: ConfigT, ctx: TrainContext) -> dict[str, float]:
        """Epoch-end metrics (called on every rank; may use collectives; ``ctx.epoch_is_due`` for a cadence)."""

    def test(
        self, state: TrainState, config: ConfigT, ctx: TrainContext, output_dir: Path
    ) -> tuple[dict[str, float], dict[str, str]]:
        """After training, on every rank: the final held-out metrics and the files that show them (rank 0
        writes). It computes its own scores (no other hook runs before it at the end); the metrics join the
        run's final metrics (``RESULT``) and MLflow. A method without a held-out split keeps this default."""
        return {}, {}

    @abstractmethod
    def write_artifacts(self, state: TrainState, config: ConfigT, ctx: TrainContext, output_dir: Path) -> dict[str, str]:
        """At the end, on every rank (collectives allowed): rank 0 writes the model file and other artifacts in
        standard formats and returns {name: absolute path}; other ranks return {}."""
