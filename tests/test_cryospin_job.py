"""cryoSPIN end to end on a real local Ray with 2 workers: the smoke job learns a map (FSC against ground truth
better than the initial volume's), writes its artifacts, and a resumed run takes the sharded pose table back
from the checkpoint row for row (per-image Adam step counts continue instead of restarting)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from cryoray.data.recipes import resolve_dataset
from cryoray.io.models import read_sharded_checkpoint
from cryoray.methods.cryospin import CryoSPIN
from cryoray.methods.cryospin.networks import HartleyVolume
from cryoray.methods.single_particle import evaluate_reconstruction
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.ray


def _tables(checkpoint_dir: Path) -> dict[int, int]:
    """particle_index -> per-row Adam step count, merged over the rank files of one checkpoint."""
    steps: dict[int, int] = {}
    files = sorted(checkpoint_dir.glob("sharded-rank*-of-00002.pt"))
    assert len(files) == 2, sorted(p.name for p in checkpoint_dir.iterdir())
    for path in files:
        table = read_sharded_checkpoint(path)["pose_table"]
        assert bool(table["initialized"].all())
        steps.update(zip(table["particle_index"].tolist(), table["adam_steps"].tolist()))
    return steps


def test_smoke_run_learns_and_resumes_with_its_pose_table(tmp_path, run_job_in_process, fresh_tracking_uri):
    uri = fresh_tracking_uri
    storage = str(tmp_path / "checkpoints")
    settings = {"train": {"epochs": 3}, "method": {"switch_epoch": 2}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    common = ["--smoke", "--num-workers", "2", "--config", str(config), "--tracking-uri", uri, "--storage-path", storage]
    first = run_job_in_process(
        CryoSPIN(), [*common, "--output-dir", str(tmp_path / "first"), "--run-name", "cryospin-resume"]
    ).result

    dataset_dir, manifest = resolve_dataset("particles-smoke")
    reference = manifest.ground_truth_map(dataset_dir)
    initial = HartleyVolume(manifest.box_px, 0.1, torch.Generator().manual_seed(0)).density()
    initial_resolution = evaluate_reconstruction(initial, reference, manifest.voxel_size_angstrom, search_level=1)
    resolution = first["metrics"]["fsc_resolution_0.5_angstrom"]
    assert resolution < 0.7 * initial_resolution.metrics["fsc_resolution_0.5_angstrom"], (resolution, initial_resolution)
    assert first["metrics"]["auto_decoding"] == 1.0
    assert set(first["artifacts"]) >= {"map", "map_aligned", "fsc_csv", "fsc_png", "poses", "head_usage_csv", "head_usage_png"}
    assert len(Path(first["artifacts"]["poses"]).read_text().strip().splitlines()) > manifest.count

    client = MlflowClient(uri)
    history = client.get_metric_history(first["mlflow_run_id"], "pose_error_median_deg")
    # Three epochs' evaluations, then the final score over every image (RESULT's value) one step later.
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
    assert max(history, key=lambda m: m.step).value == first["metrics"]["pose_error_median_deg"]
    assert client.get_metric_history(first["mlflow_run_id"], "head_0_win_fraction")

    # Epoch 2 was the first auto-decoding epoch: every image visited once = 5 pose steps.
    run_dir = Path(storage) / "cryospin-resume"
    after_first = _tables(run_dir / "epoch_0002")
    assert sorted(after_first) == list(range(manifest.count)) and set(after_first.values()) == {5}

    settings["train"]["epochs"] = 4
    config.write_text(yaml.safe_dump(settings))
    second = run_job_in_process(
        CryoSPIN(), [*common, "--output-dir", str(tmp_path / "second"), "--run-name", "cryospin-resume"]
    ).result
    assert second["resumed_from_epoch"] == 2
    after_second = _tables(run_dir / "epoch_0003")
    assert set(after_second.values()) == {10}, "the resumed run did not continue the saved pose table"
