"""`python jobs/cryogen2.py --smoke` end to end through Ray Train: RESULT with the in-wedge FSC, the artifacts,
and the runner's checkpoint usable by the apply mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryoray.io.mrc import read_mrc
from cryoray.methods.cryogen2 import CryoGEN2
from cryoray.methods.cryogen2.apply import run_apply


@pytest.mark.ray
def test_smoke_job_reports_in_wedge_fsc_and_writes_reconstructions(
    tmp_path: Path, run_job_in_process, fresh_tracking_uri: str
) -> None:
    out = tmp_path / "run"
    result = run_job_in_process(CryoGEN2(), ["--smoke", "--output-dir", str(out), "--tracking-uri", fresh_tracking_uri]).result
    metrics = result["metrics"]
    for key in (
        "test_fsc_wedge_mean",
        "test_input_fsc_wedge_mean",
        "test_fsc_mean",
        "test_psnr_db",
        "test_ssim",
        "val_fsc_wedge_mean",
        "train_masked_measured",
        "train_masked_wedge",
        "train_adversarial",
        "train_critic",
    ):
        assert key in metrics, key
    artifacts = result["artifacts"]
    for key in ("model", "fsc_test_png", "fsc_test_csv", "subtomogram_0_slices", "subtomogram_0_output", "tomogram_test_000"):
        assert Path(artifacts[key]).is_file(), key
    restored = read_mrc(artifacts["tomogram_test_000"])
    assert restored.data.shape == (32, 64, 64) and restored.voxel_size_angstrom == pytest.approx(10.0)
    # the Ray Train checkpoint folder is a model for the apply mode too
    code = run_apply(
        ["--model", result["checkpoint"], "--inputs", artifacts["subtomogram_0_input"], "--output-dir", str(tmp_path / "applied")]
    )
    assert code == 0 and (tmp_path / "applied" / "test_000_input_cryogen2.mrc").is_file()
