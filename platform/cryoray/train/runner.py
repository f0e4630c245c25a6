"""The one generic Ray Train runner: every method trains through ``run_training``.

The driver builds a ``TorchTrainer`` from the job config; each worker gets its dataset shard, wraps the
method's modules for DDP (gloo on CPU, nccl on GPU), restores the latest checkpoint when Ray restarts the
worker group after a failure, runs the epochs, checkpoints at the configured cadence, logs to MLflow from
rank 0, and finally lets the method write its artifacts.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from pydantic import BaseModel
from ray.data import ExecutionOptions
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, Result, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer

from cryoray.config import JobConfig
from cryoray.data.pacing import paced
from cryoray.io.manifest import DatasetManifest
from cryoray.io.models import (
    read_checkpoint,
    read_sharded_checkpoint,
    sharded_checkpoint_files,
    write_checkpoint,
    write_sharded_checkpoint,
)
from cryoray.tracking import RunLogger, TrackingHandle
from cryoray.train.context import NonFiniteLossError, TrainContext
from cryoray.train.loop import steps_per_epoch, take_step
from cryoray.train.method import Method, TrainState


@dataclass
class TrainingOutcome:
    """What the driver gets back from a finished run."""

    metrics: dict[str, float]
    artifacts: dict[str, str]
    epochs_completed: int
    resumed_from_epoch: int | None
    checkpoint_path: str | None


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
    datasets = {
        name: paced(ds) for name, ds in method.datasets(dataset_dir, manifest, method_config, seed=job.train.seed).items()
    }
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
            "epoch_items": method.epoch_items(method_config, manifest),
            "manifest": manifest.model_dump(),
            "tracking": tracking,
        },
        scaling_config=ScalingConfig(num_workers=job.num_workers, use_gpu=job.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            storage_path=job.checkpoint_storage,
            failure_config=FailureConfig(max_failures=job.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=job.train.checkpoints_to_keep),
            callbacks=callbacks,
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


def last_registered_checkpoint(run_dir: str) -> str | None:
    """The newest checkpoint Ray Train registered for a run (the one a rerun with its name resumes from), read
    from Ray's ``checkpoint_manager_snapshot.json``; None before the first, or for remote storage."""
    snapshot = Path(run_dir) / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
    except (OSError, ValueError, KeyError):
        return None
    return str(Path(run_dir) / latest["checkpoint_dir_name"]) if latest else None


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


def _save_state(directory: Path, method: Method[Any], config: dict[str, Any], state: TrainState, ctx: TrainContext) -> None:
    write_checkpoint(
        directory,
        method=method.name,
        config=config,
        epoch=ctx.epoch,
        global_step=ctx.global_step,
        modules={name: state.unwrapped(name) for name in state.modules},
        optimizers=state.optimizers,
        schedulers=state.schedulers,
        extra=state.extra,
    )


def _save_sharded_state(directory: Path, state: TrainState, ctx: TrainContext) -> None:
    """This rank's own file; Ray Train merges the files every rank reports into one checkpoint directory."""
    states = {name: shard.shard_state_dict() for name, shard in state.sharded.items()}
    write_sharded_checkpoint(directory, ctx.rank, ctx.world_size, ctx.epoch, states)


def _iter_sharded_states(directory: Path, name: str, ctx: TrainContext) -> Iterator[dict[str, Any]]:
    """The saved shards of ``name``, one file at a time, this rank's own file (same world size) first."""
    for path in sharded_checkpoint_files(directory, ctx.rank, ctx.world_size):
        states = read_sharded_checkpoint(path, map_location=ctx.device)
        if name not in states:
            raise ValueError(f"{path}: holds no sharded state {name!r} (has {sorted(states)})")
        yield states[name]


def _restore(method: Method[Any], state: TrainState, ctx: TrainContext) -> int | None:
    """Load the latest checkpoint Ray hands this worker group; returns the epoch it holds, or None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        saved = read_checkpoint(directory, map_location=ctx.device)
        if saved["method"] != method.name:
            raise ValueError(f"checkpoint holds method {saved['method']!r}, this job trains {method.name!r}")
        for name, module in state.modules.items():
            module.load_state_dict(saved["modules"][name])
        for name, optimizer in state.optimizers.items():
            optimizer.load_state_dict(saved["optimizers"][name])
        for name, scheduler in state.schedulers.items():
            scheduler.load_state_dict(saved["schedulers"][name])
        state.extra.update(saved["extra"])
        for name, shard in state.sharded.items():
            shard.load_shard_state_dicts(_iter_sharded_states(Path(directory), name, ctx))
    ctx.global_step = saved["global_step"]
    return int(saved["epoch"])


def _worker_loop(loop_config: dict[str, Any]) -> dict[str, Any] | None:
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
    ctx.datasets = {name: ray.train.get_dataset_shard(name) for name in loop_config["dataset_names"]}
    torch.manual_seed(job.train.seed * 1009 + ctx.rank)

    state = method.setup(method_config, ctx.manifest, ctx)
    resumed_from = _restore(method, state, ctx)
    start_epoch = 0 if resumed_from is None else resumed_from + 1
    for name, module in state.modules.items():
        state.modules[name] = ray.train.torch.prepare_model(
            module, parallel_strategy_kwargs={"find_unused_parameters": method.find_unused_parameters}
        )
    logger = RunLogger(loop_config["tracking"] if ctx.is_rank_zero else None)
    checkpoint_config = {"job": job.model_dump(mode="json"), "method": method_config.model_dump(mode="json")}

    epoch_metrics: dict[str, float] = {}
    try:
        for epoch in range(start_epoch, job.train.epochs):
            ctx.epoch = epoch
            epoch_metrics = _train_one_epoch(method, state, method_config, ctx, logger)
            logger.log_metrics({f"epoch/{k}": v for k, v in epoch_metrics.items()}, step=epoch)
            last = epoch == job.train.epochs - 1
            if last or (epoch + 1) % job.train.checkpoint_every_epochs == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    checkpoint = None
                    if ctx.is_rank_zero:
                        _save_state(Path(tmp), method, checkpoint_config, state, ctx)
                    if state.sharded:
                        _save_sharded_state(Path(tmp), state, ctx)
                    if ctx.is_rank_zero or state.sharded:
                        checkpoint = Checkpoint.from_directory(tmp)
                    ray.train.report(
                        {"epoch": epoch, **epoch_metrics}, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch:04d}"
                    )
            else:
                ray.train.report({"epoch": epoch, **epoch_metrics})
    except NonFiniteLossError as exc:
        logger.set_tags({"cryoray.error": str(exc)})
        return {"error": str(exc)} if ctx.is_rank_zero else None

    output_dir = Path(job.output_dir)
    if ctx.is_rank_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
    artifacts = method.write_artifacts(state, method_config, ctx, output_dir)
    test_metrics, test_artifacts = method.test(state, method_config, ctx, output_dir)
    artifacts.update(test_artifacts)
    epoch_metrics = {**epoch_metrics, **test_metrics}
    logger.log_metrics(test_metrics, step=job.train.epochs - 1)
    for path in artifacts.values():
        logger.log_artifact(path, artifact_path="outputs")
    if not ctx.is_rank_zero:
        return None
    return {
        "metrics": epoch_metrics,
        "artifacts": artifacts,
        "epochs_completed": job.train.epochs,
        "resumed_from_epoch": resumed_from,
    }


# Wall-clock metrics of every epoch (steps, time waiting for the next batch, evaluation): they vary from run to run.
TIMING_METRICS = ("epoch_seconds", "data_wait_fraction", "eval_seconds")


def _train_one_epoch(
    method: Method[Any], state: TrainState, config: BaseModel, ctx: TrainContext, logger: RunLogger
) -> dict[str, float]:
    """Steps over this worker's shard, then rank-averaged train metrics plus the method's evaluation."""
    for module in state.modules.values():
        module.train()
    sums: dict[str, float] = defaultdict(float)
    steps = 0
    method.begin_epoch(state, config, ctx)
    start, waited = time.perf_counter(), 0.0  # data wait: time spent getting the next batch
    batches = iter(method.train_batches(state, config, ctx))
    while True:
        before = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - before
        if batch is None:
            break
        step_metrics = take_step(method, state, batch, config, ctx)
        steps += 1
        for key, value in step_metrics.items():
            sums[key] += value
        if ctx.global_step % ctx.runner.log_every_steps == 0:
            logger.log_metrics({f"train/{k}": v for k, v in step_metrics.items()}, step=ctx.global_step)
        if ctx.runner.max_steps_per_epoch is not None and steps >= ctx.runner.max_steps_per_epoch:
            break
    keys = sorted(sums)
    means = ctx.all_reduce_mean(torch.tensor([sums[k] / max(steps, 1) for k in keys], dtype=torch.float64, device=ctx.device))
    metrics = {f"train_{k}": float(v) for k, v in zip(keys, means)}
    train_s = time.perf_counter() - start
    metrics |= {
        "epoch_seconds": train_s,
        "data_wait_fraction": waited / max(train_s, 1e-9),
    }
    for module in state.modules.values():
        module.eval()
    before = time.perf_counter()
    metrics.update(method.evaluate(state, config, ctx))
    metrics["eval_seconds"] = time.perf_counter() - before
    return metrics
