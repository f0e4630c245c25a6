"""cluster.yaml passes Ray's own launcher validation (schema + semantic checks, no cloud calls)."""

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load() -> dict:
    return yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    config = prepare_config(copy.deepcopy(_load()))
    validate_config(config)
    assert config["head_node_type"] == "head.cpu"
    raw = _load()
    for kind, wheel in (("head_setup_commands", "whl/cpu"), ("worker_setup_commands", "whl/cu128")):
        commands = raw[kind]  # torch for the node's hardware first, then the project (which would pull a default torch)
        assert wheel in commands[0] and "torch==" in commands[0] and "-e /home/ray/cryoray" in commands[1], kind
    assert config["docker"]["image"].startswith("rayproject/ray:2.60.0-py311")


def test_validation_catches_a_typo():
    broken = _load()
    broken["available_node_types"]["gpu.a10g"]["min_worker"] = 1
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config(broken))


def test_servers_are_not_open_to_anyone():
    """MLflow runs behind basic auth with the mounted credentials; the dashboard listens on localhost only."""
    config = _load()
    head = " ".join(config["head_start_ray_commands"])
    assert "cryoray.tracking.server" in head and "mlflow server" not in head
    assert "--dashboard-host=127.0.0.1" in head
    assert config["file_mounts"]["/home/ray/.mlflow/credentials"] == "~/.cryoray/mlflow-credentials"


def test_tracking_outlives_the_cluster_and_workers_can_reach_s3():
    """Runs and artifacts go to the store ~/.cryoray/tracking.env names, not the head's disk; GPU workers have the
    instance profile that lets them write checkpoints to --storage-path s3://…."""
    config = _load()
    head = " ".join(config["head_start_ray_commands"])
    assert "sqlite" not in head and "/home/ray/mlartifacts" not in head
    assert '--backend-store-uri "$MLFLOW_BACKEND_STORE_URI"' in head and ". /home/ray/.cryoray/tracking.env" in head
    assert config["file_mounts"]["/home/ray/.cryoray/tracking.env"] == "~/.cryoray/tracking.env"
    assert any("psycopg2" in c for c in config["head_setup_commands"])
    for name, node in config["available_node_types"].items():
        if name.startswith("gpu."):
            assert node["node_config"]["IamInstanceProfile"]["Arn"].endswith(":instance-profile/ray-autoscaler-v1"), name
