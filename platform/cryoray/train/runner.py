"""The one generic Ray Train runner: every method trains through ``run_training``.

The driver builds a ``TorchTrainer`` from the job config; each worker gets its dataset shard, wraps the
method's modules for DDP (gloo on CPU, nccl on GPU), restores the latest checkpoint when Ray restarts the
worker group after a failure, runs the epochs, checkpoints at the configured cadence, logs to MLflow from
rank 0, and finally lets the method write its artifacts.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from pydantic import BaseModel
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer

from cryoray import __version__
from cryoray.config import JobConfig
from cryoray.io.manifest import DatasetManifest
from cryoray.methods.base import Method, TrainState
from cryoray.tracking import RunLogger, TrackingHandle
from cryoray.train.context import NonFiniteLossError, TrainContext

CHECKPOINT_SCHEMA_VERSION = 1
CHECKPOINT_FILE = "state.pt"
# Per-rank files of TrainState.sharded: "<prefix><rank>-of-<world size>.pt" next to state.pt.
SHARDED_FILE_PREFIX = "sharded-rank"


@dataclass
class TrainingOutcome:
    """What the driver gets back from a finished run."""

    metrics: dict[str, float]
    artifacts: dict[str, str]
    epochs_completed: int
    resumed_from_epoch: int | None
    checkpoint_path: str | None


def run_training(
    method: Method,
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
    datasets = method.datasets(dataset_dir, manifest, method_config)
    resources: dict[str, float] = {"CPU": job.train.cpus_per_worker}
    if job.use_gpu:
        resources["GPU"] = 1
    storage_path = job.storage_path or str(Path(job.output_dir) / "checkpoints")
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "method": method,
            "job": job.model_dump(),
            "method_config": method_config.model_dump(),
            "dataset_dir": str(dataset_dir),
            "dataset_names": sorted(datasets),
            "manifest": manifest.model_dump(),
            "tracking": tracking,
        },
        scaling_config=ScalingConfig(
            num_workers=job.num_workers, use_gpu=job.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=job.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=job.train.checkpoints_to_keep),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
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


def _sharded_file(rank: int, world_size: int) -> str:
    return f"{SHARDED_FILE_PREFIX}{rank:05d}-of-{world_size:05d}.pt"


def _save_sharded_state(directory: Path, state: TrainState, ctx: TrainContext) -> None:
    """This rank's own file; Ray Train merges the files every rank reports into one checkpoint directory."""
    torch.save(
        {
            "schema_version": CHECKPOINT_SCHEMA_VERSION,
            "rank": ctx.rank,
            "world_size": ctx.world_size,
            "epoch": ctx.epoch,
            "states": {name: shard.shard_state_dict() for name, shard in state.sharded.items()},
        },
        directory / _sharded_file(ctx.rank, ctx.world_size),
    )


def _iter_sharded_states(directory: Path, name: str, ctx: TrainContext) -> Iterator[dict[str, Any]]:
    """The saved shards of ``name``, one file at a time, this rank's own file (same world size) first."""
    paths = sorted(directory.glob(f"{SHARDED_FILE_PREFIX}*.pt"))
    own = directory / _sharded_file(ctx.rank, ctx.world_size)
    for path in sorted(paths, key=lambda p: p != own):
        saved = torch.load(path, map_location=ctx.device, weights_only=False)
        if saved.get("schema_version") != CHECKPOINT_SCHEMA_VERSION:
            raise ValueError(
                f"{path}: schema_version: expected {CHECKPOINT_SCHEMA_VERSION}, got {saved.get('schema_version')}"
            )
        if name not in saved["states"]:
            raise ValueError(f"{path}: holds no sharded state {name!r} (has {sorted(saved['states'])})")
        yield saved["states"][name]


def _save_state(directory: Path, method: Method, config: dict[str, Any], state: TrainState, ctx: TrainContext) -> None:
    torch.save(
        {
            "schema_version": CHECKPOINT_SCHEMA_VERSION,
            "cryoray_version": __version__,
            "method": method.name,
            "config": config,
            "epoch": ctx.epoch,
            "global_step": ctx.global_step,
            "modules": {name: state.unwrapped(name).state_dict() for name in state.modules},
            "optimizers": {name: opt.state_dict() for name, opt in state.optimizers.items()},
            "schedulers": {name: sch.state_dict() for name, sch in state.schedulers.items()},
            "extra": state.extra,
        },
        directory / CHECKPOINT_FILE,
    )


def load_checkpoint_state(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a runner checkpoint, checking its schema version (also used by apply/inference modes)."""
    path = Path(directory) / CHECKPOINT_FILE
    state = torch.load(path, map_location=map_location, weights_only=False)
    if state.get("schema_version") != CHECKPOINT_SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema_version: expected {CHECKPOINT_SCHEMA_VERSION}, got {state.get('schema_version')}"
        )
    return state


def _restore(method: Method, state: TrainState, ctx: TrainContext) -> int | None:
    """Load the latest checkpoint Ray hands this worker group; returns the epoch it holds, or None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        saved = load_checkpoint_state(directory, map_location=ctx.device)
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
    method: Method = loop_config["method"]
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
    checkpoint_config = {"job": loop_config["job"], "method": loop_config["method_config"]}

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


def _train_one_epoch(
    method: Method, state: TrainState, config: BaseModel, ctx: TrainContext, logger: RunLogger
) -> dict[str, float]:
    """Steps over this worker's shard, then rank-averaged train metrics plus the method's evaluation."""
    for module in state.modules.values():
        module.train()
    sums: dict[str, float] = defaultdict(float)
    steps = 0
    for batch in method.train_batches(config, ctx):
        step_metrics = method.train_step(state, batch, config, ctx)
        ctx.global_step += 1
        steps += 1
        for key, value in step_metrics.items():
            sums[key] += value
        if ctx.global_step % ctx.runner.log_every_steps == 0:
            logger.log_metrics({f"train/{k}": v for k, v in step_metrics.items()}, step=ctx.global_step)
        if ctx.runner.max_steps_per_epoch is not None and steps >= ctx.runner.max_steps_per_epoch:
            break
    keys = sorted(sums)
    means = ctx.all_reduce_mean(
        torch.tensor([sums[k] / max(steps, 1) for k in keys], dtype=torch.float64, device=ctx.device)
    )
    metrics = {f"train_{k}": float(v) for k, v in zip(keys, means)}
    for module in state.modules.values():
        module.eval()
    metrics.update(method.evaluate(state, config, ctx))
    return metrics
