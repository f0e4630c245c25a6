"""Importing real tomograms + picks: the dataset round-trips and labels sit on the picks (bad input: test_bad_inputs.py)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cryoray.data.patches import draw_patches, patch_source, split_entries
from cryoray.data.tomogram_import import import_tomograms
from cryoray.errors import CryorayInputError
from cryoray.io.manifest import read_manifest
from cryoray.io.mrc import read_mrc, write_mrc
from cryoray.io.star import read_coordinates, write_coordinates
from cryoray.simulate.tomogram import size_group_for_radius

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPE_ZYX = (16, 32, 32)
VOXEL_ANGSTROM = 10.0
PICKS = {  # file -> (x, y, z, class) in tomogram voxels
    "tomo01": [(8, 8, 8, 1), (20, 12, 7, 2), (25.4, 24, 9, 1)],
    "tomo02": [(10, 20, 8, 1), (22, 9, 6, 1)],
    "tomo03": [(16, 16, 8, 2)],
}


def _load_build_cli():
    spec = importlib.util.spec_from_file_location("datasets_build", REPO_ROOT / "datasets" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_inputs(folder: Path, binning: float = 1.0, **changes) -> Path:
    """Three tomograms (float32 train, int16 val, float32 test at a 0.5 % different voxel size) with picks."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write_mrc(folder / "tomo01.mrc", rng.normal(size=SHAPE_ZYX), VOXEL_ANGSTROM)
    write_mrc(folder / "tomo02.mrc", rng.integers(-50, 50, size=SHAPE_ZYX), VOXEL_ANGSTROM, dtype=np.int16)
    write_mrc(folder / "tomo03.mrc", rng.normal(size=SHAPE_ZYX), VOXEL_ANGSTROM * 1.005)
    for name, suffix in (("tomo01", "star"), ("tomo02", "csv"), ("tomo03", "csv")):
        table = pd.DataFrame(PICKS[name], columns=["x_px", "y_px", "z_px", "class_id"])
        table[["x_px", "y_px", "z_px"]] *= binning
        if name == "tomo02":
            table = table.drop(columns="class_id")  # no class column: class 1
        write_coordinates(folder / f"{name}.{suffix}", table)
    spec = {
        "name": "real-test",
        "coordinates_binning": binning,
        "species": [
            {"class_id": 1, "name": "ribosome", "radius_angstrom": 30.0},
            {"class_id": 2, "name": "proteasome", "radius_angstrom": 45.0},
        ],
        "tomograms": [
            {"tomogram": "tomo01.mrc", "particles": "tomo01.star", "split": "train"},
            {"tomogram": "tomo02.mrc", "particles": "tomo02.csv", "split": "val"},
            {"tomogram": "tomo03.mrc", "particles": "tomo03.csv", "split": "test"},
        ],
    }
    spec.update(changes)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    inputs = tmp_path_factory.mktemp("inputs")
    spec = _write_inputs(inputs)
    out = inputs.parent / "dataset"
    assert _load_build_cli().main(["--import-tomograms", str(spec), "--output", str(out)]) == 0
    return inputs, out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_import_round_trips_through_the_manifest_and_leaves_inputs_alone(imported: tuple[Path, Path]) -> None:
    inputs, out = imported
    manifest = read_manifest(out)
    assert manifest.kind == "tomograms" and manifest.count == 3 and manifest.voxel_size_angstrom == VOXEL_ANGSTROM
    assert [(t.name, t.split) for t in manifest.tomograms] == [("tomo01", "train"), ("tomo02", "val"), ("tomo03", "test")]
    assert all(t.clean is None for t in manifest.tomograms)
    assert "validation uses sphere labels" in manifest.provenance["labels"]
    assert [(s.radius_px, s.size_group) for s in manifest.species] == [
        (3.0, size_group_for_radius(30.0)),
        (4.5, size_group_for_radius(45.0)),
    ]
    for entry in manifest.tomograms:
        source = inputs / f"{entry.name}.mrc"
        stored = read_mrc(out / entry.tomogram)
        assert stored.voxel_size_angstrom == VOXEL_ANGSTROM and stored.data.dtype == np.float32
        np.testing.assert_array_equal(stored.data, read_mrc(source).data)
        assert read_coordinates(out / entry.particles).equals(read_coordinates(out / entry.annotations))
    # the float32 tomogram with the dataset's voxel size is a hard link; the int16 one and the 10.05 Å one are copies
    linked = {t["name"]: t["linked"] for t in manifest.provenance["imported"]}
    assert linked == {"tomo01": True, "tomo02": False, "tomo03": False}
    assert (out / "tomograms/tomo01.mrc").stat().st_ino == (inputs / "tomo01.mrc").stat().st_ino
    before = {p.name: _digest(p) for p in inputs.iterdir()}
    import_tomograms(inputs / "spec.yaml", out, overwrite=True)  # replacing the dataset leaves the inputs as they were
    assert {p.name: _digest(p) for p in inputs.iterdir()} == before
    with pytest.raises(CryorayInputError, match="--overwrite"):
        import_tomograms(inputs / "spec.yaml", out)
    with pytest.raises(CryorayInputError, match="output: expected a folder that holds none of the import's inputs"):
        import_tomograms(inputs / "spec.yaml", inputs.parent, overwrite=True)
    assert {p.name: _digest(p) for p in inputs.iterdir()} == before


def test_labels_are_balls_of_the_species_radius_on_the_picks(imported: tuple[Path, Path]) -> None:
    _, out = imported
    manifest = read_manifest(out)
    radius = {s.class_id: s.radius_px for s in manifest.species}
    z, y, x = np.indices(SHAPE_ZYX)
    for entry in manifest.tomograms:
        sphere = read_mrc(out / entry.labels["sphere"]).data
        np.testing.assert_array_equal(sphere, read_mrc(out / entry.labels["shape"]).data)
        instances = np.rint(read_mrc(out / entry.labels["instances"]).data).astype(int)
        particles = read_coordinates(out / entry.particles)
        assert len(particles) == len(PICKS[entry.name]) and particles["tomo_name"].eq(entry.name).all()
        expected_classes, expected_ids = np.zeros(SHAPE_ZYX, dtype=int), np.zeros(SHAPE_ZYX, dtype=int)
        for row, pick in particles.iterrows():  # a ball of the species radius around the pick's nearest voxel
            cz, cy, cx = (round(c) for c in (pick.z_px, pick.y_px, pick.x_px))
            ball = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius[pick.class_id] ** 2
            expected_classes[ball], expected_ids[ball] = pick.class_id, row + 1
        np.testing.assert_array_equal(sphere, expected_classes)
        np.testing.assert_array_equal(instances, expected_ids)
    assert read_coordinates(out / "particles/tomo02.csv")["class_id"].eq(1).all()  # a file without classes is class 1


def test_coordinates_binning_divides_positions(imported: tuple[Path, Path], tmp_path: Path) -> None:
    _, plain = imported
    binned = import_tomograms(_write_inputs(tmp_path / "binned", binning=2.0), tmp_path / "dataset")
    for name in PICKS:
        particles = f"particles/{name}.csv"
        pd.testing.assert_frame_equal(read_coordinates(binned / particles), read_coordinates(plain / particles))
        for kind in ("sphere", "instances"):
            labels = f"labels/{name}_{kind}.mrc"
            np.testing.assert_array_equal(read_mrc(binned / labels).data, read_mrc(plain / labels).data)


def test_the_picker_patch_stream_reads_the_import(imported: tuple[Path, Path]) -> None:
    _, out = imported
    manifest = read_manifest(out)
    for split, labels, particles in (("train", "sphere", "annotations"), ("val", "shape", "particles")):
        source = patch_source(out, split_entries(manifest, split), labels, particles)
        batch = draw_patches(source, np.random.default_rng(0), 12, 16, 0, "class_balanced", augment=True)
        assert batch["patch"].shape == (12, 16, 16, 16) and np.isfinite(batch["patch"]).all()
        assert set(batch["labels"][:, 8, 8, 8]) <= {1, 2} and (batch["labels"][:, 8, 8, 8] > 0).all()


def test_tomo_name_selects_rows_of_a_shared_star_file(tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    _write_inputs(folder)
    shared = pd.DataFrame(
        {
            "x_px": [5.0, 9.0, 12.0],
            "y_px": [5.0, 9.0, 12.0],
            "z_px": [5.0, 6.0, 7.0],
            "class_id": [1, 2, 1],
            "tomo_name": ["TS_01", "TS_03", "TS_03"],
        }
    )
    write_coordinates(folder / "all.star", shared)
    spec = yaml.safe_load((folder / "spec.yaml").read_text())
    spec["tomograms"][2]["particles"] = "all.star"
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(CryorayInputError, match="tomo_name: expected picks of one tomogram"):
        import_tomograms(folder / "spec.yaml", tmp_path / "dataset")
    spec["tomograms"][2]["tomo_name"] = "TS_03"
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = import_tomograms(folder / "spec.yaml", tmp_path / "dataset")
    assert read_coordinates(out / "particles/tomo03.csv")[["x_px", "class_id"]].values.tolist() == [[9.0, 2], [12.0, 1]]
