"""The sweep driver: spec checks that fail before any trial starts (no Ray), concurrency sizing, and a real
smoke sweep of tuning/reconstruct.yaml on a local Ray with ASHA, read back from MLflow and the output files."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import time
from pathlib import Path

import pytest
import ray
import yaml
from cryoray.config import JobConfig
from cryoray.errors import CryorayInputError
from cryoray.methods import METHODS, load_method
from cryoray.methods.reconstruct import KnownPoseReconstruction
from cryoray.tune import run_sweep
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


def _spec_file(tmp_path: Path, edit) -> Path:
    """The real reconstruct spec with one edit, written to a temp file."""
    raw = yaml.safe_load(SPEC.read_text())
    edit(raw)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_registry_resolves_job_names_lazily():
    assert isinstance(load_method("reconstruct"), KnownPoseReconstruction)
    assert all(":" in target for target in METHODS.values())
    with pytest.raises(KeyError, match="reconstruct"):
        load_method("no-such-method")


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda raw: raw.update(num_sample=3), "num_sample"),
        (lambda raw: raw["search_space"].update({"method.learning_rate": {"normal": [0, 1]}}), "search_space.method.learning_rate"),
        (lambda raw: raw["search_space"].update({"method.learning_rate": {"loguniform": [0, 0.1]}}), "search_space.method.learning_rate"),
        (lambda raw: raw["search_space"].update({"method.l2_weight": {"uniform": [1, 1e-3, 4]}}), "search_space.method.l2_weight"),
        (lambda raw: raw.update(mode="maximise"), "mode"),
        (lambda raw: raw["smoke"].update(scheduler={"type": "hyperband"}), "smoke.scheduler.type"),
        (lambda raw: raw.update(job="robpickr"), "job"),
        (lambda raw: raw["base"].update(output_dir="/tmp/x"), "base.output_dir"),
        (lambda raw: raw["search_space"].update({"tracking_uri": {"choice": ["a", "b"]}}), "search_space.tracking_uri"),
    ],
)
def test_a_malformed_spec_is_one_error_naming_the_file_and_field(tmp_path, edit, field):
    path = _spec_file(tmp_path, edit)
    with pytest.raises(CryorayInputError) as caught:
        load_sweep_spec(path)
    assert caught.value.path == str(path)
    assert any(name == field or name.startswith(f"{field}.") for name in caught.value.field.split(", ")), caught.value
    assert str(path) in str(caught.value) and field in str(caught.value)


@pytest.mark.parametrize(
    ("edit", "field", "detail"),
    [
        # A negative step size is a valid range but not a value the method accepts.
        (lambda raw: raw["search_space"].update({"method.learning_rate": {"uniform": [-0.1, 0.1]}}),
         "search_space.method.learning_rate", "method.learning_rate=-0.1"),
        (lambda raw: raw["search_space"].update({"method.learning_rat": {"choice": [0.01]}}),
         "search_space.method.learning_rat", "Extra inputs are not permitted"),
        (lambda raw: raw["search_space"].update({"train.batch_size": {"randint": [0, 64]}}),
         "search_space.train.batch_size", "train.batch_size=0"),
        (lambda raw: raw["base"].update(num_workers=0), "base", "a trial needs a Ray Train worker"),
        (lambda raw: raw["base"]["train"].update(epochs="many"), "base", "train.epochs"),
    ],
)
def test_values_the_method_rejects_fail_before_ray_starts(tmp_path, edit, field, detail):
    path = _spec_file(tmp_path, edit)
    with pytest.raises(CryorayInputError) as caught:
        run_sweep(path, output_dir=tmp_path / "out", tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    assert caught.value.path == str(path) and field in caught.value.field.split(", "), caught.value
    assert detail in str(caught.value)
    assert not ray.is_initialized() and not (tmp_path / "out").exists() and not (tmp_path / "m.db").exists()


def test_the_cli_exits_2_with_one_line_on_bad_input(tmp_path, capsys):
    path = _spec_file(tmp_path, lambda raw: raw.update(metric=None))
    assert _sweep_cli().main([str(path), "--smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cryoray sweep: bad input: {path}: metric")


def test_smoke_merges_its_block_over_the_base():
    spec = load_sweep_spec(SPEC)
    method = KnownPoseReconstruction()
    full = plan_sweep(spec, SPEC, method, smoke=False, num_samples=None)
    smoke = plan_sweep(spec, SPEC, method, smoke=True, num_samples=None)
    assert full.base["dataset"] == "particles-phantom" and full.num_samples == spec.num_samples
    assert smoke.base["dataset"] == method.smoke_dataset and smoke.base["num_workers"] == 1
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
def test_a_smoke_sweep_tracks_every_trial_under_one_parent_run(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "sweep"
    started = time.monotonic()
    code = _sweep_cli().main(
        [str(SPEC), "--smoke", "--output-dir", str(out), "--tracking-uri", uri, "--storage-path", str(tmp_path / "storage")]
    )
    wall_time_s = time.monotonic() - started
    captured = capsys.readouterr()
    print(f"smoke sweep wall time: {wall_time_s:.0f} s")
    assert code == 0, captured.err[-3000:]
    lines = [line for line in captured.out.splitlines() if line.strip()]
    assert lines[-1].startswith("RESULT "), "the RESULT line must be the last line"
    result = json.loads(lines[-1].removeprefix("RESULT "))
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

    client = MlflowClient(uri)
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["cryoray.method"] == "reconstruct"
    assert parent.data.tags["cryoray.sweep_spec"] == str(SPEC) and parent.data.tags["mlflow.source.git.commit"]
    assert parent.data.params["spec.metric"] == "map_correlation" and parent.data.params["smoke"] == "True"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"summary.csv", "best.json"}
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
        history = client.get_metric_history(child.info.run_id, "epoch/map_correlation")
        assert len({m.step for m in history}) == int(row["epochs_run"])
        assert max(history, key=lambda m: m.step).value == pytest.approx(float(row["final_map_correlation"]))


@pytest.mark.parametrize("spec_path", sorted((REPO_ROOT / "tuning").glob("*.yaml")), ids=lambda p: p.name)
@pytest.mark.parametrize("smoke", [False, True])
def test_every_shipped_sweep_spec_validates_against_its_method(spec_path, smoke):
    spec = load_sweep_spec(spec_path)
    method = load_method(spec.job)
    plan = plan_sweep(spec, spec_path, method, smoke, None)
    assert check_search_space(plan, method)
