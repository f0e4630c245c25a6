"""The parts of the training loop that need no Ray: the step budget and one step as the runner takes it.

The Ray runner uses them, and so do tests and benchmarks that drive a method in this process, so a method
sees exactly the same step (scheduler stepping, step counter) whichever way it is driven.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cryoray.config import RunnerConfig
from cryoray.train.context import TrainContext
from cryoray.train.method import Method, TrainState


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
