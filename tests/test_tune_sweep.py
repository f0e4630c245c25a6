"""The sweep driver: concurrency sizing, the shipped specs, and a real smoke sweep of tuning/reconstruct.yaml on a
local Ray with ASHA, read back from MLflow and the output files. Specs that fail before any trial starts (no Ray) are
in test_bad_inputs.py."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest
from cryoray.cli import job_settings
from cryoray.config import JobConfig, validate_job_config
from cryoray.errors import CryorayInputError
from cryoray.methods import METHODS, load_method
from cryoray.methods.parsers import job_parser
from cryoray.methods.reconstruct import KnownPoseReconstruction
from cryoray.tune.resources import trial_concurrency
from cryoray.tune.spec import check_search_space, load_sweep_spec, plan_sweep
from mlflow.tracking import MlflowClient

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEC = REPO_ROOT / "tuning" / "reconstruct.yaml"


def _sweep_cli():
    """tuning/sweep.py as a module (tuning/ is not a package)."""
    module_spec = importlib.util.spec_from_file_location("tuning_sweep", REPO_ROOT / "tuning" / "sweep.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_the_registry_resolves_job_names_lazily():
    assert isinstance(load_method("reconstruct"), KnownPoseReconstruction)
    assert all(":" in entry.cls for entry in METHODS.values())
    with pytest.raises(KeyError, match="reconstruct"):
        load_method("no-such-method")


def test_smoke_merges_its_block_over_the_base():
    spec = load_sweep_spec(SPEC)
    method = KnownPoseReconstruction()
    full = plan_sweep(spec, SPEC, method, smoke=False, num_samples=None)
    smoke = plan_sweep(spec, SPEC, method, smoke=True, num_samples=None)
    assert full.base["dataset"] == "particles-phantom" and full.num_samples == spec.num_samples
    assert smoke.base["dataset"] == METHODS["reconstruct"].smoke_dataset and smoke.base["num_workers"] == 1
    assert smoke.base["train"]["batch_size"] == full.base["train"]["batch_size"]  # kept from base
    assert smoke.num_samples == spec.smoke.num_samples and smoke.scheduler.grace_period_epochs == 1
    assert plan_sweep(spec, SPEC, method, smoke=True, num_samples=7).num_samples == 7


def test_concurrency_fits_the_cluster_locally_and_warns_on_a_joined_one(capsys):
    def job(num_workers: int, cpus: float, gpu: bool = False) -> JobConfig:
        return JobConfig(dataset="d", output_dir="o", num_workers=num_workers, use_gpu=gpu, train={"cpus_per_worker": cpus})

    two_cpus = {"CPU": 2.0}
    # 0.1 trial driver + 0.25 worker per trial; 1 CPU stays free for Ray Data.
    assert trial_concurrency(None, [job(1, 0.25)], two_cpus, joined_cluster=False) == 2
    assert trial_concurrency(4, [job(1, 0.25)], two_cpus, joined_cluster=False) == 2
    assert "max_concurrent_trials=4" in capsys.readouterr().err
    assert trial_concurrency(None, [job(1, 0.25), job(2, 0.5)], two_cpus, joined_cluster=False) == 1  # largest edge
    assert trial_concurrency(4, [job(2, 1.0, gpu=True)], {"CPU": 64, "GPU": 4}, joined_cluster=False) == 2
    assert trial_concurrency(8, [job(2, 1.0, gpu=True)], {"CPU": 6, "GPU": 0}, joined_cluster=True) == 8
    assert "autoscaler" in capsys.readouterr().err
    with pytest.raises(CryorayInputError, match="GPUs per trial"):  # would wait forever on this machine
        trial_concurrency(None, [job(1, 0.5, gpu=True)], two_cpus, joined_cluster=False)


@pytest.mark.ray
@pytest.mark.system
def test_a_smoke_sweep_tracks_every_trial_under_one_parent_run(tmp_path, run_command):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "sweep"
    argv = [str(SPEC), "--smoke", "--output-dir", str(out), "--tracking-uri", uri, "--storage-path", str(tmp_path / "storage")]
    result = run_command(_sweep_cli().main, argv).result
    spec = load_sweep_spec(SPEC)

    with (out / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == spec.smoke.num_samples == result["trials"]
    assert len({row["trial_id"] for row in rows}) == len(rows)
    for row in rows:
        assert row["status"] in ("FINISHED", "KILLED"), row
        assert math.isfinite(float(row["final_map_correlation"])) and math.isfinite(float(row["best_map_correlation"]))
        assert 1 <= int(row["epochs_run"]) <= 2 and float(row["wall_time_s"]) > 0
        assert 1e-3 <= float(row["method.learning_rate"]) <= 0.1

    best = json.loads((out / "best.json").read_text())
    assert best["value"] == max(float(row["final_map_correlation"]) for row in rows) == result["best_value"]
    best_row = next(row for row in rows if row["trial_id"] == best["trial_id"])
    assert best["child_run_id"] == best_row["child_run_id"] == result["best_child_run_id"]
    assert best["job_config"]["method"]["learning_rate"] == pytest.approx(float(best_row["method.learning_rate"]))
    assert Path(best["checkpoint_path"]).is_dir() and str(tmp_path / "storage") in best["checkpoint_path"]
    assert result["summary"] == str(out / "summary.csv") and result["best"] == str(out / "best.json")

    # best.yaml is the winner's job config alone: the job's --config takes it unchanged.
    assert result["best_config"] == str(out / "best.yaml")
    method = KnownPoseReconstruction()
    args = job_parser(method.name).parse_args(["--config", result["best_config"]])
    job, method_config = validate_job_config(job_settings(method, args), method.config_schema, args.config)
    assert method_config.learning_rate == pytest.approx(best["job_config"]["method"]["learning_rate"])
    assert job.train.epochs == best["job_config"]["train"]["epochs"] and job.dataset == best["job_config"]["dataset"]

    client = MlflowClient(uri)
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["cryoray.method"] == "reconstruct"
    assert parent.data.tags["cryoray.sweep_spec"] == str(SPEC) and parent.data.tags["mlflow.source.git.commit"]
    assert parent.data.params["spec.metric"] == "map_correlation" and parent.data.params["smoke"] == "True"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"summary.csv", "best.json", "best.yaml"}
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == len(rows)
    by_id = {row["child_run_id"]: row for row in rows}
    for child in children:
        row = by_id[child.info.run_id]
        assert child.info.status == row["status"], (child.info.status, row)
        assert child.data.tags["cryoray.trial_id"] == row["trial_id"]
        assert float(child.data.params["method.learning_rate"]) == pytest.approx(float(row["method.learning_rate"]))
        history = client.get_metric_history(child.info.run_id, "map_correlation")
        assert len({m.step for m in history}) == int(row["epochs_run"])
        assert max(history, key=lambda m: m.step).value == pytest.approx(float(row["final_map_correlation"]))


@pytest.mark.parametrize("spec_path", sorted((REPO_ROOT / "tuning").glob("*.yaml")), ids=lambda p: p.name)
@pytest.mark.parametrize("smoke", [False, True])
def test_every_shipped_sweep_spec_validates_against_its_method(spec_path, smoke):
    spec = load_sweep_spec(spec_path)
    method = load_method(spec.job)
    plan = plan_sweep(spec, spec_path, method, smoke, None)
    assert check_search_space(plan, method)
