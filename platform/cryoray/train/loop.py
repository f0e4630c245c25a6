"""The training loop without Ray: step budget, one step, one epoch, the epochs, checkpoint files, the end.

The Ray runner (``cryoray.train.runner``) and the in-process route (``cryoray.train.local``) both drive a method
through :func:`train_epochs`; they differ only in where the data come from, how a checkpoint is handed over
(Ray Train's ``report`` or a folder written here) and DDP. Tests and benchmarks that drive a method in this process
use the same step (scheduler stepping, step counter) too.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from cryoray.config import JobConfig, RunnerConfig
from cryoray.console import LOGGER, epoch_line, step_line
from cryoray.io.models import (
    model_metadata,
    read_checkpoint,
    read_sharded_checkpoint,
    sharded_checkpoint_files,
    write_checkpoint,
    write_sharded_checkpoint,
)
from cryoray.tracking import RunLogger
from cryoray.train.context import NonFiniteLossError, TrainContext
from cryoray.train.method import Method, TrainState

# Wall-clock metrics of every epoch (steps, time waiting for the next batch, evaluation): they vary from run to run.
TIMING_METRICS = ("epoch_seconds", "data_wait_fraction", "eval_seconds")

# Hands an epoch's metrics to the route, with a function that writes the checkpoint files into a folder when one
# is due (None otherwise).
Reporter = Callable[[int, dict[str, float], "Callable[[Path], None] | None"], None]


@dataclass
class TrainingOutcome:
    """What the driver gets back from a finished run."""

    metrics: dict[str, float]
    artifacts: dict[str, str]
    epochs_completed: int
    resumed_from_epoch: int | None
    checkpoint_path: str | None


def steps_per_epoch(epoch_items: int, world_size: int, runner: RunnerConfig) -> int:
    """Each worker's steps per epoch: its equal share of the epoch's items in batches, capped for smoke runs."""
    steps = max(1, math.ceil(math.ceil(epoch_items / max(world_size, 1)) / runner.batch_size))
    return steps if runner.max_steps_per_epoch is None else min(steps, runner.max_steps_per_epoch)


def take_step(
    method: Method[Any], state: TrainState, batch: dict[str, torch.Tensor], config: Any, ctx: TrainContext
) -> dict[str, float]:
    """One training step: the method's step, then every LR scheduler, then the step counter."""
    metrics = method.train_step(state, batch, config, ctx)
    for scheduler in state.schedulers.values():
        scheduler.step()
    ctx.global_step += 1
    return metrics


def train_one_epoch(
    method: Method[Any], state: TrainState, config: BaseModel, ctx: TrainContext, logger: RunLogger
) -> dict[str, float]:
    """Steps over this worker's stream, then rank-averaged train metrics plus the method's evaluation."""
    for module in state.modules.values():
        module.train()
    sums: dict[str, float] = defaultdict(float)
    steps = 0
    method.begin_epoch(state, config, ctx)
    start, waited = time.perf_counter(), 0.0  # data wait: time spent getting the next batch
    line = _StepLine(start, ctx) if ctx.is_rank_zero and LOGGER.isEnabledFor(logging.INFO) else None
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
            logger.log_metrics(step_metrics, step=ctx.global_step)
            if line is not None:
                line.log(steps, waited, step_metrics, state)
        if ctx.runner.max_steps_per_epoch is not None and steps >= ctx.runner.max_steps_per_epoch:
            break
    keys = sorted(sums)
    means = ctx.all_reduce_mean(torch.tensor([sums[k] / max(steps, 1) for k in keys], dtype=torch.float64, device=ctx.device))
    metrics = {f"train_{k}": float(v) for k, v in zip(keys, means)}
    train_s = time.perf_counter() - start
    metrics |= {"epoch_seconds": train_s, "data_wait_fraction": waited / max(train_s, 1e-9)}
    for module in state.modules.values():
        module.eval()
    before = time.perf_counter()
    metrics.update(method.evaluate(state, config, ctx))
    metrics["eval_seconds"] = time.perf_counter() - before
    shared = set(sums) & set(metrics)
    if shared:  # one name is one metric in the step log, MLflow, Tune and RESULT
        raise RuntimeError(f"{method.name}: step metrics and epoch metrics share the names {sorted(shared)}")
    return metrics


class _StepLine:
    """Rank 0's training line every ``log_every_steps``: speed and data wait over the steps since the last line."""

    def __init__(self, start: float, ctx: TrainContext) -> None:
        self.ctx, self.epoch_start, self.last_time, self.last_waited, self.last_steps = ctx, start, start, 0.0, 0

    def log(self, steps: int, waited: float, metrics: dict[str, float], state: TrainState) -> None:
        ctx, now = self.ctx, time.perf_counter()
        elapsed = max(now - self.last_time, 1e-9)
        seconds_per_step = (now - self.epoch_start) / steps
        norms = {name: float(ctx.grad_norms.pop(opt)) for name, opt in state.optimizers.items() if opt in ctx.grad_norms}
        text = step_line(
            epoch=ctx.epoch,
            epochs=ctx.runner.epochs,
            step=steps,
            steps=ctx.steps_per_epoch,
            metrics=metrics,
            learning_rates={name: opt.param_groups[0]["lr"] for name, opt in state.optimizers.items()},
            grad_norms=norms,
            samples_per_s=(steps - self.last_steps) * ctx.runner.batch_size * ctx.world_size / elapsed,
            data_wait_fraction=(waited - self.last_waited) / elapsed,
            eta_s=seconds_per_step * (ctx.total_steps - ctx.global_step),
        )
        LOGGER.info(text)
        self.last_time, self.last_waited, self.last_steps = now, waited, steps


def train_epochs(
    method: Method[Any],
    job: JobConfig,
    config: BaseModel,
    state: TrainState,
    ctx: TrainContext,
    logger: RunLogger,
    start_epoch: int,
    report: Reporter,
) -> dict[str, Any] | None:
    """Epochs ``start_epoch…``, each handed to ``report`` (with a checkpoint writer at the job's cadence and at the
    end), then the method's artifacts and test. Returns rank 0's outcome (``metrics``, ``artifacts``,
    ``epochs_completed``, or ``error`` after a non-finite loss), None on the other ranks."""
    saved_config = {"job": job.model_dump(mode="json"), "method": config.model_dump(mode="json")}
    epoch_metrics: dict[str, float] = {}
    if ctx.device.type == "cuda":
        # Fixed patch and batch shapes: cuDNN times its convolution algorithms once per shape and keeps the fastest.
        torch.backends.cudnn.benchmark = True
    try:
        for epoch in range(start_epoch, job.train.epochs):
            ctx.epoch = epoch
            epoch_metrics = train_one_epoch(method, state, config, ctx, logger)
            logger.log_metrics(epoch_metrics, step=epoch)
            if ctx.is_rank_zero:
                LOGGER.info(epoch_line(epoch, job.train.epochs, epoch_metrics, method.key_metrics))
            due = epoch == job.train.epochs - 1 or (epoch + 1) % job.train.checkpoint_every_epochs == 0

            def write(directory: Path) -> None:
                save_checkpoint(directory, method, saved_config, state, ctx)

            report(epoch, epoch_metrics, write if due else None)
    except NonFiniteLossError as exc:
        logger.set_tags({"cryoray.error": str(exc)})
        return {"error": str(exc)} if ctx.is_rank_zero else None

    output_dir = Path(job.output_dir)
    if ctx.is_rank_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
    artifacts = method.write_artifacts(state, config, ctx, output_dir)
    test_metrics, test_artifacts = method.test(state, config, ctx, output_dir)
    artifacts.update(test_artifacts)
    logger.log_metrics(test_metrics, step=job.train.epochs)  # one step past the last epoch: a series' last point is RESULT's
    for path in artifacts.values():
        logger.log_artifact(path, artifact_path="outputs")
    if "model" in artifacts:
        logger.log_model(artifacts["model"], method.name, model_metadata(artifacts["model"]), job.register_model)
    if not ctx.is_rank_zero:
        return None
    return {"metrics": {**epoch_metrics, **test_metrics}, "artifacts": artifacts, "epochs_completed": job.train.epochs}


def newest_checkpoint(run_dir: str) -> str | None:
    """The checkpoint a rerun with this run's name resumes from, None before the first (or for remote storage):
    the one Ray Train registered last (its ``checkpoint_manager_snapshot.json``), or for an in-process run the
    newest ``epoch_NNNN`` folder (complete by construction, ``cryoray.train.local``)."""
    folder = Path(run_dir)
    snapshot = folder / "checkpoint_manager_snapshot.json"
    if snapshot.is_file():
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
        except (OSError, ValueError, KeyError):
            return None
        return str(folder / latest["checkpoint_dir_name"]) if latest else None
    epochs = sorted(folder.glob("epoch_*")) if folder.is_dir() else []
    return str(epochs[-1]) if epochs else None


def save_checkpoint(directory: Path, method: Method[Any], config: dict[str, Any], state: TrainState, ctx: TrainContext) -> None:
    """This rank's part of a checkpoint: rank 0 the replicated state, every rank its own shard file (if any)."""
    if ctx.is_rank_zero:
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
    save_shards(directory, state, ctx)


def save_shards(directory: Path, state: TrainState, ctx: TrainContext) -> None:
    """This rank's own file of per-worker state (none without ``state.sharded``); Ray Train merges the files every
    rank reports into one checkpoint folder."""
    if state.sharded:
        states = {name: shard.shard_state_dict() for name, shard in state.sharded.items()}
        write_sharded_checkpoint(directory, ctx.rank, ctx.world_size, ctx.epoch, states)


def restore_checkpoint(directory: Path, method: Method[Any], state: TrainState, ctx: TrainContext) -> int:
    """Load a checkpoint folder into ``state`` and ``ctx.global_step``; returns the epoch it holds."""
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
        shard.load_shard_state_dicts(iter_sharded_states(directory, name, ctx))
    ctx.global_step = saved["global_step"]
    return int(saved["epoch"])


def iter_sharded_states(directory: Path, name: str, ctx: TrainContext) -> Iterator[dict[str, Any]]:
    """The saved shards of ``name``, one file at a time, this rank's own file (same world size) first."""
    for path in sharded_checkpoint_files(directory, ctx.rank, ctx.world_size):
        states = read_sharded_checkpoint(path, map_location=ctx.device)
        if name not in states:
            raise ValueError(f"{path}: holds no sharded state {name!r} (has {sorted(states)})")
        yield states[name]
