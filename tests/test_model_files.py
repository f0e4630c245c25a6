"""Model files and checkpoints cannot run code when read: a crafted pickle is refused, its payload never runs.

Every subcommand that takes ``--model`` reads through ``cryoray.io.models``; these tests plant a pickle whose
unpickling would create a marker file and check that the marker never appears (through the CLIs in
test_bad_inputs.py).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from cryoray.errors import CryorayInputError
from cryoray.io.models import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    read_checkpoint,
    read_model,
    write_checkpoint,
    write_model_file,
)
from safetensors.torch import save_file


class _Payload:
    """Unpickling this creates ``marker``: the proof that a loader executed code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _crafted_pickle(path: Path, marker: Path) -> Path:
    torch.save({"method": "robpicker", "config": {}, "segmenter": _Payload(marker)}, path)
    return path


def _module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2))


def test_model_file_round_trip_keeps_weights_and_metadata(tmp_path):
    module = _module()
    metadata = {"config": {"channels": [4, 8]}, "voxel_size_angstrom": 10.0, "species": [{"name": "a", "class_id": 1}]}
    path = write_model_file(tmp_path / MODEL_FILE, "robpicker", {"segmenter": module}, metadata)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MODEL_FILE]  # no temporary file left behind
    model = read_model(str(tmp_path), "robpicker", required=("voxel_size_angstrom",))  # the output folder works too
    assert model.path == path and model.config == {"channels": [4, 8]}
    assert model.metadata["species"] == metadata["species"] and model.metadata["schema_version"] == 1
    state = module.state_dict()
    assert sorted(model.state_dicts["segmenter"]) == sorted(state)
    for key, value in state.items():
        assert torch.equal(model.state_dicts["segmenter"][key], value), key


@pytest.mark.parametrize("name", ["model.pt", MODEL_FILE])
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, name):
    marker = tmp_path / "pwned"
    path = _crafted_pickle(tmp_path / name, marker)
    with pytest.raises(CryorayInputError, match="pickled model files are never loaded"):
        read_model(str(path), "robpicker")
    assert not marker.exists()


def test_foreign_and_incomplete_model_files_are_refused(tmp_path):
    other = write_model_file(tmp_path / "other.safetensors", "betagan", {}, {"config": {}})
    with pytest.raises(CryorayInputError, match="method: expected a robpicker model, got betagan"):
        read_model(str(other), "robpicker")
    incomplete = write_model_file(tmp_path / "incomplete.safetensors", "robpicker", {}, {"config": {}})
    with pytest.raises(CryorayInputError, match="species: expected a robpicker model with species"):
        read_model(str(incomplete), "robpicker", required=("species",))
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(CryorayInputError, match="without cryoray metadata"):
        read_model(str(bare), "robpicker")
    with pytest.raises(CryorayInputError, match="no such file"):
        read_model(str(tmp_path / "missing"), "robpicker")


def test_unserialisable_metadata_writes_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_model_file(tmp_path / MODEL_FILE, "robpicker", {"m": _module()}, {"config": {}, "scale": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_round_trip_with_optimiser_and_scheduler_loads_without_pickled_code(tmp_path):
    module = _module()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    module(torch.randn(2, 1, 5, 5, 5)).sum().backward()
    optimizer.step()
    scheduler.step()
    write_checkpoint(
        tmp_path,
        method="cryogen2",
        config={"job": {}, "method": {"channels": [2]}},
        epoch=3,
        global_step=12,
        modules={"generator": module},
        optimizers={"generator": optimizer},
        schedulers={"generator": scheduler},
        extra={"invert_contrast": True, "tilt_range_deg": [-60.0, 60.0]},
    )
    state = read_checkpoint(tmp_path)
    assert state["epoch"] == 3 and state["global_step"] == 12 and state["extra"]["tilt_range_deg"] == [-60.0, 60.0]
    restored = torch.optim.Adam(_module().parameters(), lr=1e-3)
    restored.load_state_dict(state["optimizers"]["generator"])
    assert restored.state_dict()["param_groups"][0]["lr"] == pytest.approx(5e-4)
    model = read_model(str(tmp_path), "cryogen2", required=("invert_contrast",))  # a checkpoint folder as --model
    assert model.config == {"channels": [2]} and model.metadata["invert_contrast"] is True


def test_crafted_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"schema_version": 2, "method": "cryogen2", "extra": _Payload(marker)}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="loads without code"):
        read_checkpoint(tmp_path)
    with pytest.raises(CryorayInputError, match="a runner checkpoint"):
        read_model(str(tmp_path), "cryogen2")
    assert not marker.exists()


def test_reading_a_model_file_never_unpickles(tmp_path, monkeypatch):
    """A guard against regressions: a model file is read without torch.load or pickle at all."""
    path = write_model_file(tmp_path / MODEL_FILE, "betagan", {"g": _module()}, {"config": {"a": 1}})

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling while reading a model file")

    for owner, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(owner, name, refuse)
    model = read_model(str(path), "betagan")
    assert model.config == {"a": 1} and json.loads(json.dumps(model.metadata))["method"] == "betagan"
