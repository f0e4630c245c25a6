"""One seed on one worker repeats a run exactly: every method's job, run twice with ``train.seed`` 0, reports the
same RESULT metrics bit for bit, and a run with seed 1 changes its training metrics (README, "Reproducibility")."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from cryoray.methods.betagan import BetaGAN
from cryoray.methods.cryo2ssnet import Cryo2SSNet
from cryoray.methods.cryogen2 import CryoGEN2
from cryoray.methods.cryospin import CryoSPIN
from cryoray.methods.reconstruct import KnownPoseReconstruction
from cryoray.methods.robpicker import RobPicker
from cryoray.train.method import Method

pytestmark = pytest.mark.ray

# The smoke runs cut to a few steps and their cheapest evaluation. Two epochs where a method has per-epoch state
# (the seeded file and buffer shuffles of the next epoch, cryoSPIN's switch to auto-decoding).
CHEAP: dict[type[Method[Any]], dict[str, Any]] = {
    KnownPoseReconstruction: {"train": {"epochs": 2, "max_steps_per_epoch": 2}},
    RobPicker: {"train": {"epochs": 1, "max_steps_per_epoch": 2}, "method": {"train_patches_per_epoch": 8, "meta_patches_per_epoch": 8}},
    CryoGEN2: {"train": {"epochs": 1, "max_steps_per_epoch": 2}, "method": {"restore_test_tomograms": False}},
    Cryo2SSNet: {
        "train": {"epochs": 1, "max_steps_per_epoch": 3},
        "method": {"denoiser_pretrain_steps": 1, "eval_images": 16, "alignment_search_level": 0},
    },
    CryoSPIN: {"train": {"epochs": 2, "max_steps_per_epoch": 2}, "method": {"switch_epoch": 1, "align_search_level": 0}},
    BetaGAN: {"train": {"epochs": 1, "max_steps_per_epoch": 3}, "method": {"classical_baselines": []}},
}


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One private local Ray and one MLflow store for every run of the module: a job joins a Ray this process
    started and leaves it running, so the runs do not each pay Ray's start-up and the store's creation."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    ray.shutdown()


@pytest.mark.parametrize("method_type", list(CHEAP), ids=lambda t: t.name)
def test_one_seed_on_one_worker_repeats_every_metric(
    method_type: type[Method[Any]], tracking_uri: str, tmp_path: Path, run_job_in_process: Callable[..., Any]
) -> None:
    def metrics(seed: int, run: str) -> dict[str, float]:
        config = tmp_path / f"{run}.yaml"
        settings = CHEAP[method_type]
        config.write_text(yaml.safe_dump({**settings, "train": {**settings["train"], "seed": seed}}))
        argv = ["--smoke", "--num-workers", "1", "--config", str(config), "--output-dir", str(tmp_path / run),
                "--tracking-uri", tracking_uri]
        return run_job_in_process(method_type(), argv).result["metrics"]

    first, again = metrics(0, "first"), metrics(0, "again")
    assert again == first
