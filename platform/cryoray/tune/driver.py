"""A sweep from spec to outcome: checks before anything starts, Ray, the parent MLflow run, the Tuner, the exports."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from cryoray import console
from cryoray.config import JobConfig
from cryoray.data.recipes import REPO_ROOT, resolve_dataset
from cryoray.errors import CryorayInputError
from cryoray.io.outputs import check_output_dir
from cryoray.methods import load_method
from cryoray.session import check_gpus, connect_ray, joins_cluster
from cryoray.tracking import RunLogger, default_tracking_uri, git_sha, start_run
from cryoray.train.method import Method
from cryoray.tune.resources import trial_concurrency, trial_driver_resources
from cryoray.tune.results import (
    BEST_FILE,
    SweepOutcome,
    best_trial,
    finalise_child_runs,
    summarise_trials,
    write_best,
    write_best_config,
    write_summary,
)
from cryoray.tune.spec import SweepPlan, check_search_space, load_sweep_spec, plan_sweep
from cryoray.tune.trial import TrialSetup, run_trial


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
    sweep_name = f"{Path(spec_path).stem}{'-smoke' if smoke else ''}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    out = check_output_dir(
        output_dir or Path("outputs") / "sweeps" / sweep_name,
        "--output-dir",
        overwrite=False,
        own_files=(BEST_FILE,),
        overwrite_flag=False,
    )
    gpus_per_trial = max(job.num_workers if job.use_gpu else 0 for job in edge_jobs)
    if gpus_per_trial:
        check_gpus(gpus_per_trial, source=plan.spec_path, field="use_gpu")
    _check_datasets(edge_jobs, method, plan.spec_path)
    storage_root = storage_path or plan.base.get("storage_path")
    sweep_storage = f"{storage_root.rstrip('/')}/{sweep_name}" if storage_root else str(out)
    if "://" not in sweep_storage:
        sweep_storage = str(Path(sweep_storage).expanduser().resolve())
    uri = tracking_uri or plan.base.get("tracking_uri") or default_tracking_uri(Path.cwd())
    experiment = plan.base.get("experiment_name") or f"cryoray-{method.name}-sweeps"

    joined_cluster = joins_cluster()
    # The dashboard's State API is what frees the placement groups of trials the scheduler stops; without
    # it they leak and later trials wait forever (ray_conventions.md section 3).
    started_ray = connect_ray(include_dashboard=True)
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
            setup = TrialSetup(
                method_name=plan.spec.job,
                spec_path=plan.spec_path,
                base=plan.base,
                trials_dir=str(out / "trials"),
                checkpoint_storage=f"{sweep_storage}/checkpoints",
                tracking_uri=uri,
                experiment_name=experiment,
                parent_run_id=parent.run_id if parent else None,
                # Trials' own step and epoch lines would interleave with Tune's status table: only with --verbose.
                verbosity="normal" if console.verbosity() == "verbose" else "quiet",
            )
            grid = _tuner(plan, setup, sweep_storage, concurrency, max(job.train.epochs for job in edge_jobs)).fit()
            trials = summarise_trials(grid, plan, method)
            finalise_child_runs(parent, trials)
            summary_path = write_summary(out, plan, trials)
            logger.log_artifact(summary_path)
            best = best_trial(plan, trials, summary_path)
            best_path = write_best(out, plan, best, parent)
            best_config_path = write_best_config(out, plan, best)
        except BaseException:
            logger.finish(succeeded=False)
            raise
        logger.log_artifact(best_path)
        logger.log_artifact(best_config_path)
        logger.log_metrics({plan.spec.metric: best.final_metric}, step=0)  # the best trial's, under its own name
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
            best_config_path=str(best_config_path),
        )
    finally:
        if started_ray:
            ray.shutdown()


def _check_datasets(edge_jobs: list[JobConfig], method: Method, spec_path: str) -> None:
    """Build each recipe once before the trials start (not in every trial at once) and let the method check it with
    every edge of the search space, before Ray starts."""
    resolved = {}
    for job in edge_jobs:
        if job.dataset not in resolved:
            try:
                resolved[job.dataset] = resolve_dataset(job.dataset)
            except CryorayInputError as exc:
                raise CryorayInputError(spec_path, "base.dataset", exc.expected, exc.got) from None
        dataset_dir, manifest = resolved[job.dataset]
        method.check_dataset(dataset_dir, manifest, method.config_schema.model_validate(job.method))


def _tuner(plan: SweepPlan, setup: TrialSetup, sweep_storage: str, concurrency: int, max_epochs: int) -> tune.Tuner:
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
        tune.with_resources(tune.with_parameters(run_trial, setup=setup), trial_driver_resources(ray.cluster_resources())),
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
            verbose=0 if console.verbosity() == "quiet" else None,  # None: Tune's status table
        ),
    )
