"""`ray job submit --working-dir . -- python jobs/robpicker.py --smoke` (the flagship job) against a
`ray start --head` that this test starts and stops; the job joins that cluster through RAY_ADDRESS instead
of starting its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from local_ray import free_ports, processes_under

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.system]

GCS_PORT = 6391
DASHBOARD_PORT = 8267


def _ray(*args: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    ray_cli = Path(sys.executable).with_name("ray")
    return subprocess.run([str(ray_cli), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def _submit(*args: str, env: dict, timeout: int) -> subprocess.CompletedProcess:
    """``ray job submit``, retried while the fresh head's job agent is not up yet (a busy machine can take a minute);
    that refusal comes before any job starts, so a retry never runs the job twice."""
    deadline = time.monotonic() + 120
    while True:
        submit = _ray("job", "submit", *args, env=env, timeout=timeout)
        if "No available agent to submit job" not in submit.stdout + submit.stderr or time.monotonic() > deadline:
            return submit
        time.sleep(5)


def stop_head(temp_dir: Path) -> None:
    """Stop only this head's processes (command lines naming its temp dir) and their children.

    ``ray stop --force`` would kill every Ray on the machine, a developer's runs and benchmarks included.
    """
    processes = processes_under(temp_dir)
    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=30)
    for process in alive:
        process.kill()
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_a_job_on_a_running_cluster(tmp_path):
    if shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("the ray CLI is not installed next to this Python")
    # As in an activated virtual environment: `python` and `ray` are the ones cryoray is installed in.
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{DASHBOARD_PORT}",
    }
    env.pop("RAY_ADDRESS", None)
    temp_dir = Path(tempfile.mkdtemp(prefix="cr", dir="/tmp"))  # short: Ray's socket paths live under it
    agent_http, agent_grpc, runtime_env_agent, metrics = free_ports(4)
    start = _ray(
        "start",
        "--head",
        "--num-cpus=2",
        f"--port={GCS_PORT}",
        f"--dashboard-port={DASHBOARD_PORT}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env_agent}",
        f"--metrics-export-port={metrics}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        env=env,
    )
    assert start.returncode == 0, start.stderr
    try:
        runtime_env = json.dumps({"env_vars": {"CRYORAY_DATA_DIR": os.environ["CRYORAY_DATA_DIR"]}})
        out_dir = tmp_path / "out"
        submit = _submit(
            "--working-dir",
            ".",
            "--runtime-env-json",
            runtime_env,
            "--",
            "python",
            "jobs/robpicker.py",
            "--smoke",
            "--num-workers",
            "1",
            "--output-dir",
            str(out_dir),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            env=env,
            timeout=480,
        )
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert "succeeded" in submit.stdout
        result_lines = [line for line in submit.stdout.splitlines() if line.startswith("RESULT ")]
        assert result_lines, submit.stdout[-3000:]
        result = json.loads(result_lines[-1].removeprefix("RESULT "))
        assert result["method"] == "robpicker" and Path(result["artifacts"]["model"]).is_file()
        metrics = result["metrics"]
        assert 0.0 <= metrics["test_f1_macro"] <= 1.0
        assert any(key.startswith("test/hitbox/f1/") for key in metrics), sorted(metrics)
        assert any(name.startswith("picks_") and path.endswith(".star") for name, path in result["artifacts"].items())
        assert json.loads((out_dir / "result.json").read_text())["mlflow_run_id"] == result["mlflow_run_id"]
    finally:
        stop_head(temp_dir)
