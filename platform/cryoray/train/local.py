"""The in-process route: a method trained in this process without Ray (``--num-workers 0``, the GPU suite).

The same hooks and loop as on Ray Train (``cryoray.train.loop.train_epochs``), fed by :class:`LocalStream`
readers of the same stream specs, as one worker (rank 0 of 1) on the CPU or the first GPU. Checkpoints are the
same files in the same place as the Ray runner's (``<storage>/<run name>/epoch_NNNN``, the newest
``checkpoints_to_keep`` kept); each is written into a hidden folder and renamed when complete, so an interrupted
write never leaves a folder that looks whole, and a rerun with the same run name resumes from the newest.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from cryoray.config import JobConfig
from cryoray.data.streams import LocalStream
from cryoray.errors import CryorayInputError
from cryoray.io.manifest import DatasetManifest
from cryoray.tracking import RunLogger, TrackingHandle
from cryoray.train.context import NonFiniteLossError, TrainContext
from cryoray.train.loop import TrainingOutcome, newest_checkpoint, restore_checkpoint, steps_per_epoch, train_epochs
from cryoray.train.method import Method


def local_storage(job: JobConfig) -> Path:
    """Where in-process runs keep their checkpoints; refuses remote storage (this route writes plain folders).
    The job checks it on the driver before tracking starts."""
    if "://" in job.checkpoint_storage:
        raise CryorayInputError(
            None, "--storage-path", "a local folder when training in this process (--num-workers 0)", job.checkpoint_storage
        )
    return Path(job.checkpoint_storage).expanduser().resolve()


def run_local(
    method: Method[Any],
    job: JobConfig,
    method_config: BaseModel,
    dataset_dir: Path,
    manifest: DatasetManifest,
    run_name: str,
    tracking: TrackingHandle | None,
) -> TrainingOutcome:
    """Train ``method`` in this process (CUDA when ``job.use_gpu``); raises ``NonFiniteLossError`` like the runner."""
    run_dir = local_storage(job) / run_name
    streams = method.datasets(dataset_dir, manifest, method_config, seed=job.train.seed)
    ctx = TrainContext(
        rank=0,
        world_size=1,
        device=torch.device("cuda") if job.use_gpu else torch.device("cpu"),
        dataset_dir=dataset_dir,
        manifest=manifest,
        runner=job.train,
    )
    ctx.steps_per_epoch = steps_per_epoch(method.epoch_items(method_config, manifest), 1, job.train)
    torch.manual_seed(job.train.seed * 1009)
    state = method.setup(method_config, manifest, ctx)
    latest = newest_checkpoint(str(run_dir))
    resumed_from = None if latest is None else restore_checkpoint(Path(latest), method, state, ctx)
    start_epoch = 0 if resumed_from is None else resumed_from + 1
    ctx.datasets = {name: LocalStream(spec, first_execution=start_epoch) for name, spec in streams.items()}

    def report(epoch: int, metrics: dict[str, float], write: Callable[[Path], None] | None) -> None:
        if write is None:
            return
        final, partial = run_dir / f"epoch_{epoch:04d}", run_dir / f".epoch_{epoch:04d}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        write(partial)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in sorted(run_dir.glob("epoch_*"))[: -job.train.checkpoints_to_keep]:
            shutil.rmtree(old)

    outcome = train_epochs(method, job, method_config, state, ctx, RunLogger(tracking), start_epoch, report)
    assert outcome is not None  # rank 0 always returns its outcome
    if outcome.get("error"):
        raise NonFiniteLossError(outcome["error"])
    return TrainingOutcome(
        metrics=outcome["metrics"],
        artifacts=outcome["artifacts"],
        epochs_completed=outcome["epochs_completed"],
        resumed_from_epoch=resumed_from,
        checkpoint_path=newest_checkpoint(str(run_dir)),
    )
