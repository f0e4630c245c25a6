"""The generic runner end to end on a real local Ray: DDP learning, MLflow read-back, the non-finite guard and
a dead tracking server. A lost worker (its whole node killed) and the resume from the last checkpoint are in
tests/test_two_nodes.py; bad configuration is in tests/test_bad_inputs.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from cryoray.io.mrc import read_mrc
from cryoray.methods.reconstruct import KnownPoseReconstruction
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.ray


def _config(tmp_path: Path, settings: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def test_two_workers_reconstruct_the_map_and_mlflow_holds_the_run(tmp_path, run_job_in_process, fresh_tracking_uri):
    """The workers read their own parts of the training shards here (``parquet_feed: worker``); the cryoSPIN job
    test trains on Ray Data's split."""
    uri = fresh_tracking_uri
    train = {"epochs": 5, "batch_size": 64, "parquet_feed": "worker"}
    config = _config(tmp_path, {"train": train, "method": {"learning_rate": 0.02}})
    outcome = run_job_in_process(
        KnownPoseReconstruction(),
        ["--smoke", "--num-workers", "2", "--config", config, "--output-dir", str(tmp_path / "out"), "--tracking-uri", uri],
    )
    result = outcome.result
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == result
    # The console: rank 0's lines (one per epoch, with the key metric), none of Ray Train's report dicts.
    epoch_lines = [line for line in outcome.err.splitlines() if " done in " in line]
    assert len(epoch_lines) == 5 and all("map_correlation" in line for line in epoch_lines), outcome.err[-2000:]
    assert "samples/s" in outcome.err and "TrainingReport" not in outcome.err and "Reporting training result" not in outcome.err

    client = MlflowClient(uri)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "5" and run.data.params["num_workers"] == "2"
    assert run.data.params["train.parquet_feed"] == "worker"
    assert run.data.tags["cryoray.method"] == "reconstruct" and run.data.tags["cryoray.dataset"] == "particles-smoke"
    assert run.data.tags["mlflow.source.name"].startswith("jobs/reconstruct.py --smoke --num-workers 2")
    assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.type"] in ("LOCAL", "JOB")
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    loss = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train_data_mse"), key=lambda m: m.step)]
    correlation = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "map_correlation"), key=lambda m: m.step)]
    assert len(loss) == 5 and loss[-1] < 0.8 * loss[0], loss
    assert correlation[-1] > correlation[0] + 0.2 and correlation[-1] > 0.6, correlation
    assert {a.path for a in client.list_artifacts(run.info.run_id, "outputs")} >= {
        "outputs/map.mrc",
        "outputs/fsc.csv",
        "outputs/fsc.png",
    }

    density = read_mrc(result["artifacts"]["map"])
    assert density.voxel_size_angstrom == pytest.approx(8.0) and density.data.shape == (24, 24, 24)


class _DivergingReconstruction(KnownPoseReconstruction):
    """Turns the data term into NaN from the third step on, as a diverging model would."""

    def train_step(self, state, batch, config, ctx):
        if ctx.global_step >= 2:
            batch = {**batch, "image": batch["image"] * torch.nan}
        return super().train_step(state, batch, config, ctx)


def test_a_non_finite_loss_stops_before_the_step_and_names_the_term(tmp_path, run_job_in_process, fresh_tracking_uri):
    outcome = run_job_in_process(
        _DivergingReconstruction(),
        [
            "--smoke",
            "--num-workers",
            "0",
            "--output-dir",
            str(tmp_path / "out"),
            "--tracking-uri",
            fresh_tracking_uri,
        ],
        expect_success=False,
    )
    assert outcome.code == 1
    message = outcome.err.strip().splitlines()[-1]
    assert "'data_mse'" in message and "step 2" in message and "before the optimizer step" in message
    assert not (tmp_path / "out" / "result.json").exists()


def test_a_dead_tracking_server_is_reported_and_training_goes_on(tmp_path, run_job_in_process):
    config = _config(tmp_path, {"train": {"epochs": 1, "max_steps_per_epoch": 2}})
    outcome = run_job_in_process(
        KnownPoseReconstruction(),
        [
            "--smoke",
            "--num-workers",
            "0",
            "--config",
            config,
            "--output-dir",
            str(tmp_path / "out"),
            "--tracking-uri",
            "http://127.0.0.1:9",
        ],
    )
    result = outcome.result
    assert "unavailable" in outcome.err and "training continues" in outcome.err
    assert result["mlflow_run_id"] is None and Path(result["artifacts"]["map"]).is_file()
