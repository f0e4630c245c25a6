"""Shared fixtures: the location of ../shared/data and the rule for tests that need it, the one way tests
run a command-line entry point in this process and read its ``RESULT`` line, and the devices a test runs on."""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    return Path(os.environ.get("CRYORAY_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; skipped when absent, a failure when CRYORAY_REQUIRE_SHARED_DATA=1."""
    path = _shared_data_dir()
    if not path.is_dir():
        reason = f"shared data folder {path} is absent (set CRYORAY_SHARED_DATA to point at it)"
        if os.environ.get("CRYORAY_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session", autouse=True)
def isolated_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Datasets built by tests go to a session temp dir, never to the user's cache."""
    path = tmp_path_factory.mktemp("cryoray_datasets")
    os.environ["CRYORAY_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def empty_tracking_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store, made once: MLflow's schema migrations take seconds per new store."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def fresh_tracking_uri(tmp_path: Path, empty_tracking_store: Path) -> str:
    """This test's own MLflow store (a copy of the empty one): what a new ``--tracking-uri`` file gives a job."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(empty_tracking_store, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["cpu", "cuda"])
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each device a test should hold on: the CPU always, CUDA where this machine has a GPU (else skipped)."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    return torch.device(request.param)


@dataclass
class CommandOutcome:
    """What a command did: exit code, the ``RESULT`` JSON (on success), and its stdout and stderr."""

    code: int
    result: dict[str, Any] | None
    out: str
    err: str


def parse_result_line(stdout: str) -> dict[str, Any]:
    """The JSON of ``RESULT {json}``, which the contract says is the last non-empty line of stdout."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("RESULT "), f"the last line must be 'RESULT {{json}}', got {lines[-1:]!r}"
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.fixture
def result_line() -> Callable[[str], dict[str, Any]]:
    """``parse_result_line`` for tests that run a command in a subprocess."""
    return parse_result_line


@pytest.fixture
def run_command(capsys: pytest.CaptureFixture) -> Callable[..., CommandOutcome]:
    """Run an entry point (``run_predict``, ``run_apply``, a sweep's ``main`` …) on ``argv`` in this process;
    with ``expect_success`` (the default) a non-zero exit fails the test showing the command's stderr."""

    def run(entry: Callable[[list[str]], int], argv: list[str], expect_success: bool = True) -> CommandOutcome:
        code = entry(argv)
        captured = capsys.readouterr()
        if expect_success:
            assert code == 0, captured.err[-3000:]
        result = parse_result_line(captured.out) if code == 0 else None
        return CommandOutcome(code, result, captured.out, captured.err)

    return run


@pytest.fixture
def run_job_in_process(run_command: Callable[..., CommandOutcome]) -> Callable[..., CommandOutcome]:
    """``run_command`` for a training job: ``run_job_in_process(Method(), argv)``; a finished run must report each
    of the method's key metrics under its declared name (what a sweep may rank trials by)."""
    from cryoray.cli import run_job

    def run(method: Any, argv: list[str], expect_success: bool = True) -> CommandOutcome:
        outcome = run_command(functools.partial(run_job, method), argv, expect_success)
        if outcome.result is not None:
            missing = set(method.key_metrics) - set(outcome.result["metrics"])
            assert not missing, f"{method.name} declares key metrics it did not report: {sorted(missing)}"
        return outcome

    return run
