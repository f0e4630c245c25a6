"""`jobs/cryo2ssnet.py --smoke` end to end on a real local Ray: RESULT, artifacts, and the FSC curve in MLflow."""

from __future__ import annotations

import mrcfile
import pytest
import starfile
from cryoray.methods.cryo2ssnet import Cryo2SSNet
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.ray


def test_smoke_job_writes_map_fsc_poses_and_tracks_resolution_per_epoch(tmp_path, run_job_in_process, fresh_tracking_uri) -> None:
    uri = fresh_tracking_uri
    result = run_job_in_process(Cryo2SSNet(), ["--smoke", "--output-dir", str(tmp_path / "out"), "--tracking-uri", uri]).result
    metrics, artifacts = result["metrics"], result["artifacts"]
    assert 0 < metrics["fsc_resolution_0.5_angstrom"] < 1000 and "pose_error_median_deg" in metrics
    with mrcfile.open(artifacts["map"]) as mrc:
        assert mrc.data.shape == (24, 24, 24) and float(mrc.voxel_size.x) == pytest.approx(8.0)
    poses = starfile.read(artifacts["poses"])
    assert len(poses["particles"]) == 1024 and {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"} <= set(poses["particles"].columns)
    assert float(poses["optics"]["rlnImagePixelSize"].iloc[0]) == pytest.approx(8.0)
    assert {"fsc_csv", "fsc_png", "map_aligned", "model"} <= set(artifacts)
    history = MlflowClient(uri).get_metric_history(result["mlflow_run_id"], "fsc_resolution_0.5_angstrom")
    # Two epochs' evaluations, then the final score over every image (RESULT's value) one step later.
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert max(history, key=lambda m: m.step).value == pytest.approx(metrics["fsc_resolution_0.5_angstrom"])
