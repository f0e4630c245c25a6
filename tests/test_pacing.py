"""The Ray Data idle back-off: sleeps only while no task is in flight, doubling to a cap, and is registered once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import ray.data
from cryoray.data import pacing
from cryoray.data.pacing import MAX_SLEEP_S, MIN_SLEEP_S, IdleBackoff, paced


class _Operator:
    def __init__(self, active: int) -> None:
        self.active = active

    def num_active_tasks(self) -> int:
        return self.active


def test_idle_backoff_sleeps_only_while_nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(pacing.time, "sleep", slept.append)
    operator = _Operator(active=0)
    executor = SimpleNamespace(_topology={operator: None})
    backoff = IdleBackoff()
    for _ in range(8):
        backoff.on_execution_step(executor)  # type: ignore[arg-type]
    assert slept == [min(MIN_SLEEP_S * 2**i, MAX_SLEEP_S) for i in range(8)]
    operator.active = 2  # a task in flight: the loop blocks in ray.wait itself, no sleep, and the back-off resets
    backoff.on_execution_step(executor)  # type: ignore[arg-type]
    operator.active = 0
    backoff.on_execution_step(executor)  # type: ignore[arg-type]
    assert slept[8:] == [MIN_SLEEP_S]


def test_paced_registers_the_callback_once_on_the_dataset_context() -> None:
    # A stand-in with the dataset's own context: creating a real Dataset here would start a Ray cluster.
    dataset = SimpleNamespace(context=ray.data.DataContext())
    paced(paced(dataset))  # type: ignore[arg-type]
    assert dataset.context.custom_execution_callback_classes.count(IdleBackoff) == 1
    assert IdleBackoff not in ray.data.DataContext.get_current().custom_execution_callback_classes
    assert not ray.is_initialized()
