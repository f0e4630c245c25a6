"""The one Ray Tune driver of the platform: every method's sweep (``tuning/<method>.yaml``) runs through it.

Pattern (Ray 2.60, Train V2): a ``Tuner`` over a light trial function that holds a fraction of a CPU and
trains the method with the generic runner (``run_training``), whose ``TuneReportCallback`` forwards every
epoch report to Tune, so schedulers (ASHA) see epoch metrics. MLflow: one parent run per sweep and one nested
child run per trial (the runner logs the epoch metrics into it). Tune kills the trial actor of a trial it
stops, so code after ``run_training`` never runs there: the driver finalises every child run after ``fit()``.
A trial's Train run is named after its trial id, so a restarted trial resumes from its own checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.result_grid import ResultGrid
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from cryoray.cli import connect_ray
from cryoray.config import JobConfig, validate_job_config
from cryoray.data.recipes import REPO_ROOT, resolve_dataset
from cryoray.errors import CryorayInputError
from cryoray.methods import load_method
from cryoray.methods.base import Method
from cryoray.tracking import RunLogger, TrackingHandle, default_tracking_uri, git_sha, start_run
from cryoray.train.runner import run_training
from cryoray.tune.spec import (
    SWEEP_WIDE_KEYS,
    TRIAL_OWNED_KEYS,
    SweepPlan,
    check_search_space,
    load_sweep_spec,
    plan_sweep,
    trial_settings,
)

# A trial's own process only drives its TorchTrainer; the Train workers hold the real resources.
TRIAL_DRIVER_CPUS = 0.1
# Custom resource that cluster.yaml gives the on-demand head so trial drivers avoid spot nodes.
TRIAL_DRIVER_RESOURCE = "trial_driver"
# CPUs left free for Ray Data read tasks when sizing concurrency (each read task takes one CPU).
DATA_HEADROOM_CPUS = 1.0
SUMMARY_FILE = "summary.csv"
BEST_FILE = "best.json"
TRIAL_ID_TAG = "cryoray.trial_id"


class SweepFailedError(RuntimeError):
    """The sweep ran but no trial reported its metric (every trial failed)."""


@dataclass
class TrialSummary:
    """One row of ``summary.csv``."""

    trial_id: str
    child_run_id: str | None
    params: dict[str, Any]
    final_metric: float
    best_metric: float
    epochs_run: int
    status: str  # MLflow run status: FINISHED, KILLED (stopped early by the scheduler) or FAILED
    wall_time_s: float
    checkpoint_path: str | None
    job_config: dict[str, Any]


@dataclass
class SweepOutcome:
    """What a finished sweep hands back (and prints as its ``RESULT`` line)."""

    method: str
    sweep_name: str
    output_dir: str
    tracking_uri: str
    experiment_name: str
    parent_run_id: str | None
    metric: str
    mode: str
    trials: list[TrialSummary]
    best: TrialSummary
    summary_path: str
    best_path: str

    def result(self) -> dict[str, Any]:
        """The JSON-able summary printed after ``RESULT``."""
        statuses = [trial.status for trial in self.trials]
        return {
            "method": self.method,
            "sweep_name": self.sweep_name,
            "mlflow_run_id": self.parent_run_id,
            "tracking_uri": self.tracking_uri,
            "experiment_name": self.experiment_name,
            "metric": self.metric,
            "mode": self.mode,
            "best_value": self.best.final_metric,
            "best_trial_id": self.best.trial_id,
            "best_child_run_id": self.best.child_run_id,
            "best_params": self.best.params,
            "best_checkpoint": self.best.checkpoint_path,
            "trials": len(self.trials),
            "trial_statuses": {status: statuses.count(status) for status in sorted(set(statuses))},
            "output_dir": self.output_dir,
            "summary": self.summary_path,
            "best": self.best_path,
        }


@dataclass(frozen=True)
class _TrialSetup:
    """Everything a trial needs besides its sampled values (small and picklable)."""

    method_name: str
    spec_path: str
    base: dict[str, Any]
    trials_dir: str
    checkpoint_storage: str
    tracking_uri: str
    experiment_name: str
    parent_run_id: str | None


def run_sweep(
    spec_path: str | Path,
    *,
    smoke: bool = False,
    output_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    storage_path: str | None = None,
    num_samples: int | None = None,
) -> SweepOutcome:
    """Run the sweep a spec describes; ``CryorayInputError`` before anything starts when the spec is bad.

    ``storage_path`` is the root for Tune state and trial checkpoints (shared storage on a multi-node cluster;
    default: the output dir). Joins the cluster in ``RAY_ADDRESS`` or starts a local Ray with its dashboard.
    """
    spec = load_sweep_spec(spec_path)
    method = load_method(spec.job)
    plan = plan_sweep(spec, spec_path, method, smoke, num_samples)
    edge_jobs = check_search_space(plan, method)
    for dataset in dict.fromkeys(job.dataset for job in edge_jobs):
        _check_dataset(dataset, method, plan.spec_path)

    sweep_name = f"{Path(spec_path).stem}{'-smoke' if smoke else ''}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    out = Path(output_dir or Path("outputs") / "sweeps" / sweep_name).expanduser().resolve()
    if (out / BEST_FILE).exists():
        raise CryorayInputError(out, "--output-dir", "a folder without a finished sweep", f"{BEST_FILE} exists")
    storage_root = storage_path or plan.base.get("storage_path")
    sweep_storage = f"{storage_root.rstrip('/')}/{sweep_name}" if storage_root else str(out)
    if "://" not in sweep_storage:
        sweep_storage = str(Path(sweep_storage).expanduser().resolve())
    uri = tracking_uri or plan.base.get("tracking_uri") or default_tracking_uri(Path.cwd())
    experiment = plan.base.get("experiment_name") or f"cryoray-{method.name}-sweeps"

    joined_cluster = bool(os.environ.get("RAY_ADDRESS"))
    started_ray = _connect_ray()
    try:
        concurrency = trial_concurrency(
            plan.max_concurrent_trials, edge_jobs, ray.cluster_resources(), joined_cluster, plan.spec_path
        )
        parent = start_run(
            uri,
            experiment,
            sweep_name,
            params={
                "spec": plan.spec.model_dump(exclude_none=True),
                "smoke": smoke,
                "num_samples": plan.num_samples,
                "max_concurrent_trials": concurrency,
            },
            tags={
                "cryoray.method": method.name,
                "cryoray.sweep_spec": str(Path(spec_path).resolve()),
                "cryoray.dataset": str(plan.base["dataset"]),
                "cryoray.smoke": str(smoke).lower(),
                "mlflow.source.git.commit": git_sha(REPO_ROOT),
            },
        )
        logger = RunLogger(parent)
        try:
            setup = _TrialSetup(
                method_name=plan.spec.job,
                spec_path=plan.spec_path,
                base=plan.base,
                trials_dir=str(out / "trials"),
                checkpoint_storage=f"{sweep_storage}/checkpoints",
                tracking_uri=uri,
                experiment_name=experiment,
                parent_run_id=parent.run_id if parent else None,
            )
            grid = _tuner(plan, setup, sweep_storage, concurrency, max(job.train.epochs for job in edge_jobs)).fit()
            trials = summarise_trials(grid, plan, method)
            _finalise_child_runs(parent, trials)
            summary_path = write_summary(out, plan, trials)
            logger.log_artifact(summary_path)
            best = best_trial(plan, trials, summary_path)
            best_path = _write_best(out, plan, best, parent)
        except BaseException:
            logger.finish(succeeded=False)
            raise
        logger.log_artifact(best_path)
        logger.log_metrics({f"best/{plan.spec.metric}": best.final_metric}, step=0)
        logger.finish(succeeded=True)
        return SweepOutcome(
            method=method.name,
            sweep_name=sweep_name,
            output_dir=str(out),
            tracking_uri=uri,
            experiment_name=experiment,
            parent_run_id=parent.run_id if parent else None,
            metric=plan.spec.metric,
            mode=plan.spec.mode,
            trials=trials,
            best=best,
            summary_path=str(summary_path),
            best_path=str(best_path),
        )
    finally:
        if started_ray:
            ray.shutdown()


def _connect_ray() -> bool:
    """Join RAY_ADDRESS or start a local Ray; True if this call connected (and so must shut down)."""
    # The dashboard's State API is what frees the placement groups of trials the scheduler stops; without
    # it they leak and later trials wait forever (ray_conventions.md section 3).
    return connect_ray(include_dashboard=True)


def trial_concurrency(
    requested: int | None,
    edge_jobs: list[JobConfig],
    cluster_resources: dict[str, float],
    joined_cluster: bool,
    spec_path: str | None = None,
) -> int:
    """How many trials run at once: what the cluster's CPUs/GPUs hold for the largest trial of the space.

    Tune counts only the trial drivers' fraction of a CPU, so without this cap it would start trials whose
    Train workers cannot be placed. A local Ray is capped (with a warning); a joined cluster may autoscale, so
    there a larger request stands and only a warning is printed.
    """
    cpus_per_trial = max(TRIAL_DRIVER_CPUS + job.num_workers * job.train.cpus_per_worker for job in edge_jobs)
    gpus_per_trial = max(job.num_workers if job.use_gpu else 0 for job in edge_jobs)
    cpus, gpus = cluster_resources.get("CPU", 0), cluster_resources.get("GPU", 0)
    if not joined_cluster and (cpus_per_trial > cpus or gpus_per_trial > gpus):
        # Ray would wait forever for resources a local machine will never have.
        raise CryorayInputError(
            spec_path, "num_workers, train.cpus_per_worker, use_gpu",
            f"a trial that fits this machine ({cpus:g} CPUs, {gpus:g} GPUs)",
            f"{cpus_per_trial:g} CPUs and {gpus_per_trial} GPUs per trial",
        )
    fits = math.floor(max(cpus - DATA_HEADROOM_CPUS, 0) / cpus_per_trial)
    if gpus_per_trial:
        fits = min(fits, math.floor(gpus / gpus_per_trial))
    fits = max(fits, 1)
    if requested is None:
        return fits
    if requested > fits:
        action = "the autoscaler must add nodes for the rest" if joined_cluster else f"running {fits} at a time"
        print(
            f"cryoray sweep: max_concurrent_trials={requested} but the cluster now holds {fits} trial(s) of "
            f"{cpus_per_trial:g} CPU(s) and {gpus_per_trial} GPU(s) (plus {DATA_HEADROOM_CPUS:g} CPU for Ray Data); {action}",
            file=sys.stderr,
            flush=True,
        )
        return requested if joined_cluster else fits
    return requested


def _check_dataset(name: str, method: Method, spec_path: str) -> None:
    """Build a recipe once before the trials start (not in every trial at once) and check its kind."""
    try:
        dataset_dir, manifest = resolve_dataset(name)
    except CryorayInputError as exc:
        raise CryorayInputError(spec_path, "base.dataset", exc.expected, exc.got) from None
    if manifest.kind != method.dataset_kind:
        raise CryorayInputError(dataset_dir, "kind", f"a {method.dataset_kind} dataset for {method.name}", manifest.kind)


def _tuner(plan: SweepPlan, setup: _TrialSetup, sweep_storage: str, concurrency: int, max_epochs: int) -> tune.Tuner:
    trial_resources: dict[str, float] = {"cpu": TRIAL_DRIVER_CPUS}
    if ray.cluster_resources().get(TRIAL_DRIVER_RESOURCE):
        trial_resources[TRIAL_DRIVER_RESOURCE] = 1
    scheduler = None
    if plan.scheduler.type == "asha":
        grace_epochs = plan.scheduler.grace_period_epochs
        scheduler = ASHAScheduler(
            time_attr="training_iteration",  # one Train report per epoch
            # Rungs stop short of the last epoch and trials past the last rung run on: a trial stopped at its
            # final report would be killed while writing its artifacts, for no saving.
            max_t=plan.scheduler.max_t_epochs or max(max_epochs - 1, grace_epochs),
            grace_period=grace_epochs,
            reduction_factor=plan.scheduler.reduction_factor,
            stop_last_trials=False,
        )
    return tune.Tuner(
        tune.with_resources(tune.with_parameters(_run_trial, setup=setup), trial_resources),
        param_space={key: distribution.to_tune() for key, distribution in plan.spec.search_space.items()},
        tune_config=tune.TuneConfig(
            metric=plan.spec.metric,
            mode=plan.spec.mode,
            scheduler=scheduler,
            # The limit goes on the generator: Tune ignores TuneConfig.max_concurrent_trials (with only a log
            # warning) when a BasicVariantGenerator is passed, and would start every trial at once.
            search_alg=BasicVariantGenerator(random_state=plan.spec.seed, max_concurrent=concurrency),
            num_samples=plan.num_samples,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=sweep_storage,
            failure_config=tune.FailureConfig(max_failures=plan.spec.max_trial_failures),
        ),
    )


def _run_trial(sampled: dict[str, Any], setup: _TrialSetup) -> None:
    """One trial, in its own light Tune actor: the method trained by the generic runner, with a child run."""
    context = tune.get_context()
    trial_id = context.get_trial_id()
    method = load_method(setup.method_name)
    raw = trial_settings(setup.base, sampled, str(Path(setup.trials_dir) / trial_id), run_name=f"trial-{trial_id}")
    raw.update(tracking_uri=setup.tracking_uri, storage_path=setup.checkpoint_storage, experiment_name=setup.experiment_name)
    job, method_config = validate_job_config(raw, method.config_schema, setup.spec_path)
    dataset_dir, manifest = resolve_dataset(job.dataset)
    handle = _child_run(setup, trial_id, context.get_trial_name(), job, method_config.model_dump(), manifest.name)
    logger = RunLogger(handle)
    try:
        run_training(
            method, job, method_config, dataset_dir, manifest, job.run_name, handle, callbacks=[TuneReportCallback()]
        )
    except BaseException:
        logger.finish(succeeded=False)
        raise
    logger.finish(succeeded=True)


def _child_run(
    setup: _TrialSetup, trial_id: str, trial_name: str, job: JobConfig, method_config: dict[str, Any], dataset: str
) -> TrackingHandle | None:
    """The trial's nested MLflow run; a restarted trial finds and reuses the one its first attempt made."""
    if setup.parent_run_id is None:
        return None
    try:
        client = MlflowClient(setup.tracking_uri)
        parent = client.get_run(setup.parent_run_id)
        existing = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{setup.parent_run_id}' and tags.`{TRIAL_ID_TAG}` = '{trial_id}'",
        )
        if existing:
            return TrackingHandle(setup.tracking_uri, parent.info.experiment_id, existing[0].info.run_id)
    except Exception as exc:  # noqa: BLE001 - tracking must never stop a trial
        print(f"cryoray sweep: MLflow lookup for trial {trial_id} failed ({exc}); creating a new run", file=sys.stderr)
    return start_run(
        setup.tracking_uri,
        setup.experiment_name,
        trial_name,
        params={**job.model_dump(exclude={"method"}), "method": method_config},
        tags={"cryoray.method": setup.method_name, "cryoray.dataset": dataset, TRIAL_ID_TAG: trial_id},
        parent_run_id=setup.parent_run_id,
    )


def summarise_trials(grid: ResultGrid, plan: SweepPlan, method: Method) -> list[TrialSummary]:
    """One row per trial from Tune's results; the status says how the trial ended (the child run's status)."""
    metric = plan.spec.metric
    rows = []
    for result in grid:
        reported = result.metrics or {}
        params = {key: result.config.get(key) for key in plan.spec.search_space}
        job, method_config = validate_job_config(trial_settings(plan.base, params), method.config_schema, plan.spec_path)
        history = result.metrics_dataframe
        values = [] if history is None or metric not in history else [float(v) for v in history[metric].dropna()]
        epochs_run = int(reported["epoch"]) + 1 if "epoch" in reported else 0
        if result.error is not None or not values:
            status = RunStatus.to_string(RunStatus.FAILED)
        elif epochs_run >= job.train.epochs:
            status = RunStatus.to_string(RunStatus.FINISHED)
        else:
            status = RunStatus.to_string(RunStatus.KILLED)
        pick = max if plan.spec.mode == "max" else min
        rows.append(
            TrialSummary(
                trial_id=reported["trial_id"],
                child_run_id=None,
                params=params,
                final_metric=values[-1] if values else math.nan,
                best_metric=pick(values) if values else math.nan,
                epochs_run=epochs_run,
                status=status,
                wall_time_s=float(reported.get("time_total_s", math.nan)),
                checkpoint_path=reported.get("checkpoint_path"),
                # Without the sweep's own settings, so it can serve as a job's --config as it is.
                job_config={
                    **job.model_dump(exclude={"method", *TRIAL_OWNED_KEYS, *SWEEP_WIDE_KEYS}),
                    "method": method_config.model_dump(),
                },
            )
        )
    return sorted(rows, key=lambda row: row.trial_id)


def _finalise_child_runs(parent: TrackingHandle | None, trials: list[TrialSummary]) -> None:
    """Give every child run its trial's final status (stopped trials never close their own) and fill in
    ``child_run_id``; keeps an end time the trial already set."""
    if parent is None:
        return
    try:
        client = MlflowClient(parent.tracking_uri)
        children = client.search_runs([parent.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
        by_trial = {run.data.tags.get(TRIAL_ID_TAG): run for run in children}
        for trial in trials:
            run = by_trial.get(trial.trial_id)
            if run is None:
                continue
            trial.child_run_id = run.info.run_id
            if run.info.status != trial.status:
                client.set_terminated(run.info.run_id, status=trial.status, end_time=run.info.end_time)
    except Exception as exc:  # noqa: BLE001 - the sweep's results stand without tracking
        print(f"cryoray sweep: could not finalise the trial runs in MLflow ({exc})", file=sys.stderr, flush=True)


def write_summary(out: Path, plan: SweepPlan, trials: list[TrialSummary]) -> Path:
    """``summary.csv``: one row per trial with its sampled values, final and best metric, epochs and status."""
    metric = plan.spec.metric
    out.mkdir(parents=True, exist_ok=True)
    path = out / SUMMARY_FILE
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["trial_id", "child_run_id", *plan.spec.search_space, f"final_{metric}", f"best_{metric}",
             "epochs_run", "status", "wall_time_s"]
        )
        for trial in trials:
            writer.writerow(
                [trial.trial_id, trial.child_run_id or "", *trial.params.values(), trial.final_metric,
                 trial.best_metric, trial.epochs_run, trial.status, f"{trial.wall_time_s:.1f}"]
            )
    return path


def best_trial(plan: SweepPlan, trials: list[TrialSummary], summary_path: Path) -> TrialSummary:
    """The trial whose last reported metric is best (as Tune ranks them); failed trials do not compete."""
    ranked = [trial for trial in trials if trial.status != RunStatus.to_string(RunStatus.FAILED)]
    if not ranked:
        raise SweepFailedError(f"no trial reported {plan.spec.metric}; every trial failed (see {summary_path} and the Tune logs)")
    pick = max if plan.spec.mode == "max" else min
    return pick(ranked, key=lambda trial: trial.final_metric)


def _write_best(out: Path, plan: SweepPlan, best: TrialSummary, parent: TrackingHandle | None) -> Path:
    """``best.json``: the best trial's values, full job config (usable as a job's --config) and checkpoint."""
    path = out / BEST_FILE
    payload = {
        "metric": plan.spec.metric,
        "mode": plan.spec.mode,
        "value": best.final_metric,
        "best_epoch_value": best.best_metric,
        "trial_id": best.trial_id,
        "child_run_id": best.child_run_id,
        "sweep_run_id": parent.run_id if parent else None,
        "params": best.params,
        "job_config": best.job_config,
        "checkpoint_path": best.checkpoint_path,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
