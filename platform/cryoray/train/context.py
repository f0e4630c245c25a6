"""Per-worker training context: rank, device, counters, and the guarded optimiser step."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from cryoray.config import RunnerConfig
    from cryoray.data.streams import BlockStream
    from cryoray.io.manifest import DatasetManifest


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or Inf; raised before the optimiser step so no weight is corrupted."""


@dataclass
class TrainContext:
    """What a method's hooks may use on a worker; the runner sets the step budget and the counters."""

    rank: int
    world_size: int
    device: torch.device
    dataset_dir: Path
    manifest: DatasetManifest
    runner: RunnerConfig
    steps_per_epoch: int = 1  # this worker's training steps per epoch (all workers take the same number)
    epoch: int = 0
    global_step: int = 0
    datasets: dict[str, BlockStream] = field(default_factory=dict)  # per stream: a RayShard or a LocalStream
    # The gradient norm of each optimiser's last step that the loop logs (computed on those steps only).
    grad_norms: dict[torch.optim.Optimizer, torch.Tensor] = field(default_factory=dict)

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0

    @property
    def total_steps(self) -> int:
        """Training steps of the whole run on this worker: the budget schedules are written against."""
        return self.steps_per_epoch * self.runner.epochs

    @property
    def is_last_epoch(self) -> bool:
        return self.epoch == self.runner.epochs - 1

    @property
    def epoch_seed(self) -> int:
        """This rank's seed for this epoch's shuffles: epochs and ranks differ, a run with the same ``runner.seed``
        repeats them."""
        return (self.runner.seed * 1_000_003 + self.epoch) * 1009 + self.rank

    def epoch_is_due(self, every_epochs: int) -> bool:
        """True on every ``every_epochs``-th epoch and on the last one: the cadence of costly evaluations."""
        return self.is_last_epoch or (self.epoch + 1) % every_epochs == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over ranks (identity on one worker)."""
        if not self.distributed:
            return values
        values = values.detach().clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world_size

    def broadcast_from_rank_zero(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank: for results only rank 0 computes (map alignment, picking, scoring)."""
        if not self.distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def check_finite(self, losses: Mapping[str, torch.Tensor]) -> None:
        """Stop every rank together when any rank sees a non-finite term (a lone rank would hang DDP)."""
        bad = [name for name, value in losses.items() if not torch.isfinite(value.detach()).all()]
        flag = torch.tensor([float(bool(bad))], device=self.device)
        if self.distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            where = f"loss term {bad[0]!r}" if bad else "a loss term on another worker"
            raise NonFiniteLossError(
                f"{where} is not finite at step {self.global_step} (epoch {self.epoch}); stopped before the optimizer step"
            )

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        losses: Mapping[str, torch.Tensor],
        weights: Mapping[str, float] | None = None,
    ) -> torch.Tensor:
        """Weighted sum of named loss terms -> finite check -> backward -> optimiser step."""
        self.check_finite(losses)
        total = functools.reduce(torch.add, ((weights or {}).get(name, 1.0) * value for name, value in losses.items()))
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if (self.global_step + 1) % self.runner.log_every_steps == 0:  # a step the loop logs (it counts after)
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                self.grad_norms[optimizer] = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        optimizer.step()
        return total.detach()
