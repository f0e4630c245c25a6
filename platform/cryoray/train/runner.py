"""The one generic Ray Train runner: every method trains through ``run_training``.

The driver builds a ``TorchTrainer`` from the job config; each worker gets its dataset shard, wraps the
method's modules for DDP (gloo on CPU, nccl on GPU), restores the latest checkpoint when Ray restarts the
worker group after a failure, runs the epochs, checkpoints at the configured cadence, logs to MLflow from
rank 0, and finally lets the method write its artifacts.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from pydantic import BaseModel
from ray.data import ExecutionOptions
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    LoggingConfig,
    Result,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
from ray.train.torch import TorchTrainer

from cryoray import console
from cryoray.config import JobConfig
from cryoray.data.ray_streams import RayShard, ray_dataset, set_replica
from cryoray.data.streams import GeneratedRows, LocalStream
from cryoray.io.manifest import DatasetManifest
from cryoray.tracking import RunLogger, TrackingHandle
from cryoray.train.context import NonFiniteLossError, TrainContext
from cryoray.train.loop import TrainingOutcome, restore_checkpoint, steps_per_epoch, train_epochs
from cryoray.train.method import Method


def run_training(
    method: Method[Any],
    job: JobConfig,
    method_config: BaseModel,
    dataset_dir: Path,
    manifest: DatasetManifest,
    run_name: str,
    tracking: TrackingHandle | None,
    callbacks: list[UserCallback] | None = None,
) -> TrainingOutcome:
    """Train ``method`` on Ray Train; raises ``NonFiniteLossError`` or Ray's ``TrainingFailedError``.

    ``callbacks`` are Ray Train controller callbacks, e.g. a sweep trial's ``TuneReportCallback`` that forwards
    every epoch report to Tune.
    """
    streams = method.datasets(dataset_dir, manifest, method_config, seed=job.train.seed)
    # Ray Data feeds the split training stream and every generated stream (their blocks are work to spread over the
    # cluster). A replicated Parquet stream (an evaluation set, the final pass over a dataset) is read by each worker
    # from the dataset's files, as on the in-process route: every execution of a Ray dataset costs seconds to start
    # (6 s per epoch on 2 cores for Cryo2SSNet's evaluation set) for a read of milliseconds. The files are where
    # Ray Data's read tasks would read them, so every node sees them either way.
    # With ``parquet_feed: worker`` a stored training stream is read in the workers too, each its equal part.
    by_ray = {name for name, spec in streams.items() if isinstance(spec, GeneratedRows)}
    if job.train.parquet_feed == "ray_data":
        by_ray |= {"train"} & set(streams)
    datasets = {name: ray_dataset(streams[name]) for name in by_ray}
    read_in_worker = {name: spec for name, spec in streams.items() if name not in datasets}
    resources: dict[str, float] = {**job.train.resources_per_worker, "CPU": job.train.cpus_per_worker}
    if job.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "method": method,
            "job": job.model_dump(),
            "method_config": method_config.model_dump(),
            "dataset_dir": str(dataset_dir),
            "dataset_names": sorted(datasets),
            "read_in_worker": read_in_worker,
            "epoch_items": method.epoch_items(method_config, manifest),
            "manifest": manifest.model_dump(),
            "tracking": tracking,
            "verbosity": console.verbosity(),
        },
        scaling_config=ScalingConfig(num_workers=job.num_workers, use_gpu=job.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=job.checkpoint_storage,
            failure_config=FailureConfig(max_failures=job.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=job.train.checkpoints_to_keep),
            callbacks=callbacks,
            # Ray Train's own lines (worker group start, every report with its full metric dict) only with --verbose.
            logging_config=LoggingConfig(log_level=console.ray_log_level()),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options=_ordered_ingest()),
    )
    result = _fit_off_the_main_thread(trainer)
    outcome: dict[str, Any] = result.return_value
    if outcome.get("error"):
        raise NonFiniteLossError(outcome["error"])
    return TrainingOutcome(
        metrics=outcome["metrics"],
        artifacts=outcome["artifacts"],
        epochs_completed=outcome["epochs_completed"],
        resumed_from_epoch=outcome["resumed_from_epoch"],
        checkpoint_path=result.checkpoint.path if result.checkpoint else None,
    )


def _fit_off_the_main_thread(trainer: TorchTrainer) -> Result:
    """``trainer.fit()`` in a daemon thread. In the main thread Ray Train installs its own SIGINT handler, which
    aborts the run and exits the process with status 1, skipping the job's cleanup and its one-line report;
    from another thread it does not, so Ctrl-C and SIGTERM reach the job as exceptions (``cryoray.cli``)."""
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread as it is
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)  # short waits: the main thread runs signal handlers between them
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _ordered_ingest() -> ExecutionOptions:
    """Ray Train's ingest options with ``preserve_order``: blocks leave in the (seeded) read order, not in the order
    their tasks finish, so one worker streams the same rows every run with the same seed."""
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def _worker_loop(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    console.configure_worker(loop_config["verbosity"])
    method: Method[Any] = loop_config["method"]
    job = JobConfig.model_validate(loop_config["job"])
    method_config = method.config_schema.model_validate(loop_config["method_config"])
    train_context = ray.train.get_context()
    ctx = TrainContext(
        rank=train_context.get_world_rank(),
        world_size=train_context.get_world_size(),
        device=ray.train.torch.get_device(),
        dataset_dir=Path(loop_config["dataset_dir"]),
        manifest=DatasetManifest.model_validate(loop_config["manifest"]),
        runner=job.train,
    )
    ctx.steps_per_epoch = steps_per_epoch(loop_config["epoch_items"], ctx.world_size, job.train)
    for name in loop_config["dataset_names"]:
        shard = ray.train.get_dataset_shard(name)
        if name != "train":
            set_replica(shard, ctx.rank)  # each rank its own draws of a replicated stream
        ctx.datasets[name] = RayShard(shard)
    torch.manual_seed(job.train.seed * 1009 + ctx.rank)

    state = method.setup(method_config, ctx.manifest, ctx)
    checkpoint = ray.train.get_checkpoint()
    resumed_from = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resumed_from = restore_checkpoint(Path(directory), method, state, ctx)
    for name, module in state.modules.items():
        state.modules[name] = ray.train.torch.prepare_model(
            module, parallel_strategy_kwargs={"find_unused_parameters": method.find_unused_parameters}
        )

    def report(epoch: int, metrics: dict[str, float], write: Callable[[Path], None] | None) -> None:
        if write is None:
            ray.train.report({"epoch": epoch, **metrics})
            return
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))  # Ray Train merges the files every rank reports into one checkpoint folder
            handed = Checkpoint.from_directory(tmp) if ctx.is_rank_zero or state.sharded else None
            ray.train.report({"epoch": epoch, **metrics}, checkpoint=handed, checkpoint_dir_name=f"epoch_{epoch:04d}")

    logger = RunLogger(loop_config["tracking"] if ctx.is_rank_zero else None)
    start_epoch = 0 if resumed_from is None else resumed_from + 1
    # From the resumed epoch on: a resumed run reads as it would have without the interruption.
    for name, spec in loop_config["read_in_worker"].items():
        part = (ctx.rank, ctx.world_size) if name == "train" else (0, 1)  # the training stream is split
        ctx.datasets[name] = LocalStream(spec, replica=ctx.rank, first_execution=start_epoch, part=part)
    outcome = train_epochs(method, job, method_config, state, ctx, logger, start_epoch, report)
    return None if outcome is None else {**outcome, "resumed_from_epoch": resumed_from}
