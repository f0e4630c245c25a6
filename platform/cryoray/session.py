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

import ray

from cryoray.errors import CryorayInputError


def joins_cluster() -> bool:
    """True when RAY_ADDRESS names a cluster to join (``ray job submit`` sets it)."""
    return bool(os.environ.get("RAY_ADDRESS"))


def connect_ray(include_dashboard: bool | None = None) -> bool:
    """Join the cluster in RAY_ADDRESS, else start a private local Ray.

    ``address="local"``: a bare ``ray.init()`` would join any ``ray start`` cluster running on the machine
    (someone else's, or a test's). Returns True when this call connected (and so must shut down).
    """
    if ray.is_initialized():
        return False
    previous = signal.getsignal(signal.SIGTERM)
    if joins_cluster():
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True, configure_logging=False)
    else:
        ray.init(address="local", include_dashboard=include_dashboard, log_to_driver=True, configure_logging=False)
    if callable(previous) and threading.current_thread() is threading.main_thread():
        # A local Ray node replaces the SIGTERM handler with one that exits at once; keep ours (``interruptible``),
        # which raises so that the caller reports and shuts Ray down itself.
        signal.signal(signal.SIGTERM, previous)
    return True


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


def run_tool(name: str, action: Callable[[], dict[str, Any]]) -> int:
    """A job's subcommand (predict, apply, denoise): exit 0 after a last ``RESULT {json}`` line, or 2 with one
    line on stderr naming the file and field of bad input, the same contract as the training jobs; an
    interrupt gives one line and 130 (SIGINT) or 143 (SIGTERM)."""
    try:
        with interruptible():
            result = action()
    except CryorayInputError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        signum = interrupt_signal(exc)
        print(f"{name}: interrupted by {signum.name}; outputs of this run may be incomplete, rerun the command", file=sys.stderr)
        return 128 + signum
    print_result(result)
    return 0
