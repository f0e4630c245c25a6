"""A training job end to end, written once: ``jobs/<method>.py`` parses its arguments (``cryoray.commands``) and
hands them here with its method.

Contract (DESIGN.md): ``--config FILE.yaml``, ``--dataset NAME|PATH``, ``--num-workers N``, ``--use-gpu``,
``--output-dir DIR``, ``--tracking-uri URI``, ``--smoke``; the job joins the cluster in ``RAY_ADDRESS`` or
starts a local Ray; it ends by writing ``<output-dir>/result.json`` and printing ``RESULT {json}`` as its
last line; a failure exits non-zero with one sentence on stderr.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from cryoray import console
from cryoray.config import deep_update, read_yaml_config, validate_job_config
from cryoray.data.recipes import REPO_ROOT, resolve_dataset
from cryoray.io.outputs import RESULT_FILE, atomic_write, check_output_dir
from cryoray.methods import METHODS
from cryoray.methods.parsers import job_parser
from cryoray.session import (
    Terminated,
    check_cpus,
    check_gpus,
    connect_ray,
    input_error_in,
    interrupt_signal,
    interruptible,
    print_result,
    shutdown_ray,
)
from cryoray.tracking import RunLogger, default_tracking_uri, git_sha, start_run
from cryoray.train.context import NonFiniteLossError
from cryoray.train.loop import newest_checkpoint
from cryoray.train.method import Method


def job_settings(method: Method, args: argparse.Namespace) -> dict[str, Any]:
    """Merge defaults < the method's preset < smoke preset < config file < flags into one raw mapping."""
    entry = METHODS[method.name]
    raw: dict[str, Any] = {"dataset": entry.smoke_dataset if args.smoke else entry.default_dataset}
    raw = deep_update(raw, method.default_preset)
    if args.smoke:
        raw = deep_update(raw, method.smoke_preset)
    if args.config is not None:
        raw = deep_update(raw, read_yaml_config(args.config))
    flags = {
        "dataset": args.dataset,
        "num_workers": args.num_workers,
        "use_gpu": args.use_gpu,
        "output_dir": str(args.output_dir) if args.output_dir else None,
        "tracking_uri": args.tracking_uri,
        "storage_path": args.storage_path,
        "run_name": args.run_name,
        "register_model": args.register_model,
        "overwrite": args.overwrite,
    }
    raw.update({k: v for k, v in flags.items() if v is not None})
    raw.setdefault("output_dir", f"outputs/{method.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    raw["output_dir"] = str(Path(raw["output_dir"]).expanduser().resolve())
    return raw


def run_job(method: Method, argv: list[str] | None = None) -> int:
    """Run one job end to end; returns the process exit code (130/143 after SIGINT/SIGTERM)."""
    argv = sys.argv[1:] if argv is None else argv
    args = job_parser(method.name).parse_args(argv)
    console.configure(args.verbosity)
    progress: dict[str, str] = {}  # what _run has fixed so far: run name, output and checkpoint folders
    try:
        with interruptible():
            result = _run(method, args, progress, shlex.join([f"jobs/{method.name}.py", *argv]))
    except (KeyboardInterrupt, Terminated) as exc:
        signum = interrupt_signal(exc)
        return _fail(method, _interrupted(method, argv, progress, signum), code=128 + signum)
    except NonFiniteLossError as exc:
        return _fail(method, f"training stopped: {exc}")
    except Exception as exc:
        bad_input = input_error_in(exc)  # raised on the driver, or in a worker or Ray Data function and wrapped by Ray
        if bad_input is not None:
            return _fail(method, f"bad input: {bad_input}", code=2)
        ray_train = sys.modules.get("ray.train")  # imported by the Ray route only
        if ray_train is None or not isinstance(exc, ray_train.TrainingFailedError):
            raise
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return _fail(method, f"training failed: {lines[-1] if lines else type(exc).__name__}")
    print_result(result)
    return 0


def _interrupted(method: Method, argv: list[str], progress: dict[str, str], signum: signal.Signals) -> str:
    """One sentence: what was interrupted, its last checkpoint, and the command that resumes it."""
    if "run_name" not in progress:
        return f"interrupted by {signum.name} before training started; nothing to resume, rerun the command"
    last = newest_checkpoint(progress["checkpoints"]) or f"none registered in {progress['checkpoints']} (resumes from scratch)"
    kept = _without_options(argv, ("--run-name", "--output-dir"))
    command = shlex.join(
        ["python", f"jobs/{method.name}.py", *kept, "--output-dir", progress["output_dir"], "--run-name", progress["run_name"]]
    )
    return f"interrupted by {signum.name} during run {progress['run_name']}; last checkpoint: {last}; resume with: {command}"


def _without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the options ``names`` and their values (``--name value`` or ``--name=value``)."""
    kept: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg in names:
            skip_value = True
        elif arg.split("=", 1)[0] not in names:
            kept.append(arg)
    return kept


def _fail(method: Method, sentence: str, code: int = 1) -> int:
    print(f"cryoray {method.name}: {sentence}", file=sys.stderr, flush=True)
    return code


def _run(method: Method, args: argparse.Namespace, progress: dict[str, str], command: str) -> dict[str, Any]:
    job, method_config = validate_job_config(job_settings(method, args), method.config_schema, args.config)
    output_dir = check_output_dir(job.output_dir, "--output-dir", job.overwrite)
    if job.use_gpu:
        check_gpus(max(job.num_workers, 1))
    if job.num_workers > 0:
        check_cpus(job.num_workers, job.train.cpus_per_worker)
    dataset_dir, manifest = resolve_dataset(job.dataset)
    method.check_dataset(dataset_dir, manifest, method_config)

    in_process = job.num_workers == 0
    if in_process:
        from cryoray.train.local import local_storage

        local_storage(job)  # bad storage is refused before a tracked run exists
    started_ray = False if in_process else connect_ray()
    tracking_uri = job.tracking_uri or default_tracking_uri(Path.cwd())
    run_name = job.run_name or f"{method.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    progress.update(run_name=run_name, output_dir=str(output_dir), checkpoints=f"{job.checkpoint_storage.rstrip('/')}/{run_name}")
    handle = start_run(
        tracking_uri,
        job.experiment_name or f"cryoray-{method.name}",
        run_name,
        params={**job.model_dump(exclude={"method"}), "method": method_config.model_dump()},
        tags={
            "cryoray.method": method.name,
            "cryoray.dataset": manifest.name,
            "cryoray.dataset_dir": str(dataset_dir),
            "mlflow.source.git.commit": git_sha(REPO_ROOT),
            "mlflow.source.name": command,
        },
    )
    logger = RunLogger(handle)
    try:
        if in_process:
            from cryoray.train.local import run_local

            outcome = run_local(method, job, method_config, dataset_dir, manifest, run_name, handle)
        else:
            from cryoray.train.runner import run_training  # Ray Train: imported only for the Ray route

            outcome = run_training(method, job, method_config, dataset_dir, manifest, run_name, handle)
    except BaseException:
        logger.finish(succeeded=False)
        raise
    finally:
        if started_ray:
            shutdown_ray()
    logger.finish(succeeded=True)
    result = {
        "method": method.name,
        "dataset": manifest.name,
        "dataset_dir": str(dataset_dir),
        "mlflow_run_id": handle.run_id if handle else None,
        "tracking_uri": tracking_uri,
        "run_name": run_name,
        "metrics": outcome.metrics,
        "artifacts": outcome.artifacts,
        "output_dir": str(output_dir),
        "checkpoint": outcome.checkpoint_path,
        "resumed_from_epoch": outcome.resumed_from_epoch,
    }
    atomic_write(output_dir / RESULT_FILE, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    return result
