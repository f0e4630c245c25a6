"""The cluster's MLflow server behind MLflow's basic-auth app, with its one secret read from one file.

``python -m cryoray.tracking.server --credentials ~/.mlflow/credentials --backend-store-uri sqlite:///… …``

The credentials file is MLflow's own client format (``[mlflow]`` with ``mlflow_tracking_username`` and
``mlflow_tracking_password``). ``cluster.yaml`` mounts the user's copy at ``~/.mlflow/credentials`` on every
node, where every MLflow client (the jobs' rank 0, the sweep driver, ``--model runs:/…``) reads it; this
module makes the same user the server's admin, so one file both opens and locks the server. Users and
permissions persist in a sqlite file next to the tracking store; the password is never written anywhere else
(it reaches MLflow through ``MLFLOW_AUTH_ADMIN_PASSWORD``, which it reads once to create the admin).
"""

from __future__ import annotations

import argparse
import configparser
import os
import secrets
import stat
import sys
from pathlib import Path

from cryoray.errors import CryorayInputError

SECTION = "mlflow"


def read_credentials(path: Path) -> tuple[str, str]:
    """(username, password) from an MLflow credentials file that only its owner can read."""
    if not path.is_file():
        raise CryorayInputError(path, "--credentials", "an MLflow credentials file (see README, 'Scaling out')", "no such file")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CryorayInputError(path, "mode", "a file only its owner can read (chmod 600)", oct(path.stat().st_mode & 0o777))
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise CryorayInputError(path, "format", "an INI file with an [mlflow] section", str(exc).splitlines()[0]) from None
    values = parser[SECTION] if parser.has_section(SECTION) else {}
    for key in ("mlflow_tracking_username", "mlflow_tracking_password"):
        if not values.get(key, "").strip():
            raise CryorayInputError(path, f"[{SECTION}] {key}", "a non-empty value", "missing")
    username, password = values["mlflow_tracking_username"].strip(), values["mlflow_tracking_password"].strip()
    if len(password) < 16:
        raise CryorayInputError(path, "mlflow_tracking_password", "at least 16 characters", f"{len(password)}")
    return username, password


def write_auth_config(state_dir: Path, admin_username: str) -> Path:
    """The basic-auth app's INI: users in ``state_dir/mlflow-auth.db``, READ for signed-in users by default."""
    config = configparser.ConfigParser()
    config[SECTION] = {
        "default_permission": "READ",
        "database_uri": f"sqlite:///{(state_dir / 'mlflow-auth.db').resolve()}",
        "admin_username": admin_username,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    path = state_dir / "mlflow-auth.ini"
    with path.open("w") as handle:
        config.write(handle)
    return path


def _secret_key(state_dir: Path) -> str:
    """The Flask CSRF key, made once and kept (0600) so that a restarted server accepts its own sessions."""
    path = state_dir / "mlflow-flask-secret"
    if not path.is_file():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


def server_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line and environment that serve behind basic auth."""
    username, password = read_credentials(args.credentials)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(write_auth_config(args.state_dir, username)),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret_key(args.state_dir),
    }
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        args.backend_store_uri,
        "--artifacts-destination",
        args.artifacts_destination,
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    return command, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cryoray.tracking.server", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--credentials",
        type=Path,
        default=Path("~/.mlflow/credentials").expanduser(),
        help="MLflow credentials file (0600) whose user becomes the server's admin",
    )
    parser.add_argument("--state-dir", type=Path, required=True, help="folder for the users database and the CSRF key")
    parser.add_argument("--backend-store-uri", required=True, help="e.g. sqlite:////home/ray/mlflow.db")
    parser.add_argument("--artifacts-destination", required=True, help="e.g. s3://bucket/mlflow or a local folder")
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (the head's private address on a cluster)")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    try:
        command, env = server_command(args)
    except CryorayInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.execve(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())
