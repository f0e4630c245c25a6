"""Two Ray nodes on one machine (``ray start``, each in its own temp dir with one ``trainer_slot``): a 2-worker job
places one worker per node through ``train.resources_per_worker``; the second node is killed after the first
checkpoint, a replacement node joins, and the job finishes from the last checkpoint with nothing lost (every
epoch's metrics in MLflow, the final checkpoint, result.json)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from local_ray import free_ports, processes_under
from mlflow.tracking import MlflowClient

REPO_ROOT = Path(__file__).resolve().parents[1]
RAY_CLI = Path(sys.executable).with_name("ray")
pytestmark = [pytest.mark.ray, pytest.mark.system]

EPOCHS = 4
RUN_NAME = "two-nodes"
SLOT = {"trainer_slot": 1}  # each node has one, each Train worker takes one: one worker per node


@dataclass
class RayNode:
    """A node this test started with ``ray start``; its processes are the ones whose command line names its temp dir."""

    temp_dir: Path

    def processes(self) -> list[psutil.Process]:
        return processes_under(self.temp_dir)

    def kill(self) -> None:
        """SIGKILL every process of this node (as a machine that dies), never another Ray's."""
        processes = self.processes()
        for process in processes:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=30)


def _start_node(env: dict[str, str], nodes: list[RayNode], gcs_port: int, head: bool = False) -> RayNode:
    """``ray start`` on free ports in a short temp dir of its own (Ray's socket paths live under it): the head (2 CPUs,
    no dashboard, its GCS on ``gcs_port``) or a node of 1 CPU joining it."""
    node = RayNode(Path(tempfile.mkdtemp(prefix="cr", dir="/tmp")))
    nodes.append(node)
    manager, objects, runtime_env, agent_http, agent_grpc, metrics = free_ports(6)
    args = [
        f"--temp-dir={node.temp_dir}",
        "--node-ip-address=127.0.0.1",
        f"--node-manager-port={manager}",
        f"--object-manager-port={objects}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--resources={json.dumps(SLOT)}",
        "--disable-usage-stats",
    ]
    if head:
        args += ["--head", f"--port={gcs_port}", "--num-cpus=2", "--include-dashboard=false"]
    else:
        args += [f"--address=127.0.0.1:{gcs_port}", "--num-cpus=1"]
    start = subprocess.run([str(RAY_CLI), "start", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    return node


def _wait_for_registered_checkpoint(job: subprocess.Popen, run_dir: Path, timeout_s: float = 240) -> None:
    """Until Ray Train has registered a checkpoint (its snapshot file exists), not just begun writing one."""
    deadline = time.monotonic() + timeout_s
    while not (run_dir / "checkpoint_manager_snapshot.json").exists():
        assert job.poll() is None, f"the job ended (exit {job.returncode}) before its first checkpoint"
        assert time.monotonic() < deadline, f"no checkpoint within {timeout_s} s"
        time.sleep(0.2)


def test_a_killed_node_is_replaced_and_the_job_resumes_from_its_last_checkpoint(
    tmp_path: Path, result_line: Callable[[str], dict[str, Any]]
) -> None:
    # As in an activated virtual environment (`python` and `ray` are the ones cryoray is installed in).
    env = {**os.environ, "PATH": f"{RAY_CLI.parent}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    config = tmp_path / "config.yaml"
    settings = {"epochs": EPOCHS, "checkpoint_every_epochs": 1, "max_failures": 2, "resources_per_worker": SLOT}
    config.write_text(yaml.safe_dump({"train": settings}))
    storage, out, uri = tmp_path / "storage", tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    stdout, stderr = tmp_path / "job.out", tmp_path / "job.err"  # files: Ray's log lines would fill a pipe
    nodes: list[RayNode] = []
    job: subprocess.Popen | None = None
    try:
        port = free_ports(1)[0]
        _start_node(env, nodes, port, head=True)
        second = _start_node(env, nodes, port)
        with stdout.open("w") as out_file, stderr.open("w") as err_file:
            job = subprocess.Popen(
                [
                    sys.executable,
                    "jobs/reconstruct.py",
                    "--smoke",
                    "--num-workers",
                    "2",
                    "--config",
                    str(config),
                    "--output-dir",
                    str(out),
                    "--run-name",
                    RUN_NAME,
                    "--storage-path",
                    str(storage),
                    "--tracking-uri",
                    uri,
                ],
                cwd=REPO_ROOT,
                env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
                stdout=out_file,
                stderr=err_file,
            )
        _wait_for_registered_checkpoint(job, storage / RUN_NAME)
        assert any("RayTrainWorker" in " ".join(p.cmdline()) for p in second.processes()), "no Train worker on the second node"
        second.kill()
        _start_node(env, nodes, port)  # Ray Train waits for a second trainer_slot to restart the group
        job.wait(timeout=300)
    finally:
        if job is not None and job.poll() is None:
            job.kill()
        for node in nodes:
            node.kill()
            shutil.rmtree(node.temp_dir, ignore_errors=True)
    assert job.returncode == 0, stderr.read_text()[-3000:]
    result = result_line(stdout.read_text())
    assert json.loads((out / "result.json").read_text()) == result

    assert result["resumed_from_epoch"] is not None and 0 <= result["resumed_from_epoch"] < EPOCHS - 1, result
    assert Path(result["checkpoint"]) == storage / RUN_NAME / f"epoch_{EPOCHS - 1:04d}"
    client = MlflowClient(uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train_data_mse")
    assert {m.step for m in history} == set(range(EPOCHS))  # the replaced group logs again what it re-trains
    for name, value in result["metrics"].items():
        assert run.data.metrics[name] == value, name
    assert {a.path for a in client.list_artifacts(run.info.run_id, "outputs")} >= {"outputs/map.mrc", "outputs/fsc.csv"}
