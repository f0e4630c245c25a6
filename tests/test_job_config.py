"""Bad job input fails before any work with one sentence naming the file and every problem."""

import json

import pytest
import torch
import yaml
from cryoray.cli import run_job
from cryoray.methods.reconstruct import KnownPoseReconstruction


def test_all_config_problems_are_named_at_once(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"train": {"epochs": -1, "bogus": 1}, "method": {"learning_rate": "fast"}, "colour": "red"}))
    code = run_job(KnownPoseReconstruction(), ["--config", str(config), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    for expected in (str(config), "train.epochs", "train.bogus", "method.learning_rate", "colour"):
        assert expected in err, expected


def test_a_finished_output_dir_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text(json.dumps({"mine": True}))
    code = run_job(KnownPoseReconstruction(), ["--smoke", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--overwrite" in err and "result.json" in err
    assert json.loads((out / "result.json").read_text()) == {"mine": True}


def test_an_unknown_dataset_lists_the_recipes(tmp_path, capsys):
    code = run_job(KnownPoseReconstruction(), ["--dataset", "no-such-set", "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no-such-set" in err and "particles-smoke" in err


def test_a_yaml_that_is_not_a_mapping_is_refused(tmp_path, capsys):
    config = tmp_path / "list.yaml"
    config.write_text("- 1\n- 2\n")
    code = run_job(KnownPoseReconstruction(), ["--config", str(config), "--output-dir", str(tmp_path / "o")])
    assert code == 2 and "list.yaml" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_gpus_a_local_machine_lacks_fails_at_once(tmp_path, capsys):
    code = run_job(KnownPoseReconstruction(), ["--smoke", "--use-gpu", "--num-workers", "1", "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--use-gpu: expected 1 GPU(s)" in err.splitlines()[-1]  # Ray may print before it
