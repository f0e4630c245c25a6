"""The catalogue of malformed input, for every command: the six training jobs, ``robpicker predict``, ``cryogen2 apply``,
``betagan denoise``, ``datasets/build.py`` (recipes, RELION import, tomogram import) and ``tuning/sweep.py``.

Each case must be refused on the driver before Ray starts (``ray.init`` raises in this module), with exit 2 and one
stderr line naming the file (or flag) and the field, no traceback, and every file that existed before left as it was
(same listing, same checksums, no new empty folder). The input files are written once per module with the project's
own writers, then broken the way users break them (truncated, NaN pixels, a text file, a header without voxel size).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import pytest
import ray
import starfile
import torch
import yaml
from cryoray.cli import run_job
from cryoray.io.manifest import DatasetManifest, ShardEntry, TomogramEntry, write_manifest
from cryoray.io.models import MODEL_FILE, write_model_file
from cryoray.io.mrc import write_mrc
from cryoray.io.star import write_coordinates
from cryoray.methods import load_method
from cryoray.methods.betagan import BetaGANConfig, build_generator
from cryoray.methods.betagan.denoise import run_denoise
from cryoray.methods.cryogen2.apply import run_apply
from cryoray.methods.robpicker.predict import run_predict
from cryoray.nn.unetpp import UNetPlusPlus3d
from cryoray.simulate.particles import simulate_particle_stack, write_particle_dataset
from cryoray.simulate.phantom import builtin_phantom

REPO_ROOT = Path(__file__).resolve().parents[1]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
Files = dict[str, Path]


def _script(relative: str) -> Any:
    """``datasets/build.py`` or ``tuning/sweep.py`` as a module (those folders are not packages)."""
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_").removesuffix(".py"), REPO_ROOT / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "predict": run_predict,
    "apply": run_apply,
    "denoise": run_denoise,
    "build": _script("datasets/build.py").main,
    "sweep": _script("tuning/sweep.py").main,
}


# ----- the input files, written once ---------------------------------------------------------------------------------


def _patch_mrc(path: Path, index: tuple[int, ...], value: float) -> Path:
    """Put one bad value into a file the project wrote (its writer refuses NaN/Inf)."""
    with mrcfile.open(path, mode="r+") as mrc:
        mrc.data[index] = value
    return path


def _truncate(path: Path, missing_bytes: int = 700) -> Path:
    path.write_bytes(path.read_bytes()[:-missing_bytes])
    return path


def _particle_folder(folder: Path, box_px: int = 16) -> Path:
    write_particle_dataset(folder, simulate_particle_stack(builtin_phantom(box_px), 6.0, 10, snr_linear=0.5, seed=1))
    return folder


def _star_variant(source: Path, target: Path, edit: Callable[[dict[str, pd.DataFrame]], None]) -> Path:
    blocks = starfile.read(source, always_dict=True)
    edit(blocks)
    starfile.write(blocks, target)
    return target


def _extra_rows(blocks: dict[str, pd.DataFrame]) -> None:
    """Two more rows than the stack holds: images 11 and 12 of a 10-image stack."""
    extra = blocks["particles"].iloc[:2].copy()
    extra["rlnImageName"] = ["000011@particles.mrcs", "000012@particles.mrcs"]
    blocks["particles"] = pd.concat([blocks["particles"], extra], ignore_index=True)


def _fake_dataset(
    folder: Path, kind: str, columns: list[str], provenance: dict[str, Any], tomograms: list[TomogramEntry] | None = None
) -> Path:
    """A dataset folder as the driver sees it: a manifest and the (empty) files it lists; refusals read nothing else."""
    tomograms = tomograms or []
    listed = ["shard-00000.parquet"]
    listed += [rel for t in tomograms for rel in (t.tomogram, t.particles, t.annotations, *t.labels.values())]
    for rel in listed:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).touch()
    manifest = DatasetManifest(
        name=folder.name,
        kind=kind,
        voxel_size_angstrom=6.0,
        box_px=16,
        count=8,
        shards=[ShardEntry(path="shard-00000.parquet", count=8)],
        columns={column: column for column in columns},
        provenance=provenance,
        tomograms=tomograms,
    )
    write_manifest(folder, manifest)
    return folder


def _tomogram_entry(name: str, split: str) -> TomogramEntry:
    return TomogramEntry(
        name=name,
        split=split,
        tomogram=f"tomograms/{name}.mrc",
        shape_zyx=[16, 16, 16],
        particles=f"particles/{name}.csv",
        annotations=f"particles/{name}_annotations.csv",
        labels={"sphere": f"labels/{name}_sphere.mrc"},
    )


class _Payload:
    """Unpickling this creates ``marker`` in the inputs folder: the snapshot of that folder would show it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return Path.touch, (self.marker,)


def _models(root: Path) -> Files:
    torch.manual_seed(0)
    species = [{"class_id": 1, "name": "ball", "size_group": "small"}]
    robpicker = {"config": {"tolerance_px": 2.0}, "num_classes": 2, "species": species, "voxel_size_angstrom": 10.0}
    betagan_config = BetaGANConfig(channels=[4, 8], residual_blocks=1)
    betagan = {"config": betagan_config.model_dump(mode="json"), "pixel_size_angstrom": 6.0, "box_px": 16}
    cryogen2 = {"config": {"channels": [4, 8], "cube_px": 16, "inference_overlap_px": 4}, "invert_contrast": False}
    generator = {"generator": build_generator(betagan_config)}
    (root / "empty_run").mkdir()
    torch.save({"method": "robpicker", "config": {}, "weights": _Payload(root / "pwned")}, root / "model.pt")
    return {
        "robpicker_model": write_model_file(root / "robpicker" / MODEL_FILE, "robpicker", {}, robpicker),
        "robpicker_no_species": write_model_file(
            root / "no_species.safetensors", "robpicker", {}, {k: v for k, v in robpicker.items() if k != "species"}
        ),
        "betagan_model": write_model_file(root / "betagan" / MODEL_FILE, "betagan", generator, betagan),
        "betagan_no_box": write_model_file(
            root / "no_box.safetensors", "betagan", generator, {k: v for k, v in betagan.items() if k != "box_px"}
        ),
        "cryogen2_model": write_model_file(
            root / "cryogen2" / MODEL_FILE, "cryogen2", {"generator": UNetPlusPlus3d([4, 8])}, cryogen2
        ),
        "pickled_model": root / "model.pt",
        "empty_run": root / "empty_run",
    }


def _volumes(root: Path) -> Files:
    tomogram = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    files = {name: write_mrc(root / f"{name}.mrc", tomogram, 10.0) for name in ("tomo", "trunc", "nan", "inf", "novoxel")}
    _truncate(files["trunc"])
    _patch_mrc(files["nan"], (3, 4, 5), np.nan)
    _patch_mrc(files["inf"], (0, 0, 1), np.inf)
    with mrcfile.open(files["novoxel"], mode="r+") as mrc:
        mrc.voxel_size = 0.0
    files["twin"] = write_mrc(root / "twin" / "tomo.mrc", tomogram, 10.0)
    files["image"] = write_mrc(root / "image.mrc", tomogram[0], 10.0)
    files["text"] = root / "text.mrc"
    files["text"].write_text("not an MRC file, just some notes\n" * 100)
    files["folder"] = root / "folder.mrc"
    files["folder"].mkdir()
    truth = root / "truth_no_z.csv"
    truth.write_text("x,y,class\n1,2,1\n")
    files["truth_no_z"] = truth
    return files


def _particles(root: Path) -> Files:
    ok = _particle_folder(root / "stack_ok")
    star = ok / "particles.star"
    nan = _particle_folder(root / "stack_nan")
    _patch_mrc(nan / "particles.mrcs", (4, 8, 8), np.nan)
    trunc = _particle_folder(root / "stack_trunc")
    _truncate(trunc / "particles.mrcs")

    def drop(block: str, *columns: str) -> Callable[[dict[str, pd.DataFrame]], None]:
        return lambda blocks: blocks.__setitem__(block, blocks[block].drop(columns=list(columns)))

    def set_optics(column: str, value: float) -> Callable[[dict[str, pd.DataFrame]], None]:
        return lambda blocks: blocks["optics"].__setitem__(column, value)

    text = root / "text.star"
    text.write_text("this is not a STAR file\n" * 20)
    return {
        "stack": ok / "particles.mrcs",
        "star": star,
        "short_star": _star_variant(star, ok / "short.star", lambda b: b.__setitem__("particles", b["particles"].iloc[:7])),
        "no_pixel_star": _star_variant(star, ok / "no_pixel.star", drop("optics", "rlnImagePixelSize")),
        "pixel3_star": _star_variant(star, ok / "pixel3.star", set_optics("rlnImagePixelSize", 3.0)),
        "no_ctf_star": _star_variant(
            star, ok / "no_ctf.star", drop("particles", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
        ),
        "box20_star": _star_variant(star, ok / "box20.star", set_optics("rlnImageSize", 20)),
        "extra_rows_star": _star_variant(star, ok / "extra_rows.star", _extra_rows),
        "nan_stack": nan / "particles.mrcs",
        "nan_star": nan / "particles.star",
        "trunc_stack": trunc / "particles.mrcs",
        "trunc_star": trunc / "particles.star",
        "big_stack": _particle_folder(root / "stack_big", box_px=24) / "particles.mrcs",
        "big_star": root / "stack_big" / "particles.star",
        "text_star": text,
    }


def _tomogram_import(root: Path) -> Files:
    folder = root / "import"
    tomogram = np.random.default_rng(1).normal(size=(16, 16, 16)).astype(np.float32)
    picks = pd.DataFrame({"x_px": [5.0, 9.0], "y_px": [6.0, 10.0], "z_px": [7.0, 8.0], "class_id": [1, 1]})
    files = {}
    for name in ("t1", "t2", "t3"):
        files[f"import_{name}"] = write_mrc(folder / f"{name}.mrc", tomogram, 10.0)
        files[f"import_{name}_picks"] = write_coordinates(folder / f"{name}.csv", picks)
    files["import_outside"] = write_coordinates(folder / "outside.csv", picks.assign(z_px=[7.0, 16.0]))
    files["import_class7"] = write_coordinates(folder / "class7.csv", picks.assign(class_id=[1, 7]))
    files["import_other_voxel"] = write_mrc(folder / "t3_at_10.2.mrc", tomogram, 10.2)
    return files


def _datasets(root: Path) -> Files:
    ctf = ["image", "particle_index", "rot_deg", "tilt_deg", "psi_deg", "defocus_u_angstrom"]
    tomograms = [_tomogram_entry("t1", "train"), _tomogram_entry("t2", "val")]
    return {
        "ds_particles": _fake_dataset(root / "ds_particles", "particles", ctf, {"source": "simulated"}),
        "ds_paired": _fake_dataset(root / "ds_paired", "particles", [*ctf, "clean_image"], {"source": "simulated"}),
        "ds_imported": _fake_dataset(root / "ds_imported", "particles", ctf, {"source": "RELION import", "poses": "absent"}),
        "ds_no_ctf": _fake_dataset(root / "ds_no_ctf", "particles", ["image", "particle_index"], {"source": "simulated"}),
        "ds_no_test": _fake_dataset(root / "ds_no_test", "tomograms", ["x_px"], {}, tomograms),
    }


def _configs(root: Path) -> Files:
    texts = {
        "config_syntax": "train: [1, 2\n",
        "config_unknown": yaml.safe_dump({"train": {"bogus": 1}, "colour": "red"}),
        "config_many": yaml.safe_dump(
            {"train": {"epochs": -1, "bogus": 1}, "method": {"learning_rate": "fast"}, "colour": "red"}
        ),
        "config_bad_value": yaml.safe_dump({"train": {"epochs": 0}}),
        "config_list": "- 1\n- 2\n",
        "config_method_key": yaml.safe_dump({"method": {"no_such_setting": 1}}),
        "config_split": yaml.safe_dump({"method": {"test_images": 6, "val_images": 6}}),
        "recipe_unknown_key": yaml.safe_dump({"name": "bad-recipe", "seed": 0, "n_images": 4, "colour": "red"}),
    }
    files = {}
    for name, text in texts.items():
        files[name] = root / "configs" / f"{name.replace('_', '-')}.yaml"
        files[name].parent.mkdir(exist_ok=True)
        files[name].write_text(text)
    return files


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("inputs")
    files = {"root": root}
    for build in (_models, _volumes, _particles, _tomogram_import, _datasets, _configs):
        files.update(build(root))
    return files


# ----- what each case writes into its own folder before it runs ------------------------------------------------------


def _file(folder: Path) -> str:
    """An output path that exists as a file."""
    (folder / "out").write_text("my notes\n")
    return str(folder / "out")


def _finished_run(folder: Path, name: str = "run") -> str:
    """An output folder holding a finished training run's result."""
    (folder / name).mkdir()
    (folder / name / "result.json").write_text(json.dumps({"method": "robpicker", "metrics": {"test_f1_macro": 0.8}}))
    return str(folder / name)


def _holding(folder: Path, name: str, output: str) -> str:
    """An output folder that already holds ``output``, as the command (or an earlier run of it) writes it."""
    (folder / name).mkdir()
    target = folder / name / output
    if target.suffix == ".csv":
        write_coordinates(target, pd.DataFrame({"x_px": [1.0], "y_px": [2.0], "z_px": [3.0]}))
    elif target.suffix == ".mrc":
        write_mrc(target, np.zeros((4, 4, 4)), 10.0)
    else:
        target.write_text("{}\n")
    return str(folder / name)


def _import_spec(folder: Path, f: Files, edit: Callable[[dict[str, Any]], None] | None = None) -> str:
    """A tomogram import spec naming the module's files by absolute path, with one ``edit``."""
    spec: dict[str, Any] = {
        "name": "imported",
        "species": [{"class_id": 1, "name": "ball", "radius_angstrom": 30.0}],
        "tomograms": [
            {"tomogram": str(f[f"import_{name}"]), "particles": str(f[f"import_{name}_picks"]), "split": split}
            for name, split in (("t1", "train"), ("t2", "val"), ("t3", "test"))
        ],
    }
    if edit is not None:
        edit(spec)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    return str(folder / "spec.yaml")


def _tomogram(index: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda spec: spec["tomograms"][index].update(changes)


def _sweep_spec(folder: Path, f: Files, edit: Callable[[dict[str, Any]], None]) -> str:
    """``tuning/reconstruct.yaml`` on the module's small dataset, with one ``edit``."""
    raw = yaml.safe_load((REPO_ROOT / "tuning" / "reconstruct.yaml").read_text())
    raw["base"].update(dataset=str(f["ds_particles"]), num_workers=1)
    edit(raw)
    (folder / "spec.yaml").write_text(yaml.safe_dump(raw))
    return str(folder / "spec.yaml")


def _search(key: str, distribution: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw["search_space"].update({key: distribution})


def _sweep_search(key: str, distribution: dict[str, Any]) -> Callable[[Files, Path], list[str]]:
    """A sweep's arguments whose spec searches ``key`` over ``distribution``."""
    return lambda f, d: sweep(f, d, _search(key, distribution))


# ----- the cases -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One malformed input: the command, its arguments (from the module's files and the case's own folder), and what
    the one stderr line must name (the file or flag, and the field)."""

    command: str  # "job:<method>" or a key of COMMANDS
    argv: Callable[[Files, Path], list[str]]
    named: tuple[str, ...]


def case(id_: str, command: str, argv: Callable[[Files, Path], list[str]], *named: str, marks: Any = ()) -> Any:
    return pytest.param(Case(command, argv, named), id=id_, marks=marks)


def job(f: Files, d: Path, *extra: str, dataset: str = "ds_particles") -> list[str]:
    """A job's arguments on a module dataset (nothing is built) into the case's folder, plus ``extra``."""
    return ["--dataset", str(f[dataset]), "--output-dir", str(d / "run"), *extra]


def predict(f: Files, d: Path, *extra: str, tomogram: str = "tomo", model: str = "robpicker_model") -> list[str]:
    return ["--model", str(f[model]), "--tomograms", str(f[tomogram]), "--output-dir", str(d / "picks"), *extra]


def apply(f: Files, d: Path, *extra: str, volume: str = "tomo", model: str = "cryogen2_model") -> list[str]:
    return ["--model", str(f[model]), "--inputs", str(f[volume]), "--output-dir", str(d / "restored"), *extra]


def denoise(f: Files, d: Path, *extra: str, stack: str = "stack", star: str = "star", model: str = "betagan_model") -> list[str]:
    return ["--model", str(f[model]), "--stack", str(f[stack]), "--star", str(f[star]), "--output-dir", str(d / "den"), *extra]


def relion(f: Files, d: Path, *extra: str, star: str = "star") -> list[str]:
    return ["--import-relion", str(f[star]), "--output", str(d / "dataset"), *extra]


def tomograms(f: Files, d: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> list[str]:
    return ["--import-tomograms", _import_spec(d, f, edit), "--output", str(d / "dataset")]


def sweep(f: Files, d: Path, edit: Callable[[dict[str, Any]], None] = lambda raw: None) -> list[str]:
    return [_sweep_spec(d, f, edit), "--output-dir", str(d / "sweep")]


CASES = [
    # --- the six training jobs ---
    case(
        "job-reconstruct-every-config-problem-at-once",
        "job:reconstruct",
        lambda f, d: job(f, d, "--config", str(f["config_many"])),
        "config-many.yaml",
        "train.epochs",
        "train.bogus",
        "method.learning_rate",
        "colour",
    ),
    case(
        "job-reconstruct-config-yaml-syntax",
        "job:reconstruct",
        lambda f, d: job(f, d, "--config", str(f["config_syntax"])),
        "config-syntax.yaml",
        "yaml",
    ),
    case(
        "job-cryo2ssnet-config-unknown-keys",
        "job:cryo2ssnet",
        lambda f, d: job(f, d, "--config", str(f["config_unknown"])),
        "config-unknown.yaml",
        "train.bogus",
        "colour",
    ),
    case(
        "job-cryospin-config-bad-value",
        "job:cryospin",
        lambda f, d: job(f, d, "--config", str(f["config_bad_value"])),
        "config-bad-value.yaml",
        "train.epochs",
    ),
    case(
        "job-betagan-config-top-level-list",
        "job:betagan",
        lambda f, d: job(f, d, "--config", str(f["config_list"])),
        "config-list.yaml",
        "top level",
    ),
    case(
        "job-cryogen2-config-unknown-method-key",
        "job:cryogen2",
        lambda f, d: job(f, d, "--config", str(f["config_method_key"])),
        "config-method-key.yaml",
        "method.no_such_setting",
    ),
    case(
        "job-robpicker-config-missing",
        "job:robpicker",
        lambda f, d: job(f, d, "--config", str(d / "nope.yaml")),
        "nope.yaml",
        "--config",
    ),
    case(
        "job-robpicker-unknown-dataset-name",
        "job:robpicker",
        lambda f, d: ["--dataset", "no-such-set", "--output-dir", str(d / "run")],
        "--dataset",
        "no-such-set",
    ),
    case(
        "job-reconstruct-dataset-folder-without-manifest",
        "job:reconstruct",
        lambda f, d: ["--dataset", str(f["empty_run"]), "--output-dir", str(d / "run")],
        "--dataset",
        "empty_run",
    ),
    case("job-robpicker-dataset-of-wrong-kind", "job:robpicker", lambda f, d: job(f, d), "ds_particles", "kind"),
    case("job-cryogen2-dataset-of-wrong-kind", "job:cryogen2", lambda f, d: job(f, d), "ds_particles", "kind"),
    case(
        "job-reconstruct-dataset-of-wrong-kind",
        "job:reconstruct",
        lambda f, d: job(f, d, dataset="ds_no_test"),
        "ds_no_test",
        "kind",
    ),
    case(
        "job-robpicker-dataset-without-test-split",
        "job:robpicker",
        lambda f, d: job(f, d, dataset="ds_no_test"),
        "ds_no_test",
        "tomograms",
        "no test",
    ),
    case(
        "job-betagan-dataset-without-clean-images",
        "job:betagan",
        lambda f, d: job(f, d),
        "ds_particles",
        "columns",
        "clean_image",
    ),
    case(
        "job-betagan-split-larger-than-dataset",
        "job:betagan",
        lambda f, d: job(f, d, "--config", str(f["config_split"]), dataset="ds_paired"),
        "method.test_images + method.val_images",
    ),
    case(
        "job-cryo2ssnet-imported-dataset-without-snr",
        "job:cryo2ssnet",
        lambda f, d: job(f, d, dataset="ds_imported"),
        "ds_imported",
        "method.snr_linear",
    ),
    case(
        "job-reconstruct-dataset-without-poses",
        "job:reconstruct",
        lambda f, d: job(f, d, dataset="ds_imported"),
        "ds_imported",
        "poses",
    ),
    case(
        "job-cryospin-dataset-without-ctf-columns",
        "job:cryospin",
        lambda f, d: job(f, d, dataset="ds_no_ctf"),
        "ds_no_ctf",
        "columns",
    ),
    case(
        "job-reconstruct-output-dir-is-a-file",
        "job:reconstruct",
        lambda f, d: ["--dataset", str(f["ds_particles"]), "--output-dir", _file(d)],
        "out",
        "--output-dir",
        "an existing file",
    ),
    case(
        "job-cryo2ssnet-output-dir-holds-a-result",
        "job:cryo2ssnet",
        lambda f, d: ["--dataset", str(f["ds_particles"]), "--output-dir", _finished_run(d)],
        "run",
        "--output-dir",
        "result.json",
    ),
    case(
        "job-cryospin-negative-num-workers",
        "job:cryospin",
        lambda f, d: job(f, d, "--num-workers", "-1"),
        "num_workers",
        "greater than or equal to 0",
    ),
    case(
        "job-betagan-use-gpu-without-a-gpu",
        "job:betagan",
        lambda f, d: job(f, d, "--use-gpu", dataset="ds_paired"),
        "--use-gpu",
        marks=NO_GPU,
    ),
    case(
        "job-reconstruct-workers-that-leave-no-cpu-for-ray-data",
        "job:reconstruct",
        lambda f, d: job(f, d, "--num-workers", "64"),
        "--num-workers",
        "64 × 0.5",
    ),
    case(
        "job-reconstruct-in-process-with-remote-storage",
        "job:reconstruct",
        lambda f, d: job(f, d, "--num-workers", "0", "--storage-path", "s3://bucket/checkpoints"),
        "--storage-path",
        "a local folder",
    ),
    # --- robpicker predict ---
    case(
        "predict-tomogram-missing",
        "predict",
        lambda f, d: predict(f, d) + ["--tomograms", str(d / "nope.mrc")],
        "nope.mrc",
        "file",
        "no such file",
    ),
    case(
        "predict-tomogram-is-a-directory",
        "predict",
        lambda f, d: predict(f, d, tomogram="folder"),
        "folder.mrc",
        "file",
        "a directory",
    ),
    case("predict-text-file-as-tomogram", "predict", lambda f, d: predict(f, d, tomogram="text"), "text.mrc", "mode"),
    case(
        "predict-truncated-tomogram",
        "predict",
        lambda f, d: predict(f, d, tomogram="trunc"),
        "trunc.mrc",
        "data block",
        "truncated",
    ),
    case(
        "predict-2d-image-as-tomogram", "predict", lambda f, d: predict(f, d, tomogram="image"), "image.mrc", "shape", "3D volume"
    ),
    case("predict-nan-voxels", "predict", lambda f, d: predict(f, d, tomogram="nan"), "nan.mrc", "data", "NaN/Inf"),
    case(
        "predict-header-without-voxel-size",
        "predict",
        lambda f, d: predict(f, d, tomogram="novoxel"),
        "novoxel.mrc",
        "voxel size",
    ),
    case(
        "predict-negative-voxel-size-flag",
        "predict",
        lambda f, d: predict(f, d, "--voxel-size-angstrom", "-5"),
        "--voxel-size-angstrom",
        "positive",
    ),
    case(
        "predict-output-dir-is-a-file",
        "predict",
        lambda f, d: predict(f, d)[:-1] + [_file(d)],
        "out",
        "--output-dir",
        "an existing file",
    ),
    case(
        "predict-output-dir-holds-a-training-result",
        "predict",
        lambda f, d: predict(f, d)[:-1] + [_finished_run(d)],
        "run",
        "--output-dir",
        "result.json",
    ),
    case(
        "predict-output-dir-holds-earlier-picks",
        "predict",
        lambda f, d: predict(f, d)[:-1] + [_holding(d, "picks", "picks_tomo.csv")],
        "picks",
        "--output-dir",
        "picks_tomo.csv",
    ),
    case(
        "predict-model-of-another-method",
        "predict",
        lambda f, d: predict(f, d, model="betagan_model"),
        "model.safetensors",
        "method",
        "robpicker",
    ),
    case("predict-pickled-model", "predict", lambda f, d: predict(f, d, model="pickled_model"), "model.pt", "--model"),
    case("apply-pickled-model", "apply", lambda f, d: apply(f, d, model="pickled_model"), "model.pt", "--model"),
    case("denoise-pickled-model", "denoise", lambda f, d: denoise(f, d, model="pickled_model"), "model.pt", "--model"),
    case(
        "denoise-model-of-another-method",
        "denoise",
        lambda f, d: denoise(f, d, model="robpicker_model"),
        "model.safetensors",
        "method",
        "betagan",
    ),
    case(
        "predict-model-without-species",
        "predict",
        lambda f, d: predict(f, d, model="robpicker_no_species"),
        "no_species.safetensors",
        "species",
    ),
    case("predict-run-folder-without-a-model", "predict", lambda f, d: predict(f, d, model="empty_run"), "empty_run", "--model"),
    case(
        "predict-truth-count-mismatch",
        "predict",
        lambda f, d: predict(f, d, "--truth", str(f["import_t1_picks"]), str(f["import_t2_picks"])),
        "--truth",
    ),
    case(
        "predict-truth-without-z",
        "predict",
        lambda f, d: predict(f, d, "--truth", str(f["truth_no_z"])),
        "truth_no_z.csv",
        "z_px",
    ),
    case(
        "predict-two-tomograms-of-one-name",
        "predict",
        lambda f, d: predict(f, d) + ["--tomograms", str(f["tomo"]), str(f["twin"])],
        "--tomograms",
        "distinct names",
    ),
    case("predict-use-gpu-without-a-gpu", "predict", lambda f, d: predict(f, d, "--use-gpu"), "--use-gpu", marks=NO_GPU),
    # --- cryogen2 apply ---
    case("apply-input-missing", "apply", lambda f, d: apply(f, d) + ["--inputs", str(d / "nope.mrc")], "nope.mrc", "file"),
    case("apply-2d-image-as-volume", "apply", lambda f, d: apply(f, d, volume="image"), "image.mrc", "shape"),
    case("apply-inf-voxels", "apply", lambda f, d: apply(f, d, volume="inf"), "inf.mrc", "data", "NaN/Inf"),
    case("apply-truncated-volume", "apply", lambda f, d: apply(f, d, volume="trunc"), "trunc.mrc", "data block"),
    case("apply-text-file-as-volume", "apply", lambda f, d: apply(f, d, volume="text"), "text.mrc", "mode"),
    case("apply-header-without-voxel-size", "apply", lambda f, d: apply(f, d, volume="novoxel"), "novoxel.mrc", "voxel size"),
    case(
        "apply-zero-voxel-size-flag",
        "apply",
        lambda f, d: apply(f, d, "--voxel-size-angstrom", "0"),
        "--voxel-size-angstrom",
        "positive",
    ),
    case(
        "apply-output-dir-is-a-file",
        "apply",
        lambda f, d: apply(f, d)[:-1] + [_file(d)],
        "out",
        "--output-dir",
        "an existing file",
    ),
    case(
        "apply-output-dir-holds-a-training-result",
        "apply",
        lambda f, d: apply(f, d)[:-1] + [_finished_run(d)],
        "run",
        "--output-dir",
        "result.json",
    ),
    case(
        "apply-output-dir-holds-earlier-output",
        "apply",
        lambda f, d: apply(f, d)[:-1] + [_holding(d, "restored", "tomo_cryogen2.mrc")],
        "restored",
        "--output-dir",
        "tomo_cryogen2.mrc",
    ),
    case("apply-tile-not-a-multiple", "apply", lambda f, d: apply(f, d, "--tile-px", "5"), "--tile-px"),
    case("apply-overlap-not-below-tile", "apply", lambda f, d: apply(f, d, "--overlap-px", "16"), "--overlap-px"),
    case("apply-zero-batch-size", "apply", lambda f, d: apply(f, d, "--batch-size", "0"), "--batch-size"),
    case(
        "apply-model-of-another-method",
        "apply",
        lambda f, d: apply(f, d, model="robpicker_model"),
        "model.safetensors",
        "method",
        "cryogen2",
    ),
    case("apply-use-gpu-without-a-gpu", "apply", lambda f, d: apply(f, d, "--use-gpu"), "--use-gpu", marks=NO_GPU),
    # --- betagan denoise ---
    case(
        "denoise-star-with-fewer-rows-than-images",
        "denoise",
        lambda f, d: denoise(f, d, star="short_star"),
        "short.star",
        "rows",
        "7 rows",
    ),
    case(
        "denoise-star-without-pixel-size",
        "denoise",
        lambda f, d: denoise(f, d, star="no_pixel_star"),
        "no_pixel.star",
        "rlnImagePixelSize",
    ),
    case(
        "denoise-pixel-size-unlike-the-model",
        "denoise",
        lambda f, d: denoise(f, d, star="pixel3_star"),
        "pixel3.star",
        "rlnImagePixelSize",
        "6.0",
    ),
    case("denoise-text-file-as-star", "denoise", lambda f, d: denoise(f, d, star="text_star"), "text.star", "rlnImageName"),
    case(
        "denoise-nan-pixels",
        "denoise",
        lambda f, d: denoise(f, d, stack="nan_stack", star="nan_star"),
        "particles.mrcs",
        "data",
        "NaN/Inf",
    ),
    case(
        "denoise-truncated-stack",
        "denoise",
        lambda f, d: denoise(f, d, stack="trunc_stack", star="trunc_star"),
        "particles.mrcs",
        "data block",
    ),
    case("denoise-volume-as-stack", "denoise", lambda f, d: denoise(f, d, stack="tomo"), "tomo.mrc", "shape", "image stack"),
    case(
        "denoise-box-unlike-the-model",
        "denoise",
        lambda f, d: denoise(f, d, stack="big_stack", star="big_star"),
        "particles.mrcs",
        "image size",
        "16 x 16",
        "24 x 24",
    ),
    case("denoise-stack-missing", "denoise", lambda f, d: denoise(f, d) + ["--stack", str(d / "nope.mrcs")], "nope.mrcs", "file"),
    case(
        "denoise-output-dir-is-a-file",
        "denoise",
        lambda f, d: denoise(f, d)[:-1] + [_file(d)],
        "out",
        "--output-dir",
        "an existing file",
    ),
    case(
        "denoise-output-dir-holds-a-training-result",
        "denoise",
        lambda f, d: denoise(f, d)[:-1] + [_finished_run(d)],
        "run",
        "--output-dir",
        "result.json",
    ),
    case(
        "denoise-model-without-box", "denoise", lambda f, d: denoise(f, d, model="betagan_no_box"), "no_box.safetensors", "box_px"
    ),
    case("denoise-zero-batch-size", "denoise", lambda f, d: denoise(f, d, "--batch-size", "0"), "--batch-size"),
    case("denoise-use-gpu-without-a-gpu", "denoise", lambda f, d: denoise(f, d, "--use-gpu"), "--use-gpu", marks=NO_GPU),
    # --- datasets/build.py: recipes ---
    case(
        "build-unknown-recipe",
        "build",
        lambda f, d: ["no-such-recipe", "--output", str(d / "dataset")],
        "recipe",
        "no-such-recipe",
    ),
    case(
        "build-recipe-with-unknown-key",
        "build",
        lambda f, d: [str(f["recipe_unknown_key"]), "--output", str(d / "dataset")],
        "recipe-unknown-key.yaml",
        "colour",
    ),
    case("build-zero-images-per-shard", "build", lambda f, d: [*relion(f, d), "--images-per-shard", "0"], "--images-per-shard"),
    # --- datasets/build.py: RELION import ---
    case(
        "relion-star-missing", "build", lambda f, d: relion(f, d) + ["--import-relion", str(d / "nope.star")], "nope.star", "file"
    ),
    case("relion-text-file-as-star", "build", lambda f, d: relion(f, d, star="text_star"), "text.star", "rlnImageName"),
    case(
        "relion-star-without-pixel-size",
        "build",
        lambda f, d: relion(f, d, star="no_pixel_star"),
        "no_pixel.star",
        "rlnImagePixelSize",
    ),
    case("relion-star-without-ctf", "build", lambda f, d: relion(f, d, star="no_ctf_star"), "no_ctf.star", "rlnDefocusU"),
    case(
        "relion-star-names-more-images-than-the-stack",
        "build",
        lambda f, d: relion(f, d, star="extra_rows_star"),
        "extra_rows.star",
        "rlnImageName",
        "10 images",
    ),
    case(
        "relion-image-size-unlike-the-star",
        "build",
        lambda f, d: relion(f, d, star="box20_star"),
        "particles.mrcs",
        "image size",
        "20 x 20",
    ),
    case("relion-nan-pixels", "build", lambda f, d: relion(f, d, star="nan_star"), "particles.mrcs", "data", "NaN/Inf"),
    case("relion-truncated-stack", "build", lambda f, d: relion(f, d, star="trunc_star"), "particles.mrcs", "data block"),
    case(
        "relion-ground-truth-map-is-2d",
        "build",
        lambda f, d: relion(f, d, "--ground-truth-map", str(f["image"])),
        "image.mrc",
        "shape",
    ),
    case("relion-output-is-a-file", "build", lambda f, d: relion(f, d)[:-1] + [_file(d)], "out", "output", "an existing file"),
    case(
        "relion-output-holds-files",
        "build",
        lambda f, d: relion(f, d)[:-1] + [_holding(d, "dataset", "keep.json")],
        "dataset",
        "output",
        "--overwrite",
    ),
    # --- datasets/build.py: tomogram import ---
    case(
        "import-spec-yaml-syntax",
        "build",
        lambda f, d: ["--import-tomograms", str(f["config_syntax"]), "--output", str(d / "dataset")],
        "config-syntax.yaml",
        "recipe",
        "readable YAML",
    ),
    case(
        "import-spec-unknown-key", "build", lambda f, d: tomograms(f, d, lambda s: s.update(colour="red")), "spec.yaml", "colour"
    ),
    case(
        "import-spec-without-val-split", "build", lambda f, d: tomograms(f, d, _tomogram(1, split="train")), "spec.yaml", "no val"
    ),
    case(
        "import-tomogram-missing",
        "build",
        lambda f, d: tomograms(f, d, _tomogram(0, tomogram=str(d / "nope.mrc"))),
        "spec.yaml",
        "tomograms[0].tomogram",
    ),
    case(
        "import-2d-tomogram", "build", lambda f, d: tomograms(f, d, _tomogram(2, tomogram=str(f["image"]))), "image.mrc", "shape"
    ),
    case(
        "import-nan-tomogram",
        "build",
        lambda f, d: tomograms(f, d, _tomogram(2, tomogram=str(f["nan"]))),
        "nan.mrc",
        "data",
        "NaN/Inf",
    ),
    case(
        "import-truncated-tomogram",
        "build",
        lambda f, d: tomograms(f, d, _tomogram(1, tomogram=str(f["trunc"]))),
        "trunc.mrc",
        "data block",
    ),
    case(
        "import-pick-outside-the-tomogram",
        "build",
        lambda f, d: tomograms(f, d, _tomogram(2, particles=str(f["import_outside"]))),
        "outside.csv",
        "z_px",
    ),
    case(
        "import-pick-of-unknown-class",
        "build",
        lambda f, d: tomograms(f, d, _tomogram(2, particles=str(f["import_class7"]))),
        "class7.csv",
        "class_id",
    ),
    case(
        "import-voxel-sizes-disagree",
        "build",
        lambda f, d: tomograms(f, d, _tomogram(2, tomogram=str(f["import_other_voxel"]))),
        "t3_at_10.2.mrc",
        "voxel size",
    ),
    case(
        "import-output-holds-the-inputs",
        "build",
        lambda f, d: ["--import-tomograms", _import_spec(d, f), "--output", str(f["root"]), "--overwrite"],
        "output",
        "none of the import's inputs",
    ),
    # --- tuning/sweep.py ---
    case(
        "sweep-spec-missing",
        "sweep",
        lambda f, d: [str(d / "nope.yaml"), "--output-dir", str(d / "sweep")],
        "nope.yaml",
        "--config",
    ),
    case(
        "sweep-spec-yaml-syntax",
        "sweep",
        lambda f, d: [str(f["config_syntax"]), "--output-dir", str(d / "sweep")],
        "config-syntax.yaml",
        "yaml",
    ),
    case(
        "sweep-spec-top-level-list",
        "sweep",
        lambda f, d: [str(f["config_list"]), "--output-dir", str(d / "sweep")],
        "config-list.yaml",
        "top level",
    ),
    case(
        "sweep-unknown-parameter",
        "sweep",
        lambda f, d: sweep(f, d, _search("method.learning_rat", {"choice": [0.01]})),
        "spec.yaml",
        "search_space.method.learning_rat",
    ),
    case(
        "sweep-unknown-distribution",
        "sweep",
        lambda f, d: sweep(f, d, _search("method.learning_rate", {"normal": [0, 1]})),
        "spec.yaml",
        "search_space.method.learning_rate",
    ),
    case(
        "sweep-loguniform-from-zero",
        "sweep",
        lambda f, d: sweep(f, d, _search("method.learning_rate", {"loguniform": [0, 0.1]})),
        "spec.yaml",
        "search_space.method.learning_rate",
    ),
    case(
        "sweep-value-the-method-rejects",
        "sweep",
        lambda f, d: sweep(f, d, _search("train.batch_size", {"randint": [0, 64]})),
        "spec.yaml",
        "search_space.train.batch_size",
    ),
    case("sweep-unknown-job", "sweep", lambda f, d: sweep(f, d, lambda raw: raw.update(job="robpickr")), "spec.yaml", "job"),
    case(
        "sweep-dataset-of-wrong-kind",
        "sweep",
        lambda f, d: sweep(f, d, lambda raw: raw["base"].update(dataset=str(f["ds_no_test"]))),
        "ds_no_test",
        "kind",
    ),
    case(
        "sweep-unknown-dataset-name",
        "sweep",
        lambda f, d: sweep(f, d, lambda raw: raw["base"].update(dataset="no-such-set")),
        "spec.yaml",
        "base.dataset",
    ),
    case(
        "sweep-output-dir-is-a-file",
        "sweep",
        lambda f, d: sweep(f, d)[:-1] + [_file(d)],
        "out",
        "--output-dir",
        "an existing file",
    ),
    case(
        "sweep-output-dir-holds-a-finished-sweep",
        "sweep",
        lambda f, d: sweep(f, d)[:-1] + [_holding(d, "sweep", "best.json")],
        "sweep",
        "--output-dir",
        "best.json",
    ),
    case("sweep-zero-samples", "sweep", lambda f, d: [*sweep(f, d), "--num-samples", "0"], "--num-samples"),
    case(
        "sweep-gpu-trials-without-a-gpu",
        "sweep",
        lambda f, d: sweep(f, d, lambda raw: raw["base"].update(use_gpu=True)),
        "spec.yaml",
        "use_gpu",
        marks=NO_GPU,
    ),
    case(
        "sweep-unknown-top-level-key",
        "sweep",
        lambda f, d: sweep(f, d, lambda raw: raw.update(num_sample=3)),
        "spec.yaml",
        "num_sample",
    ),
    case(
        "sweep-uniform-with-three-bounds",
        "sweep",
        _sweep_search("method.l2_weight", {"uniform": [1, 1e-3, 4]}),
        "spec.yaml",
        "l2_weight",
    ),
    case(
        "sweep-negative-step-size",
        "sweep",
        _sweep_search("method.learning_rate", {"uniform": [-0.1, 0.1]}),
        "spec.yaml",
        "learning_rate=-0.1",
    ),
    case("sweep-unknown-mode", "sweep", lambda f, d: sweep(f, d, lambda raw: raw.update(mode="maximise")), "spec.yaml", "mode"),
    case("sweep-no-metric", "sweep", lambda f, d: sweep(f, d, lambda raw: raw.update(metric=None)), "spec.yaml", "metric"),
    case(
        "sweep-metric-the-method-does-not-report",
        "sweep",
        lambda f, d: sweep(f, d, lambda raw: raw.update(metric="epoch/map_correlation")),
        "spec.yaml",
        "metric",
    ),
    case(
        "sweep-minimises-a-correlation",
        "sweep",
        lambda f, d: sweep(f, d, lambda raw: raw.update(metric="map_correlation", mode="min")),
        "spec.yaml",
        "mode",
    ),
    case(
        "sweep-unknown-smoke-scheduler",
        "sweep",
        lambda f, d: sweep(f, d, lambda raw: raw["smoke"].update(scheduler={"type": "hyperband"})),
        "spec.yaml",
        "smoke.scheduler.type",
    ),
    case(
        "sweep-base-sets-a-trial-output-dir",
        "sweep",
        lambda f, d: sweep(f, d, lambda raw: raw["base"].update(output_dir=str(d / "x"))),
        "spec.yaml",
        "base.output_dir",
    ),
    case(
        "sweep-searches-a-sweep-wide-key",
        "sweep",
        _sweep_search("tracking_uri", {"choice": ["a", "b"]}),
        "spec.yaml",
        "search_space.tracking_uri",
    ),
    case(
        "sweep-trials-without-workers",
        "sweep",
        lambda f, d: sweep(f, d, lambda raw: raw["base"].update(num_workers=0)),
        "spec.yaml",
        "base",
        "a trial needs a Ray Train worker",
    ),
    case(
        "sweep-base-value-the-method-rejects",
        "sweep",
        lambda f, d: sweep(f, d, lambda raw: raw["base"]["train"].update(epochs="many")),
        "spec.yaml",
        "base",
        "train.epochs",
    ),
]


# ----- the check -----------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def ray_must_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refusal happens on the driver before Ray starts: starting it here is a failure with a traceback."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ray.init was called: the input was not refused before Ray started")

    monkeypatch.setattr(ray, "init", refuse)


def _snapshot(root: Path) -> dict[str, str]:
    """Every file's sha256 and every folder under ``root``, by relative path."""
    return {
        str(path.relative_to(root)): "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
    }


def _run(command: str, argv: list[str]) -> int:
    if command.startswith("job:"):
        return run_job(load_method(command.removeprefix("job:")), argv)
    return COMMANDS[command](argv)


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_refused_before_ray_in_one_line(bad: Case, inputs: Files, tmp_path: Path, capsys) -> None:
    argv = bad.argv(inputs, tmp_path)  # may write the case's own files (an output folder that holds a result, ...)
    before = {root: _snapshot(root) for root in (inputs["root"], tmp_path)}
    capsys.readouterr()
    code = _run(bad.command, argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(token in lines[0] for token in bad.named), (bad.named, lines[0])
    assert not ray.is_initialized()
    for root, files in before.items():
        assert _snapshot(root) == files, f"files under {root} changed"
