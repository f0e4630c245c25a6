"""On a running Ray: bad input that only shows inside a Ray task or a Ray Data function still ends as exit 2 with the
error's own sentence last on stderr (never the remote traceback), and ``betagan denoise`` writes a complete stack,
STAR and result.json, leaving no temporary file behind, then refuses to run again into the same folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray
import ray.data
import starfile
from cryoray.errors import CryorayInputError
from cryoray.io.models import MODEL_FILE, write_model_file
from cryoray.io.mrc import read_mrc
from cryoray.io.star import read_particles_star
from cryoray.methods.betagan import BetaGANConfig, build_generator
from cryoray.methods.betagan.denoise import run_denoise
from cryoray.session import connect_ray, run_tool
from cryoray.simulate.particles import simulate_particle_stack, write_particle_dataset
from cryoray.simulate.phantom import builtin_phantom

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray():
    started = connect_ray()
    yield
    if started:
        ray.shutdown()


def _bad_pixels(*args: object) -> None:
    raise CryorayInputError("stack.mrcs", "data", "finite values only", "1 NaN/Inf values, the first at index (4, 2, 2)")


def test_an_input_error_in_a_task_or_a_data_function_is_exit_2_and_its_own_sentence(local_ray, capsys) -> None:
    task = ray.remote(_bad_pixels)
    actions = {
        "task": lambda: ray.get(task.remote()),
        "data": lambda: ray.data.range(4).map_batches(_bad_pixels).materialize(),
    }
    for name, action in actions.items():
        capsys.readouterr()
        assert run_tool(name, action) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]  # Ray Data logs its own lines before it
        assert (
            last == f"{name}: stack.mrcs: data: expected finite values only, got 1 NaN/Inf values, the first at index (4, 2, 2)"
        )


def test_denoise_writes_complete_outputs_and_refuses_a_second_run(local_ray, tmp_path: Path, capsys) -> None:
    config = BetaGANConfig(channels=[4, 8], residual_blocks=1)
    metadata = {"config": config.model_dump(mode="json"), "pixel_size_angstrom": 6.0, "box_px": 16}
    model = write_model_file(tmp_path / MODEL_FILE, "betagan", {"generator": build_generator(config)}, metadata)
    write_particle_dataset(tmp_path / "user", simulate_particle_stack(builtin_phantom(16), 6.0, 10, snr_linear=0.5, seed=1))
    out = tmp_path / "denoised"
    argv = ["--model", str(model), "--stack", str(tmp_path / "user" / "particles.mrcs")]
    argv += ["--star", str(tmp_path / "user" / "particles.star"), "--output-dir", str(out), "--batch-size", "4"]
    assert run_denoise(argv) == 0, capsys.readouterr().err[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["particles_denoised.mrcs", "particles_denoised.star", "result.json"]
    stack = read_mrc(out / "particles_denoised.mrcs")
    assert stack.data.shape == (10, 16, 16) and np.isfinite(stack.data).all() and stack.voxel_size_angstrom == 6.0
    assert len(read_particles_star(out / "particles_denoised.star").particles) == 10
    # Every column of the source (poses, CTF, whatever else) is kept; only the image names point at the new stack.
    source, denoised = starfile.read(tmp_path / "user" / "particles.star"), starfile.read(out / "particles_denoised.star")
    assert {"rlnAngleRot", "rlnDefocusU"} <= set(source["particles"].columns) <= set(denoised["particles"].columns)
    for column in source["particles"].columns.drop("rlnImageName"):
        np.testing.assert_array_equal(denoised["particles"][column].to_numpy(), source["particles"][column].to_numpy(), column)
    assert denoised["particles"]["rlnImageName"].str.endswith("@particles_denoised.mrcs").all()
    assert json.loads((out / "result.json").read_text())["images"] == 10
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert run_denoise(argv) == 2
    assert "result.json exists" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
