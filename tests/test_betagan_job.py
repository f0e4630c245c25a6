"""The betagan job end to end (one --smoke run through Ray Train) and the denoise mode's batch worker (its input checks are
in test_bad_inputs.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cryoray.io.models import MODEL_FILE, write_model_file
from cryoray.methods.betagan import BetaGAN, BetaGANConfig, build_generator
from cryoray.methods.betagan.denoise import DenoiseBatch, load_model
from cryoray.methods.betagan.evaluation import denoise_images
from cryoray.simulate.particles import simulate_particle_stack, write_particle_dataset
from cryoray.simulate.phantom import builtin_phantom
from mlflow.tracking import MlflowClient


@pytest.mark.ray
def test_smoke_job_trains_scores_and_writes_its_artifacts(tmp_path, run_job_in_process, monkeypatch, fresh_tracking_uri):
    uri = fresh_tracking_uri
    argv = ["--smoke", "--output-dir", str(tmp_path / "run"), "--tracking-uri", uri, "--register-model", "denoiser"]
    result = run_job_in_process(BetaGAN(), argv).result
    metrics = result["metrics"]
    assert metrics["test_psnr_denoised"] > metrics["test_psnr_noisy"] + 3.0
    assert metrics["test_ssim_denoised"] > metrics["test_ssim_noisy"]
    for name in ("model", "test_metrics", "denoising_grid", "denoised_stack", "denoised_star"):
        assert Path(result["artifacts"][name]).is_file(), name

    # The model is an MLflow logged model of the run with its physical metadata, and version 1 of "denoiser":
    # models:/ references resolve to the same safetensors file (weights and metadata, nothing executable).
    client = MlflowClient(uri)
    run = client.get_run(result["mlflow_run_id"])
    (logged,) = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert logged.name == "betagan" and float(logged.params["pixel_size_angstrom"]) > 0
    assert client.get_model_version("denoiser", "1").source == logged.artifact_location
    assert client.get_run(result["mlflow_run_id"]).data.tags["cryoray.registered_model"] == "models:/denoiser/1"
    client.set_registered_model_alias("denoiser", "champion", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for reference in ("models:/denoiser/1", "models:/denoiser@champion"):
        model = load_model(reference)
        assert model.path.name == MODEL_FILE and model.metadata == load_model(result["artifacts"]["model"]).metadata


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = BetaGANConfig(channels=[4, 8], residual_blocks=1)
    path = tmp_path_factory.mktemp("model") / MODEL_FILE
    metadata = {"config": config.model_dump(mode="json"), "pixel_size_angstrom": 6.0, "box_px": 16}
    return write_model_file(path, "betagan", {"generator": build_generator(config)}, metadata)


@pytest.fixture(scope="module")
def user_stack(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user")
    write_particle_dataset(folder, simulate_particle_stack(builtin_phantom(16), 6.0, 10, snr_linear=0.5, seed=1))
    return folder


def test_denoise_batch_worker_returns_each_image_under_its_own_index(tiny_model, user_stack):
    model = load_model(str(tiny_model))
    worker = DenoiseBatch(model, str(user_stack / "particles.mrcs"), 6.0, use_gpu=False)
    index = np.array([7, 2, 5])
    out = worker({"id": index})
    generator = build_generator(BetaGANConfig.model_validate(model.config))
    generator.load_state_dict(model.state_dicts["generator"])
    expected = denoise_images(generator, np.asarray(worker.stack.data[[7, 2, 5]], dtype=np.float32))
    np.testing.assert_array_equal(out["id"], index)
    np.testing.assert_allclose(out["denoised"], expected, rtol=1e-5, atol=1e-5)
