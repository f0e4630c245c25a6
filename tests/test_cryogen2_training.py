"""CryoGEN-II learns on the smoke tomograms (in-process, the method's own steps), and its apply mode restores new files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cryoray.config import RunnerConfig
from cryoray.data.recipes import resolve_dataset
from cryoray.data.subtomograms import extract_subtomograms
from cryoray.io.mrc import read_mrc, write_mrc
from cryoray.methods.cryogen2 import CryoGEN2, CryoGEN2Config
from cryoray.methods.cryogen2.apply import restore_tiled, run_apply
from cryoray.train.context import TrainContext
from cryoray.train.loop import take_step

STEPS = 90
BATCH = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small 3D convolutions gain nothing from threads, which only contend on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _context(dataset_dir: Path, manifest, epochs: int = 1) -> TrainContext:
    return TrainContext(
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        dataset_dir=dataset_dir,
        manifest=manifest,
        runner=RunnerConfig(epochs=epochs, batch_size=BATCH),
        steps_per_epoch=STEPS,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The masked-loss generator trained for a few dozen steps on the smoke tomograms; scores before and after."""
    torch.manual_seed(0)
    dataset_dir, manifest = resolve_dataset("tomograms-smoke")
    method = CryoGEN2()
    settings = {
        **CryoGEN2.smoke_preset["method"],
        "adversarial": "off",
        "learning_rate": 3e-3,
        "train_subtomograms": STEPS * BATCH,
    }
    config = CryoGEN2Config(**settings)
    ctx = _context(dataset_dir, manifest)
    state = method.setup(config, manifest, ctx)
    before = method.evaluate(state, config, ctx)
    source = method._source(dataset_dir, manifest, config, "train")
    rng = np.random.default_rng(0)
    history = []
    for _ in range(STEPS):
        batch = extract_subtomograms(rng.integers(0, len(source), BATCH), source)
        history.append(take_step(method, state, {"subtomogram": torch.from_numpy(batch["subtomogram"])}, config, ctx))
    after = method.evaluate(state, config, ctx)
    artifacts = method.write_artifacts(state, config, ctx, tmp_path_factory.mktemp("cryogen2"))
    return {
        "before": before,
        "after": after,
        "history": history,
        "model": artifacts["model"],
        "dataset_dir": dataset_dir,
        "manifest": manifest,
    }


def test_a_short_run_improves_the_in_wedge_fsc_over_the_input(trained: dict) -> None:
    history, after = trained["history"], trained["after"]
    first = np.mean([h["masked_measured"] + 2 * h["masked_wedge"] for h in history[:10]])
    last = np.mean([h["masked_measured"] + 2 * h["masked_wedge"] for h in history[-10:]])
    assert last < 0.5 * first, (first, last)
    assert after["val_fsc_wedge_mean"] > after["val_input_fsc_wedge_mean"] + 0.03, after
    assert after["val_fsc_wedge_mean"] > trained["before"]["val_fsc_wedge_mean"] + 0.2
    assert history[0]["learning_rate"] < history[STEPS // 10]["learning_rate"] > history[-1]["learning_rate"]  # warm-up, decay


def test_the_barycenter_gan_step_updates_generator_and_critic() -> None:
    torch.manual_seed(1)
    dataset_dir, manifest = resolve_dataset("tomograms-smoke")
    method = CryoGEN2()
    config = CryoGEN2Config(**CryoGEN2.smoke_preset["method"])
    assert config.adversarial == "barycenter"
    ctx = _context(dataset_dir, manifest, epochs=3)
    state = method.setup(config, manifest, ctx)
    before = {name: [p.detach().clone() for p in module.parameters()] for name, module in state.modules.items()}
    batch = extract_subtomograms(np.arange(BATCH), method._source(dataset_dir, manifest, config, "train"))
    ctx.epoch = 1
    metrics = method.train_step(state, {"subtomogram": torch.from_numpy(batch["subtomogram"])}, config, ctx)
    assert {"masked_measured", "masked_wedge", "adversarial", "critic", "lambda"} <= set(metrics)
    assert metrics["lambda"] == pytest.approx(config.adversarial_weight * 2 / 3)
    assert all(np.isfinite(v) for v in metrics.values())
    for name, module in state.modules.items():
        assert any(not torch.equal(p, q) for p, q in zip(module.parameters(), before[name])), name


def test_tiles_stitch_exactly() -> None:
    class AddOne(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    volume = np.random.default_rng(5).normal(size=(12, 37, 41)).astype(np.float32)  # z shorter than a tile
    restored = restore_tiled(AddOne(), volume, tile_px=16, overlap_px=6, batch_size=5, device=torch.device("cpu"))
    assert restored.shape == volume.shape and np.allclose(restored, volume + 1, atol=1e-5)


def test_apply_restores_user_files_with_their_voxel_size(trained: dict, tmp_path: Path, run_command) -> None:
    entry = next(t for t in trained["manifest"].tomograms if t.split == "test")
    tomogram = read_mrc(trained["dataset_dir"] / entry.tomogram).data
    user_tomogram = write_mrc(tmp_path / "my tomo.mrc", tomogram, 12.5)
    user_cube = write_mrc(tmp_path / "sub_001.mrc", tomogram[8:24, 20:36, 20:36], 12.5)
    out = tmp_path / "restored"
    result = run_command(
        run_apply, ["--model", trained["model"], "--inputs", str(user_tomogram), str(user_cube), "--output-dir", str(out)]
    ).result
    for name, shape in (("my tomo", tomogram.shape), ("sub_001", (16, 16, 16))):
        restored = read_mrc(out / f"{name}_cryogen2.mrc")
        assert restored.data.shape == shape and restored.voxel_size_angstrom == pytest.approx(12.5)
        assert np.isfinite(restored.data).all() and restored.data.std() > 0
    assert result["tile_px"] == 16
