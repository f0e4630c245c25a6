"""The cluster's MLflow server (cryoray.tracking.server) refuses anonymous requests and serves the user whose
credentials file started it; cryoray's own tracking logs to it with that file's credentials."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from cryoray.errors import CryorayInputError
from cryoray.tracking.server import read_credentials
from local_ray import free_ports

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def _credentials(path: Path, password: str = "correct-horse-battery-staple", mode: int = 0o600) -> Path:
    path.write_text(f"[mlflow]\nmlflow_tracking_username = cryo\nmlflow_tracking_password = {password}\n")
    path.chmod(mode)
    return path


def test_credentials_must_be_private_complete_and_strong(tmp_path):
    assert read_credentials(_credentials(tmp_path / "ok")) == ("cryo", "correct-horse-battery-staple")
    with pytest.raises(CryorayInputError, match="mode: expected a file only its owner can read"):
        read_credentials(_credentials(tmp_path / "shared", mode=0o644))
    with pytest.raises(CryorayInputError, match="mlflow_tracking_password: expected at least 16 characters"):
        read_credentials(_credentials(tmp_path / "weak", password="short"))
    empty = tmp_path / "empty"
    empty.write_text("[mlflow]\n")
    empty.chmod(0o600)
    with pytest.raises(CryorayInputError, match=r"\[mlflow\] mlflow_tracking_username: expected a non-empty value"):
        read_credentials(empty)


@pytest.mark.system
def test_the_server_refuses_anonymous_requests_and_serves_its_user(tmp_path):
    credentials = _credentials(tmp_path / "credentials")
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")  # a file, not a pipe: a full pipe would stall the server
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cryoray.tracking.server",
            "--credentials",
            str(credentials),
            "--state-dir",
            str(tmp_path / "state"),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                anonymous = requests.get(url + SEARCH, timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the MLflow server did not come up in 240 s"
                time.sleep(1)
        assert anonymous.status_code == 401
        assert requests.get(url + SEARCH, auth=("cryo", "wrong-password-123456"), timeout=5).status_code == 401
        assert requests.get(url + SEARCH, auth=("cryo", "correct-horse-battery-staple"), timeout=5).status_code == 200
        assert not any("correct-horse" in p.read_text() for p in (tmp_path / "state").iterdir() if p.suffix == ".ini")

        # A client with the same credentials (what cluster.yaml mounts on every node) logs a run.
        env = {**os.environ, "MLFLOW_TRACKING_USERNAME": "cryo", "MLFLOW_TRACKING_PASSWORD": "correct-horse-battery-staple"}
        logged = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from cryoray.tracking import start_run; "
                f"handle = start_run({url!r}, 'auth-check', 'run', {{}}, {{}}); print(handle.run_id)",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert logged.returncode == 0 and len(logged.stdout.strip()) == 32, logged.stderr[-2000:]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
