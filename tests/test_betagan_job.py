"""The betagan job end to end (one --smoke run through Ray) and the denoise mode's input checks and batch worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch
from cryoray.io.models import MODEL_FILE, write_model_file
from cryoray.methods.betagan import BetaGANConfig, build_generator
from cryoray.methods.betagan.denoise import DenoiseBatch, load_model, run_denoise
from cryoray.methods.betagan.evaluation import denoise_images
from cryoray.simulate.particles import simulate_particle_stack, write_particle_dataset
from cryoray.simulate.phantom import builtin_phantom

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_smoke_job_trains_scores_and_writes_its_artifacts(tmp_path, result_line):
    output_dir = tmp_path / "run"
    command = [
        sys.executable,
        "jobs/betagan.py",
        "--smoke",
        "--output-dir",
        str(output_dir),
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(command, check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = result_line(done.stdout)
    metrics = result["metrics"]
    assert metrics["test_psnr_denoised"] > metrics["test_psnr_noisy"] + 3.0
    assert metrics["test_ssim_denoised"] > metrics["test_ssim_noisy"]
    for name in ("model", "test_metrics", "denoising_grid", "denoised_stack", "denoised_star"):
        assert Path(result["artifacts"][name]).is_file(), name


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


def _denoise(tiny_model, stack, star, output_dir, capsys) -> tuple[int, str]:
    code = run_denoise(
        ["--model", str(tiny_model), "--stack", str(stack), "--star", str(star), "--output-dir", str(output_dir)]
    )
    return code, capsys.readouterr().err


def test_denoise_refuses_a_star_with_a_different_image_count(tiny_model, user_stack, tmp_path, capsys):
    blocks = starfile.read(user_stack / "particles.star", always_dict=True)
    blocks["particles"] = blocks["particles"].iloc[:7]
    star = user_stack / "short.star"
    starfile.write(blocks, star)
    code, err = _denoise(tiny_model, user_stack / "particles.mrcs", star, tmp_path / "out", capsys)
    assert code == 2
    assert "short.star: rows: expected one row per image" in err and "(10 images), got 7 rows" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_denoise_refuses_a_star_without_a_pixel_size(tiny_model, user_stack, tmp_path, capsys):
    blocks = starfile.read(user_stack / "particles.star", always_dict=True)
    blocks["optics"] = blocks["optics"].drop(columns=["rlnImagePixelSize"])
    star = user_stack / "no_pixel.star"
    starfile.write(blocks, star)
    code, err = _denoise(tiny_model, user_stack / "particles.mrcs", star, tmp_path / "out", capsys)
    assert code == 2
    assert "no_pixel.star: rlnImagePixelSize" in err and len(err.strip().splitlines()) == 1


def test_denoise_refuses_another_pixel_size_and_a_foreign_model(tiny_model, user_stack, tmp_path, capsys):
    blocks = starfile.read(user_stack / "particles.star", always_dict=True)
    blocks["optics"]["rlnImagePixelSize"] = 3.0
    star = user_stack / "pixel3.star"
    starfile.write(blocks, star)
    code, err = _denoise(tiny_model, user_stack / "particles.mrcs", star, tmp_path / "out", capsys)
    assert code == 2 and "rlnImagePixelSize: expected the model's pixel size 6.0" in err
    foreign = write_model_file(tmp_path / "foreign.safetensors", "robpicker", {}, {"config": {}})
    code, err = _denoise(
        foreign, user_stack / "particles.mrcs", user_stack / "particles.star", tmp_path / "out", capsys
    )
    assert code == 2 and "method: expected a betagan model, got robpicker" in err


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
