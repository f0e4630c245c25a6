"""Ctrl-C (SIGINT) and SIGTERM on a running job: one line naming the run, its last registered checkpoint and the
command that resumes it, exit 130/143, and the job's own Ray shut down."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.ray, pytest.mark.system]


def _start(tmp_path: Path, epochs: int) -> tuple[subprocess.Popen, Path, list[str]]:
    config = tmp_path / "config.yaml"
    config.write_text(f"train: {{epochs: {epochs}, batch_size: 64, checkpoint_every_epochs: 1}}\n")
    argv = ["--smoke", "--num-workers", "1", "--config", str(config), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "jobs/reconstruct.py", *argv, "--output-dir", str(out)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out, env


def _interrupt_after_first_checkpoint(proc: subprocess.Popen, out: Path, signum: signal.Signals) -> tuple[int, str, list]:
    deadline = time.monotonic() + 240
    while not list((out / "checkpoints").glob("*/checkpoint_manager_snapshot.json")):  # a registered checkpoint
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=180)
    return proc.returncode, err, children


def _assert_ray_is_gone(children: list) -> None:
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running: {[p.pid for p in alive]}"


def test_sigint_reports_the_checkpoint_and_the_command_that_resumes(tmp_path):
    proc, out, _ = _start(tmp_path, epochs=4)
    code, err, children = _interrupt_after_first_checkpoint(proc, out, signal.SIGINT)
    last = err.strip().splitlines()[-1]
    assert code == 130, err[-3000:]
    assert last.startswith("cryoray reconstruct: interrupted by SIGINT during run reconstruct-"), last
    assert "Traceback" not in err.split("interrupted by")[-1]
    assert not (out / "result.json").exists()
    _assert_ray_is_gone(children)
    # The checkpoint named is one Ray Train registered (what a rerun with the run's name restores: the
    # resume itself is tested by tests/test_two_nodes.py and tests/test_cryospin_job.py).
    run_name = last.split("during run ")[1].split(";")[0]
    checkpoint = Path(last.split("last checkpoint: ")[1].split(";")[0])
    assert checkpoint.parent == out / "checkpoints" / run_name and checkpoint.name.startswith("epoch_")
    assert checkpoint.name in (checkpoint.parent / "checkpoint_manager_snapshot.json").read_text()
    command = shlex.split(last.split("resume with: ")[1])
    assert command[:2] == ["python", "jobs/reconstruct.py"] and command.count("--output-dir") == 1
    assert command[-4:] == ["--output-dir", str(out), "--run-name", run_name]
    assert command[2:-4] == [
        "--smoke",
        "--num-workers",
        "1",
        "--config",
        str(tmp_path / "config.yaml"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
    ]


def test_sigterm_exits_143_with_one_line(tmp_path):
    proc, out, _ = _start(tmp_path, epochs=4)
    code, err, children = _interrupt_after_first_checkpoint(proc, out, signal.SIGTERM)
    assert code == 143, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "interrupted by SIGTERM during run" in last and "resume with: python jobs/reconstruct.py" in last, last
    _assert_ray_is_gone(children)
