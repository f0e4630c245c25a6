"""The console: cryoray's own lines through ``logging`` (logger ``cryoray``) on stderr, the ``RESULT`` line last on
stdout, and Ray's lines hidden unless asked for.

Three levels, chosen once per process by ``--quiet`` / ``--verbose``: ``quiet`` leaves errors and the final
``RESULT`` line; ``normal`` adds rank 0's step and epoch lines and the progress of long commands; ``verbose`` adds
Ray's own log lines and warnings. On Ray, a worker's lines reach the job's console through Ray's log forwarding
(prefixed by the worker's name); the level travels to the workers in the run's settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Literal, TypeVar

Verbosity = Literal["quiet", "normal", "verbose"]
LOGGER = logging.getLogger("cryoray")
_LEVELS: dict[Verbosity, int] = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.INFO}
_verbosity: Verbosity = "normal"

T = TypeVar("T")


def configure(verbosity: Verbosity) -> None:
    """Set this process's console: the ``cryoray`` logger's level and handler (stderr, beside the errors; stdout
    keeps the ``RESULT`` line), and, unless verbose, MLflow's notices off."""
    global _verbosity
    _verbosity = verbosity
    LOGGER.setLevel(_LEVELS[verbosity])
    LOGGER.propagate = False
    for old in LOGGER.handlers[:]:  # a fresh handler on today's sys.stderr (it may have been replaced since)
        LOGGER.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(handler)
    verbose = verbosity == "verbose"
    logging.getLogger("mlflow").setLevel(logging.NOTSET if verbose else logging.WARNING)
    if not verbose:  # MLflow sets its logger's level again when first imported, from this variable (default INFO)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Ray's notice that the private local cluster uses token authentication: nothing for the user to do.
    logging.getLogger("ray._private.authentication").setLevel(logging.NOTSET if verbose else logging.ERROR)


def add_verbosity_flags(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` / ``--verbose`` (``args.verbosity``), shared by the jobs, their subcommands and the sweep driver."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--quiet", dest="verbosity", action="store_const", const="quiet", help="print only errors and the RESULT line"
    )
    group.add_argument(
        "--verbose", dest="verbosity", action="store_const", const="verbose", help="also print Ray's own log lines"
    )
    parser.set_defaults(verbosity="normal")


def verbosity() -> Verbosity:
    """The level this process was configured with (the runner hands it to its workers)."""
    return _verbosity


def configure_worker(verbosity: Verbosity) -> None:
    """In a Ray Train worker: the ``cryoray`` logger at the job's level; its records reach Ray Train's console
    handler on the root logger, whose output Ray forwards to the job's console."""
    global _verbosity
    _verbosity = verbosity
    LOGGER.setLevel(_LEVELS[verbosity])
    quiet_ray()


def ray_log_level() -> str:
    """The level of Ray's own loggers in every process of the job (``ray.init``'s and Ray Train's logging config)."""
    return "INFO" if _verbosity == "verbose" else "WARNING"


def quiet_ray() -> None:
    """Once Ray is imported, in the driver or a worker: unless verbose, Ray's info lines and its deprecation notices
    about its own internals are hidden. Some Ray modules log under their file path, not a ``ray.*`` logger name, so
    the filter goes by the source file of each record."""
    if _verbosity == "verbose":
        return
    import ray
    from ray.util.annotations import RayDeprecationWarning

    warnings.filterwarnings("ignore", category=RayDeprecationWarning)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RayInfoFilter) for f in handler.filters):  # once per handler, however often called
            handler.addFilter(_RayInfoFilter(os.path.dirname(ray.__file__) + os.sep))


class _RayInfoFilter(logging.Filter):
    """Drops records below WARNING logged from Ray's own source files."""

    def __init__(self, ray_dir: str) -> None:
        super().__init__()
        self.ray_dir = ray_dir

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.pathname.startswith(self.ray_dir)


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: an ETA or wall time at the precision a reader needs."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _values(values: Mapping[str, float]) -> str:
    return " ".join(f"{name} {value:.4g}" for name, value in values.items())


def step_line(
    epoch: int,
    epochs: int,
    step: int,
    steps: int,
    metrics: Mapping[str, float],
    learning_rates: Mapping[str, float],
    grad_norms: Mapping[str, float],
    samples_per_s: float,
    data_wait_fraction: float,
    eta_s: float,
) -> str:
    """One training log line (rank 0, every ``train.log_every_steps``): where, each loss term, the optimisers'
    learning rates and gradient norms (named when a method has several optimisers), speed, data wait, ETA."""

    def named(prefix: str, values: Mapping[str, float]) -> dict[str, float]:
        return {prefix if len(values) == 1 else f"{prefix}[{name}]": value for name, value in values.items()}

    parts = [f"epoch {epoch + 1}/{epochs} step {step}/{steps}", _values(metrics)]
    parts += [_values(named("lr", learning_rates)), _values(named("grad_norm", grad_norms))]
    parts += [f"{samples_per_s:.1f} samples/s", f"data wait {data_wait_fraction:.0%}", f"ETA {format_duration(eta_s)}"]
    return " | ".join(part for part in parts if part)


def epoch_line(epoch: int, epochs: int, metrics: Mapping[str, float], key_metrics: Iterable[str]) -> str:
    """One line per epoch: its time, data wait and evaluation time, the method's key metrics and the train means."""
    timing = (
        f"epoch {epoch + 1}/{epochs} done in {format_duration(metrics.get('epoch_seconds', 0.0))}"
        f" (data wait {metrics.get('data_wait_fraction', 0.0):.0%}, eval {format_duration(metrics.get('eval_seconds', 0.0))})"
    )
    key = {name: metrics[name] for name in key_metrics if name in metrics}
    means = {name: value for name, value in metrics.items() if name.startswith("train_")}
    return " | ".join(part for part in (timing, _values(key), _values(means)) if part)


def progress(items: Iterable[T], total: int, what: str, every_s: float = 10.0) -> Iterator[T]:
    """Yield ``items`` and report ``what: i/total (p %), elapsed, ETA``. On a terminal, a bar redrawn in place (at
    most ten times a second, ended by a newline); elsewhere (a log file, ``ray job logs``), a plain log line at most
    every ``every_s`` seconds and at the end. Nothing under ``--quiet``."""
    bar = LOGGER.isEnabledFor(logging.INFO) and sys.stderr.isatty()
    start = last = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if done == total or now - last >= (0.1 if bar else every_s):
            last = now
            share = done / max(total, 1)
            counts = f"{done}/{total} ({share:.0%}), {format_duration(now - start)} elapsed"
            eta = f"ETA {format_duration((now - start) / done * (total - done))}"
            if bar:
                filled = round(20 * share)
                sys.stderr.write(f"\r{what}: [{'#' * filled}{'.' * (20 - filled)}] {counts}, {eta}\x1b[K")
                sys.stderr.write("\n" if done == total else "")
                sys.stderr.flush()
            else:
                LOGGER.info(f"{what}: {counts}, {eta}")
