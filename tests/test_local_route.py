"""The in-process route without Ray: local streams of the methods' specs, ``--num-workers 0`` end to end (learning,
checkpoints in the Ray runner's form, resume), and every module a GPU machine without Ray needs imports without it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from cryoray.config import deep_update, validate_job_config
from cryoray.data.particles import particle_stream
from cryoray.data.recipes import resolve_dataset
from cryoray.data.streams import GeneratedRows, LocalStream, ParquetRows
from cryoray.io.models import read_checkpoint
from cryoray.methods.reconstruct import KnownPoseReconstruction
from cryoray.train.local import run_local

REPO_ROOT = Path(__file__).resolve().parents[1]


def _indices(stream: LocalStream, **options: Any) -> list[int]:
    return [i for b in stream.iter_torch_batches(batch_size=64, **options) for i in b["particle_index"].long().tolist()]


def test_a_parquet_stream_gives_every_row_once_per_epoch_in_a_seeded_order() -> None:
    dataset_dir, manifest = resolve_dataset("particles-smoke")
    spec = particle_stream(dataset_dir, manifest, seed=3)
    stream = LocalStream(spec)
    epochs = [_indices(stream, local_shuffle_buffer_size=256, local_shuffle_seed=epoch) for epoch in range(2)]
    assert all(sorted(epoch) == list(range(manifest.count)) for epoch in epochs)
    assert epochs[0] != epochs[1]
    again = LocalStream(spec)
    assert [_indices(again, local_shuffle_buffer_size=256, local_shuffle_seed=epoch) for epoch in range(2)] == epochs

    batch = next(LocalStream(spec).iter_torch_batches(batch_size=5))
    assert batch["image"].shape == (5, manifest.box_px, manifest.box_px) and batch["rot_deg"].shape == (5,)


def test_a_parquet_stream_filters_limits_and_keeps_the_file_order_when_asked() -> None:
    dataset_dir, manifest = resolve_dataset("particles-smoke")
    spec = particle_stream(dataset_dir, manifest, columns=("image", "particle_index"))
    below = ParquetRows(files=spec.files, columns=spec.columns, below=("particle_index", 300))
    assert sorted(_indices(LocalStream(below))) == list(range(300))
    first = ParquetRows(files=spec.files[:1], columns=spec.columns, shuffle_files=False, limit=70)
    assert _indices(LocalStream(first)) == list(range(70)) == _indices(LocalStream(first))


def test_workers_reading_their_own_parts_get_equal_disjoint_shares_that_change_per_epoch() -> None:
    """``parquet_feed: worker``: three workers' parts of one execution are equal, disjoint and cover every row but
    the remainder (as Ray's equal split); the next execution deals the rows anew; filters and limits apply first."""
    dataset_dir, manifest = resolve_dataset("particles-smoke")
    spec = particle_stream(dataset_dir, manifest, columns=("image", "particle_index"), seed=5)
    assert len(spec.files) > 1  # parts cut across files

    def parts(stream_spec: ParquetRows, execution: int, count: int) -> list[list[int]]:
        return [_indices(LocalStream(stream_spec, first_execution=execution, part=(i, count))) for i in range(count)]

    epoch0, epoch1 = parts(spec, 0, 3), parts(spec, 1, 3)
    for epoch in (epoch0, epoch1):
        assert [len(p) for p in epoch] == [manifest.count // 3] * 3
        seen = [i for p in epoch for i in p]
        assert len(set(seen)) == len(seen) == manifest.count - manifest.count % 3
    assert epoch0 != epoch1 and epoch0 == parts(spec, 0, 3)
    assert [i for p in parts(spec, 0, 1) for i in p] == _indices(LocalStream(spec))  # one part: the whole stream
    below = dataclasses.replace(spec, below=("particle_index", 301), limit=200)
    halves = parts(below, 0, 2)
    assert [len(p) for p in halves] == [100, 100] and all(i < 301 for p in halves for i in p)
    assert sorted(halves[0] + halves[1]) == sorted(_indices(LocalStream(below)))
    with pytest.raises(ValueError, match="part"):
        LocalStream(spec, part=(2, 2))


def _draw(ids: np.ndarray, rng: np.random.Generator, scale: float) -> dict[str, np.ndarray]:
    return {"id": ids, "value": scale * rng.random(len(ids))}


def test_a_generated_stream_repeats_per_seed_and_differs_per_epoch_and_replica() -> None:
    spec = GeneratedRows(n_rows=50, make=_draw, kwargs={"scale": 2.0}, seed=1, rows_per_block=16)

    def values(stream: LocalStream) -> list[float]:
        return [v for b in stream.iter_batches() for v in b["value"].tolist()]

    stream = LocalStream(spec)
    first, second = values(stream), values(stream)
    assert len(first) == 50 and first != second and max(first) <= 2.0
    assert values(LocalStream(spec)) == first
    assert values(LocalStream(spec, replica=1)) != first
    assert values(LocalStream(spec, first_execution=1)) == second  # a resumed run draws the epoch it resumes at
    ids = [i for b in LocalStream(spec).iter_torch_batches(batch_size=8, drop_last=True) for i in b["id"].tolist()]
    assert ids == list(range(48))


def test_an_error_while_reading_ahead_reaches_the_consumer(tmp_path: Path) -> None:
    broken = tmp_path / "part-00000.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(Exception, match="part-00000.parquet"):
        next(LocalStream(ParquetRows(files=(str(broken),), columns=("image",))).iter_torch_batches(batch_size=4))


def _config(tmp_path: Path, epochs: int) -> str:
    path = tmp_path / f"epochs{epochs}.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": epochs, "batch_size": 64}, "method": {"learning_rate": 0.02}}))
    return str(path)


def test_in_process_training_learns_checkpoints_like_the_runner_and_resumes(
    tmp_path: Path, run_job_in_process: Callable[..., Any], fresh_tracking_uri: str
) -> None:
    uri = fresh_tracking_uri
    out = tmp_path / "out"
    common = ["--smoke", "--num-workers", "0", "--output-dir", str(out), "--tracking-uri", uri]
    normal = run_job_in_process(KnownPoseReconstruction(), [*common, "--config", _config(tmp_path, 2)])
    first = normal.result
    assert json.loads((out / "result.json").read_text()) == first
    assert "epoch 1/2 step 10/16 | loss" in normal.err and "epoch 2/2 done in" in normal.err, normal.err
    assert first["metrics"]["map_correlation"] > 0.6 and first["resumed_from_epoch"] is None
    checkpoint = Path(first["checkpoint"])
    assert checkpoint == out / "checkpoints" / first["run_name"] / "epoch_0001"
    saved = read_checkpoint(checkpoint)
    assert saved["method"] == "reconstruct" and saved["epoch"] == 1 and "map" in saved["modules"]

    resume = ["--config", _config(tmp_path, 3), "--run-name", first["run_name"], "--overwrite"]
    quiet = run_job_in_process(KnownPoseReconstruction(), [*common, *resume, "--quiet"])
    second = quiet.result
    assert quiet.err == "" and quiet.out.splitlines()[-1].startswith("RESULT ")  # --quiet: errors and RESULT only
    assert second["resumed_from_epoch"] == 1 and second["checkpoint"].endswith("epoch_0002")
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["epoch_0001", "epoch_0002"]  # checkpoints_to_keep 2
    assert second["metrics"]["map_correlation"] >= first["metrics"]["map_correlation"] - 0.02


# Hides Ray from the interpreter, as on a machine where it is not installed.
def test_the_in_process_route_learns_checkpoints_and_resumes_on_each_device(tmp_path: Path, device: torch.device) -> None:
    """``run_local`` itself (no MLflow, no job script): the route the GPU suite takes, on the CPU and on CUDA."""
    dataset_dir, manifest = resolve_dataset("particles-smoke")
    method = KnownPoseReconstruction()

    def run(epochs: int) -> Any:
        settings = {"train": {"epochs": epochs, "batch_size": 64}, "method": {"learning_rate": 0.02}}
        raw = deep_update(deep_update({"dataset": str(dataset_dir)}, method.default_preset), settings)
        raw |= {"num_workers": 0, "use_gpu": device.type == "cuda", "output_dir": str(tmp_path), "overwrite": True}
        job, config = validate_job_config(raw, method.config_schema, None)
        return run_local(method, job, config, dataset_dir, manifest, "route", None)

    first = run(2)
    assert first.metrics["map_correlation"] > 0.6 and first.resumed_from_epoch is None
    assert first.checkpoint_path is not None and first.checkpoint_path.endswith("route/epoch_0001")
    second = run(3)
    assert second.resumed_from_epoch == 1 and second.checkpoint_path.endswith("route/epoch_0002")
    assert second.metrics["map_correlation"] >= first.metrics["map_correlation"] - 0.02
    saved = read_checkpoint(Path(second.checkpoint_path))
    assert saved["epoch"] == 2 and "map" in saved["modules"]


_WITHOUT_RAY = """
import sys
class _NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _NoRay())
"""

RAY_FREE_MODULES = [
    "cryoray.physics",
    "cryoray.io.mrc",
    "cryoray.io.star",
    "cryoray.io.models",
    "cryoray.simulate",
    "cryoray.nn.unet3d",
    "cryoray.nn.unetpp",
    "cryoray.picking",
    "cryoray.data.streams",
    "cryoray.data.particles",
    "cryoray.data.patches",
    "cryoray.data.subtomograms",
    "cryoray.train.local",
    "cryoray.cli",
    "cryoray.commands",
    *(f"cryoray.methods.{name}" for name in ("robpicker", "cryogen2", "cryo2ssnet", "cryospin", "betagan", "reconstruct")),
    "cryoray.methods.robpicker.predict",
    "cryoray.methods.cryogen2.apply",
    "cryoray.methods.betagan.denoise",
]


def test_the_modules_a_ray_free_machine_needs_import_without_ray_and_a_job_trains_there(tmp_path: Path) -> None:
    imports = "\n".join(f"import {name}" for name in RAY_FREE_MODULES)
    check = f"{_WITHOUT_RAY}\n{imports}\nassert 'ray' not in sys.modules\nprint('imported')"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]

    job = (
        f"{_WITHOUT_RAY}\nimport runpy\nsys.argv = ['reconstruct.py', '--smoke', '--num-workers', '0', '--output-dir',"
        f" {str(tmp_path / 'out')!r}, '--config', {_config(tmp_path, 1)!r}]\n"
        f"runpy.run_path({str(REPO_ROOT / 'jobs' / 'reconstruct.py')!r}, run_name='__main__')"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    done = subprocess.run([sys.executable, "-c", job], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result["metrics"]["map_correlation"] > 0.3 and Path(result["checkpoint"]).is_dir()


def test_the_gpu_suite_trains_every_method_in_process_here_at_its_tiny_scale(tmp_path: Path) -> None:
    """The suite that the lent GPU machine runs (one try there), on this CPU with Ray and MLflow hidden."""
    script = REPO_ROOT / "benchmarks" / "gpu_suite.py"
    hide = _WITHOUT_RAY.replace('name == "ray" or name.startswith("ray.")', 'name.split(".")[0] in ("ray", "mlflow")')
    run = f"{hide}\nimport runpy\nsys.argv = ['gpu_suite.py', '--device', 'cpu', '--scale', 'tiny', '--out', {str(tmp_path)!r}]\n"
    run += f"runpy.run_path({str(script)!r}, run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    rows = json.loads((tmp_path / "gpu_suite.json").read_text())["rows"]
    assert len(rows) == 8 and all(row["steps"] > 0 and None not in row["quality"].values() for row in rows), rows
    assert (tmp_path / "gpu_suite.md").read_text().count("\n| ") == 9
