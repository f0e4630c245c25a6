"""How a cryoray process joins Ray and ends: shared by the jobs, their subcommands and the sweep driver.

It sits below ``methods`` and ``tune`` so that a method's subcommand (``robpicker predict``, ``cryogen2 apply``,
``betagan denoise``) and the Tune driver follow the job contract without importing the job command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from cryoray import console
from cryoray.errors import CryorayInputError


def joins_cluster() -> bool:
    """True when RAY_ADDRESS names a cluster to join (``ray job submit`` sets it)."""
    return bool(os.environ.get("RAY_ADDRESS"))


def connect_ray(include_dashboard: bool | None = None) -> bool:
    """Join the cluster in RAY_ADDRESS, else start a private local Ray.

    ``address="local"``: a bare ``ray.init()`` would join any ``ray start`` cluster running on the machine
    (someone else's, or a test's). Returns True when this call connected (and so must shut down).
    Ray Data is set to re-raise a map function's own exception: its default wrapper (``UserCodeException``) drops the
    original, and with it a ``CryorayInputError`` that ``input_error_in`` would report in one line.
    """
    import ray  # here: a job that trains in its own process (--num-workers 0) never loads Ray
    import ray.data

    ray.data.DataContext.get_current().raise_original_map_exception = True
    if ray.is_initialized():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    logging_config = ray.LoggingConfig(log_level=console.ray_log_level())  # Ray's own lines in every process of the job
    if joins_cluster():
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True, configure_logging=False, logging_config=logging_config)
    else:
        # Ray Data's own logger in every worker (its "execution finished" line per dataset and its notice that the
        # progress bars the runner turned off are off, from the split coordinators' processes) reads this when Ray
        # Data is imported there; the private Ray's workers inherit it from here. --verbose shows them.
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "INFO" if console.verbosity() == "verbose" else "ERROR")
        start_local_ray(include_dashboard=include_dashboard, log_to_driver=True, logging_config=logging_config)
    console.quiet_ray()
    if callable(previous) and threading.current_thread() is threading.main_thread():
        # A local Ray node replaces the SIGTERM handler with one that exits at once; keep ours (``interruptible``),
        # which raises so that the caller reports and shuts Ray down itself.
        signal.signal(signal.SIGTERM, previous)
    return True


# Ray Train settings of a private local cluster, set before it starts (its processes inherit them): no watcher
# of cloud spot preemptions (one more actor per run, which logs an error line where it finds no cloud metadata),
# and a health-check poll of 0.5 s instead of 2 s, so the end of a run is noticed sooner. A 4-step job on
# 2 cores: 20.5 s → 14.8 s (benchmarks/RESULTS.md). Values the user set win.
LOCAL_TRAIN_ENVIRONMENT = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def start_local_ray(**options: Any) -> None:
    """A private local Ray: ``address="local"`` (a bare ``ray.init()`` would join any ``ray start`` cluster on the
    machine) with :data:`LOCAL_TRAIN_ENVIRONMENT`; ``options`` go to ``ray.init``."""
    import ray

    for key, value in LOCAL_TRAIN_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    ray.init(address="local", configure_logging=False, **options)


def shutdown_ray() -> None:
    """Stop the Ray this process started (``connect_ray`` returned True)."""
    import ray

    ray.shutdown()


def check_gpus(wanted: int, in_this_process: bool = False, source: str | None = None, field: str = "--use-gpu") -> None:
    """Refuse a GPU request (``field`` of ``source``: the flag, or a sweep spec's key) before Ray starts when this
    machine has fewer GPUs than asked for: a local Ray would wait forever for them. Work that runs on a joined
    cluster is not checked (it may autoscale GPU nodes in), work that runs ``in_this_process`` always is."""
    if joins_cluster() and not in_this_process:
        return
    available = torch.cuda.device_count()
    if available < wanted:
        where = "in this process" if in_this_process else "on this machine"
        raise CryorayInputError(source, field, f"{wanted} GPU(s) {where}", available)


def check_cpus(workers: int, cpus_per_worker: float) -> None:
    """Refuse, before a private local Ray starts, Train workers that reserve so many of this machine's CPUs that
    none is left for Ray Data's tasks (a Parquet read task takes one): the run would wait forever for its first
    batch. A joined cluster is not checked (it may autoscale nodes in)."""
    if joins_cluster():
        return
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers * cpus_per_worker > available - 1:
        expected = (
            f"Train workers that leave one of this machine's {available} CPUs to Ray Data "
            f"(num_workers × train.cpus_per_worker ≤ {available - 1})"
        )
        raise CryorayInputError(None, "--num-workers", expected, f"{workers} × {cpus_per_worker:g}")


def input_error_in(exc: BaseException) -> CryorayInputError | None:
    """The bad-input error behind ``exc``, when Ray wrapped one raised in a task, a Ray Data function or a Train
    worker (``RayTaskError``, ``TrainingFailedError``, chained exceptions); None for any other failure."""
    ray_exceptions = sys.modules.get("ray.exceptions")  # where Ray was never imported, no Ray error can exist
    task_error: tuple[type[BaseException], ...] = (ray_exceptions.RayTaskError,) if ray_exceptions else ()
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, task_error):
            pending.append(current.cause)  # type: ignore[attr-defined]  # also a CryorayInputError subclass; its text is the remote traceback
            continue
        if isinstance(current, CryorayInputError):
            return current
        context = None if current.__suppress_context__ else current.__context__
        linked = [current.__cause__, context, getattr(current, "controller_failure", None)]
        linked += list(getattr(current, "worker_failures", {}).values())
        pending.extend(e for e in linked if isinstance(e, BaseException))
    return None


def print_result(result: dict[str, Any]) -> None:
    """The ``RESULT {json}`` line every job, subcommand and sweep prints last (tools parse it)."""
    print("RESULT " + json.dumps(result), flush=True)


class Terminated(Exception):
    """SIGTERM, raised in the main thread like SIGINT's KeyboardInterrupt, so ``finally`` blocks shut Ray down."""


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While inside, SIGTERM raises ``Terminated`` (the default would kill the process without cleanup)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_signal(exc: BaseException) -> signal.Signals:
    """The signal behind an interrupt exception; the exit code is 128 + its number (130, 143)."""
    return signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT


def gather(refs: list[Any], what: str) -> list[Any]:
    """``ray.get`` of task ``refs`` in their order, with a progress line as they finish (``what: i/n …``)."""
    import ray

    def finished() -> Iterator[Any]:
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ready[0]

    for _ in console.progress(finished(), len(refs), what):
        pass
    return ray.get(refs)


def run_tool(name: str, action: Callable[[], dict[str, Any]], verbosity: console.Verbosity = "normal") -> int:
    """A job's subcommand (predict, apply, denoise): exit 0 after a last ``RESULT {json}`` line, or 2 with one
    line on stderr naming the file and field of bad input (also when raised inside a Ray task or a Ray Data
    function), the same contract as the training jobs; an interrupt gives one line and 130 (SIGINT) or 143
    (SIGTERM)."""
    console.configure(verbosity)
    try:
        with interruptible():
            result = action()
    except (KeyboardInterrupt, Terminated) as exc:
        signum = interrupt_signal(exc)
        print(f"{name}: interrupted by {signum.name}; the files it created were removed, rerun the command", file=sys.stderr)
        return 128 + signum
    except Exception as exc:
        bad_input = input_error_in(exc)
        if bad_input is None:
            raise
        print(f"{name}: {bad_input}", file=sys.stderr)
        return 2
    print_result(result)
    return 0
