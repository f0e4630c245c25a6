"""What a finished sweep leaves: one row per trial (``summary.csv``), the best trial (``best.json``), its job config
as a file any job's ``--config`` takes unchanged (``best.yaml``), the outcome.

Tune kills the actor of a trial its scheduler stops, so such a trial never closes its own MLflow run: the
driver gives every child run its final status here, after ``fit()``.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import RunStatus
from ray.tune.result_grid import ResultGrid

from cryoray.config import validate_job_config
from cryoray.tracking import TrackingHandle, tracking_client
from cryoray.train.method import Method
from cryoray.tune.spec import SWEEP_WIDE_KEYS, TRIAL_OWNED_KEYS, SweepPlan, trial_settings
from cryoray.tune.trial import TRIAL_ID_TAG

SUMMARY_FILE = "summary.csv"
BEST_FILE = "best.json"
BEST_CONFIG_FILE = "best.yaml"


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
    best_config_path: str

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
            "best_config": self.best_config_path,
        }


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


def finalise_child_runs(parent: TrackingHandle | None, trials: list[TrialSummary]) -> None:
    """Give every child run its trial's final status (stopped trials never close their own) and fill in
    ``child_run_id``; keeps an end time the trial already set."""
    if parent is None:
        return
    try:
        client = tracking_client(parent.tracking_uri)
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
            [
                "trial_id",
                "child_run_id",
                *plan.spec.search_space,
                f"final_{metric}",
                f"best_{metric}",
                "epochs_run",
                "status",
                "wall_time_s",
            ]
        )
        for trial in trials:
            writer.writerow(
                [
                    trial.trial_id,
                    trial.child_run_id or "",
                    *trial.params.values(),
                    trial.final_metric,
                    trial.best_metric,
                    trial.epochs_run,
                    trial.status,
                    f"{trial.wall_time_s:.1f}",
                ]
            )
    return path


def best_trial(plan: SweepPlan, trials: list[TrialSummary], summary_path: Path) -> TrialSummary:
    """The trial whose last reported metric is best (as Tune ranks them); failed trials do not compete."""
    ranked = [trial for trial in trials if trial.status != RunStatus.to_string(RunStatus.FAILED)]
    if not ranked:
        raise SweepFailedError(f"no trial reported {plan.spec.metric}; every trial failed (see {summary_path} and the Tune logs)")
    pick = max if plan.spec.mode == "max" else min
    return pick(ranked, key=lambda trial: trial.final_metric)


def write_best(out: Path, plan: SweepPlan, best: TrialSummary, parent: TrackingHandle | None) -> Path:
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


def write_best_config(out: Path, plan: SweepPlan, best: TrialSummary) -> Path:
    """``best.yaml``: the best trial's job config alone, so ``jobs/<method>.py --config best.yaml`` runs it as it is
    (point ``--dataset``, ``train.epochs`` or ``--output-dir`` elsewhere with flags or by editing the file)."""
    path = out / BEST_CONFIG_FILE
    header = (
        f"# Best trial {best.trial_id} of the sweep {plan.spec_path}: {plan.spec.metric} = {best.final_metric:.6g} "
        f"({plan.spec.mode}).\n# MLflow run {best.child_run_id}; checkpoint {best.checkpoint_path}\n"
    )
    plain = json.loads(json.dumps(best.job_config))  # tuples become lists: YAML that safe_load reads back
    path.write_text(header + yaml.safe_dump(plain, sort_keys=False))
    return path
