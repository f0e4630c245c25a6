"""One Tune trial: the method trained by the generic runner in a light Tune actor, with a nested MLflow run.

A trial's Train run is named after its trial id, so a restarted trial resumes from its own checkpoint and
finds the child run its first attempt made.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from cryoray import console
from cryoray.config import JobConfig, validate_job_config
from cryoray.data.recipes import resolve_dataset
from cryoray.methods import load_method
from cryoray.tracking import RunLogger, TrackingHandle, start_run, tracking_client
from cryoray.train.runner import run_training
from cryoray.tune.spec import trial_settings

TRIAL_ID_TAG = "cryoray.trial_id"


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its sampled values (small and picklable)."""

    method_name: str
    spec_path: str
    base: dict[str, Any]
    trials_dir: str
    checkpoint_storage: str
    tracking_uri: str
    experiment_name: str
    parent_run_id: str | None
    verbosity: console.Verbosity


def run_trial(sampled: dict[str, Any], setup: TrialSetup) -> None:
    """One trial, in its own light Tune actor: the method trained by the generic runner, with a child run."""
    console.configure(setup.verbosity)
    context = tune.get_context()
    trial_id = context.get_trial_id()
    method = load_method(setup.method_name)
    run_name = f"trial-{trial_id}"
    raw = trial_settings(setup.base, sampled, str(Path(setup.trials_dir) / trial_id), run_name=run_name)
    raw.update(tracking_uri=setup.tracking_uri, storage_path=setup.checkpoint_storage, experiment_name=setup.experiment_name)
    job, method_config = validate_job_config(raw, method.config_schema, setup.spec_path)
    dataset_dir, manifest = resolve_dataset(job.dataset)
    handle = _child_run(setup, trial_id, context.get_trial_name(), job, method_config.model_dump(), manifest.name)
    logger = RunLogger(handle)
    try:
        run_training(method, job, method_config, dataset_dir, manifest, run_name, handle, callbacks=[TuneReportCallback()])
    except BaseException:
        logger.finish(succeeded=False)
        raise
    logger.finish(succeeded=True)


def _child_run(
    setup: TrialSetup, trial_id: str, trial_name: str, job: JobConfig, method_config: dict[str, Any], dataset: str
) -> TrackingHandle | None:
    """The trial's nested MLflow run; a restarted trial finds and reuses the one its first attempt made."""
    if setup.parent_run_id is None:
        return None
    try:
        client = tracking_client(setup.tracking_uri)
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
