"""MLflow tracking: one run per job, logged by the driver and by rank 0 only, never fatal to training.

The driver creates the run (params = flattened config, tags = git sha, package version, dataset, method) and
hands a small picklable ``TrackingHandle`` to the workers; rank 0 logs metrics and artifacts through a
stateless ``MlflowClient`` with the absolute tracking URI (Train workers change directory). Any tracking
failure is reported once on stderr and logging stops, while training goes on.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryoray import __version__

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

MAX_PARAM_LENGTH = 6000
# A dead tracking server should cost seconds, not MLflow's default minutes of retries (a user's setting wins).
FAIL_FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def tracking_client(tracking_uri: str) -> MlflowClient:
    """The one way cryoray opens an MLflow client: with fail-fast HTTP defaults.

    MLflow reads these variables at every request, so they are set here, when a process first talks to a
    server (the driver, or rank 0 of a Train run), rather than as a side effect of importing this module.
    """
    for name, value in FAIL_FAST_HTTP.items():
        os.environ.setdefault(name, value)
    from mlflow.tracking import MlflowClient  # here: the in-process route runs where MLflow is not installed

    return MlflowClient(tracking_uri)


def default_tracking_uri(base_dir: str | Path) -> str:
    """A local SQLite store ``<base_dir>/mlflow.db`` (absolute: Train workers chdir)."""
    return f"sqlite:///{Path(base_dir).resolve() / 'mlflow.db'}"


def flatten_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{'train': {'epochs': 3}} -> {'train.epochs': '3'} (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def git_sha(repo_dir: str | Path = ".") -> str:
    """The commit of the code that ran, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass(frozen=True)
class TrackingHandle:
    """Picklable pointer to an MLflow run, sent to the workers."""

    tracking_uri: str
    experiment_id: str
    run_id: str


class RunLogger:
    """Logs to one MLflow run; after the first failure it warns once and turns itself off."""

    def __init__(self, handle: TrackingHandle | None) -> None:
        self.handle = handle
        self._client = tracking_client(handle.tracking_uri) if handle else None

    @property
    def active(self) -> bool:
        return self._client is not None

    def _disable(self, what: str, exc: Exception) -> None:
        uri = self.handle.tracking_uri if self.handle else "?"
        print(
            f"cryoray: MLflow tracking at {uri} failed while {what} ({type(exc).__name__}: {exc}); "
            "training continues without tracking",
            file=sys.stderr,
            flush=True,
        )
        self._client = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self._client or self.handle is None or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        try:
            self._client.log_batch(self.handle.run_id, metrics=batch)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            self._disable("logging metrics", exc)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self._client or self.handle is None:
            return
        try:
            self._client.log_artifact(self.handle.run_id, str(path), artifact_path)
        except Exception as exc:  # noqa: BLE001
            self._disable(f"uploading {path}", exc)

    def log_model(self, path: str | Path, name: str, params: dict[str, Any], register_as: str | None) -> None:
        """The model file as an MLflow logged model of this run (the experiment's Models tab lists it, with
        ``params``: the physical metadata) and, with ``register_as``, a new version of that registered model, so
        ``predict``/``apply``/``denoise`` take ``models:/NAME/VERSION`` or ``models:/NAME@alias``. Only the model
        file is logged: no code, no pickle, nothing that runs when it is loaded."""
        if not self._client or self.handle is None:
            return
        try:
            model = self._client.create_logged_model(
                self.handle.experiment_id,
                name=name,
                source_run_id=self.handle.run_id,
                params=flatten_params(params),
                tags={"cryoray.version": __version__, "cryoray.model_file": Path(path).name},
                model_type="cryoray",
            )
            with tempfile.TemporaryDirectory() as folder:
                shutil.copy2(path, Path(folder) / Path(path).name)
                self._client.log_model_artifacts(model.model_id, folder)
            self._client.finalize_logged_model(model.model_id, "READY")
            if register_as:
                if not self._client.search_registered_models(filter_string=f"name = '{register_as}'"):
                    self._client.create_registered_model(register_as, tags={"cryoray.method": name})
                version = self._client.create_model_version(
                    register_as, source=model.artifact_location, run_id=self.handle.run_id, model_id=model.model_id
                )
                self._client.set_tag(self.handle.run_id, "cryoray.registered_model", f"models:/{register_as}/{version.version}")
        except Exception as exc:  # noqa: BLE001
            self._disable("logging the model", exc)

    def set_tags(self, tags: dict[str, str]) -> None:
        if not self._client or self.handle is None:
            return
        try:
            for key, value in tags.items():
                self._client.set_tag(self.handle.run_id, key, value)
        except Exception as exc:  # noqa: BLE001
            self._disable("setting tags", exc)

    def finish(self, succeeded: bool) -> None:
        if not self._client or self.handle is None:
            return
        from mlflow.entities import RunStatus

        status = RunStatus.to_string(RunStatus.FINISHED if succeeded else RunStatus.FAILED)
        try:
            self._client.set_terminated(self.handle.run_id, status=status)
        except Exception as exc:  # noqa: BLE001
            self._disable("closing the run", exc)


def start_run(
    tracking_uri: str,
    experiment_name: str,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    parent_run_id: str | None = None,
) -> TrackingHandle | None:
    """Create the job's run (nested under ``parent_run_id`` for sweep trials); None if tracking is down."""
    from mlflow.entities import Param

    try:
        client = tracking_client(tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            artifact_location = None
            if tracking_uri.startswith("sqlite:///"):
                store_dir = Path(tracking_uri.removeprefix("sqlite:///")).parent
                artifact_location = (store_dir / "mlartifacts" / experiment_name).as_uri()
            # The UI opens an experiment of this kind in its model-training view (not the GenAI one).
            experiment_id = client.create_experiment(
                experiment_name, artifact_location=artifact_location, tags={"mlflow.experimentKind": "custom_model_development"}
            )
        all_tags = {
            "cryoray.version": __version__,
            "mlflow.user": getpass.getuser(),
            "mlflow.source.name": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500],  # the command that ran
            "mlflow.source.type": "JOB" if os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_ADDRESS") else "LOCAL",
            **tags,
        }
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        flat = flatten_params(params)
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flat.items()])
    except Exception as exc:  # noqa: BLE001 - an unreachable server must not stop the job
        print(
            f"cryoray: MLflow tracking at {tracking_uri} is unavailable ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); training continues without tracking",
            file=sys.stderr,
            flush=True,
        )
        return None
    return TrackingHandle(tracking_uri=tracking_uri, experiment_id=experiment_id, run_id=run.info.run_id)
