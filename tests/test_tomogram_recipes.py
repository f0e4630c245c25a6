"""Tomogram dataset recipes: reproducible builds, a manifest that round-trips, labels on disk, clear errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cryoray.data.recipes import find_recipe, resolve_dataset
from cryoray.data.tomogram_recipes import (
    build_tomogram_dataset,
    load_tomogram_recipe,
    recipe_species,
)
from cryoray.errors import CryorayInputError
from cryoray.io.manifest import read_manifest
from cryoray.io.mrc import read_mrc
from cryoray.io.star import read_coordinates
from cryoray.simulate.tomogram import simulate_tomogram, sphere_label_map

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_build_cli():
    spec = importlib.util.spec_from_file_location("datasets_build", REPO_ROOT / "datasets" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke():
    return resolve_dataset("tomograms-smoke")


def _small_recipe(tmp_path: Path, **changes) -> Path:
    recipe = {
        "name": "tiny-test",
        "kind": "tomograms",
        "seed": 5,
        "voxel_size_angstrom": 10.0,
        "shape_zyx": [24, 40, 40],
        "species": ["tiny_dimer", "small_tripod"],
        "particles_per_species": [8, 4],
        "splits": {"train": 1, "val": 1},
        "snr_linear": 2.0,
        "annotation_noise": {"missing_fraction": 0.5, "jitter_px": 1.0, "splits": ["train"]},
    }
    recipe.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_smoke_recipe_builds_bit_for_bit_and_the_manifest_round_trips(tmp_path):
    # both builds here: the cached one may come from another checkout (its provenance names its recipe path)
    first_dir = tmp_path / "first"
    assert _load_build_cli().main(["tomograms-smoke", "--output", str(first_dir)]) == 0
    manifest = read_manifest(first_dir)
    assert manifest.kind == "tomograms" and manifest.count == 4 and manifest.box_px == 64
    assert [t.split for t in manifest.tomograms] == ["train", "train", "val", "test"]
    assert [s.path for s in manifest.shards] == [t.tomogram for t in manifest.tomograms]
    assert [s.name for s in manifest.species] == ["tiny_dimer", "small_tripod", "medium_helix"]
    assert read_manifest(first_dir) == manifest
    again = tmp_path / "again"
    assert _load_build_cli().main(["tomograms-smoke", "--output", str(again)]) == 0
    files = sorted(p.relative_to(first_dir) for p in first_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == 1 + 4 * 8 + 3 * 2  # manifest, 8 files per tomogram, density + mask per species
    for rel in files:  # MRC and STAR headers carry a creation time: compare their contents
        if rel.suffix == ".mrc":
            a, b = read_mrc(first_dir / rel), read_mrc(again / rel)
            np.testing.assert_array_equal(a.data, b.data, err_msg=str(rel))
            assert a.voxel_size_angstrom == b.voxel_size_angstrom == 10.0
        elif rel.suffix == ".star":
            pd.testing.assert_frame_equal(read_coordinates(first_dir / rel), read_coordinates(again / rel))
        else:
            assert (first_dir / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_built_files_agree_with_each_other(smoke):
    dataset_dir, manifest = smoke
    species = {s.class_id: s for s in manifest.species}
    for entry in manifest.tomograms:
        tomogram = read_mrc(dataset_dir / entry.tomogram)
        assert tomogram.data.shape == tuple(entry.shape_zyx) == (32, 64, 64) and tomogram.voxel_size_angstrom == 10.0
        truth = read_coordinates(dataset_dir / entry.particles)
        star = read_coordinates(dataset_dir / entry.particles.replace(".csv", ".star"))
        pd.testing.assert_frame_equal(truth, star, check_dtype=False)
        assert (truth["tomo_name"] == entry.name).all() and len(truth) == 18
        shape = read_mrc(dataset_dir / entry.labels["shape"]).data
        instances = read_mrc(dataset_dir / entry.labels["instances"]).data
        sphere = read_mrc(dataset_dir / entry.labels["sphere"]).data
        np.testing.assert_array_equal(np.unique(instances), np.arange(len(truth) + 1))
        for j, row in truth.iterrows():  # each hit box holds its row's class in the shape labels, and its centre
            assert set(np.unique(shape[instances == j + 1])) - {0} == {row["class_id"]}
            centre = (int(row["z_px"]), int(row["y_px"]), int(row["x_px"]))
            assert sphere[centre] == row["class_id"] and instances[centre] == j + 1
        assert set(np.unique(sphere)) == {0, *species}
        clean = read_mrc(dataset_dir / entry.clean).data
        assert clean.max() > 0.5 and np.var(tomogram.data) > np.var(clean) * 0.5  # noisy at SNR 1
        pd.testing.assert_frame_equal(read_coordinates(dataset_dir / entry.annotations), truth)  # no noise in smoke


def test_annotation_noise_only_in_the_splits_asked_for(tmp_path):
    out = build_tomogram_dataset(_small_recipe(tmp_path), tmp_path / "ds")
    manifest = read_manifest(out)
    train, val = manifest.tomograms
    for entry, expected in ((train, 6), (val, 12)):
        truth = read_coordinates(out / entry.particles)
        annotations = read_coordinates(out / entry.annotations)
        assert len(truth) == 12 and len(annotations) == expected
        sphere = read_mrc(out / entry.labels["sphere"]).data
        species = recipe_species(load_tomogram_recipe(tmp_path / "recipe.yaml"), tmp_path / "recipe.yaml")
        np.testing.assert_array_equal(sphere, sphere_label_map(annotations, species, entry.shape_zyx))
    truth = read_coordinates(out / train.particles)
    annotations = read_coordinates(out / train.annotations)
    shifts = [
        np.min(np.linalg.norm(truth[["x_px", "y_px", "z_px"]].to_numpy() - a, axis=1))
        for a in annotations[["x_px", "y_px", "z_px"]].to_numpy()
    ]
    assert 0 < np.max(shifts) < 6  # jittered by about 1 px, each near a true particle


def test_a_missing_label_file_is_named_by_its_manifest_field(tmp_path):
    out = build_tomogram_dataset(_small_recipe(tmp_path, splits={"test": 1}), tmp_path / "ds")
    (out / read_manifest(out).tomograms[0].labels["shape"]).unlink()
    with pytest.raises(CryorayInputError, match=r"tomograms\[0\]\.labels\.shape") as err:
        read_manifest(out)
    assert "manifest.json" in str(err.value)


def test_bad_recipes_name_the_file_and_the_field(tmp_path):
    missing_map = _small_recipe(tmp_path, species=["tiny_dimer", {"name": "ghost", "map": "nothere.mrc"}])
    with pytest.raises(CryorayInputError, match=r"species\[1\]\.map") as err:
        build_tomogram_dataset(missing_map, tmp_path / "never")
    assert str(missing_map) in str(err.value) and "nothere.mrc" in str(err.value)
    assert not (tmp_path / "never").exists()  # nothing written before the inputs are checked
    with pytest.raises(CryorayInputError, match="snr_linear") as err:
        build_tomogram_dataset(_small_recipe(tmp_path, snr_linear=-0.1), tmp_path / "never")
    assert "recipe.yaml" in str(err.value)
    with pytest.raises(CryorayInputError, match="particles_per_species"):
        load_tomogram_recipe(_small_recipe(tmp_path, particles_per_species=[1, 2, 3]))
    with pytest.raises(CryorayInputError, match="unknown built-in"):
        load_tomogram_recipe(_small_recipe(tmp_path, species=["tiny_dimer", "dodecahedron"]))
    with pytest.raises(CryorayInputError, match="pdb"):
        load_tomogram_recipe(_small_recipe(tmp_path, species=[{"name": "x", "pdb": "a.pdb", "mask": "m.mrc"}]))


def test_default_recipe_fits_its_particles_and_needs_no_files(tmp_path):
    path = find_recipe("tomograms-default")
    recipe = load_tomogram_recipe(path)
    species = recipe_species(recipe, path)
    assert {s.size_group for s in species} == {"tiny", "small", "medium", "large"}
    assert recipe.splits.train == 6 and recipe.annotation_noise.missing_fraction == 0.2
    tomo = simulate_tomogram(species, recipe.shape_zyx, recipe.particles_per_species, seed=[recipe.seed, 0], ctf=recipe.ctf)
    assert len(tomo.particles) == 6 * recipe.particles_per_species


def test_shrec_recipe_species_follow_the_shrec_size_groups(shared_data):
    path = find_recipe("tomograms-shrec")
    recipe = load_tomogram_recipe(path)
    species = recipe_species(recipe, path)
    groups = {s.name: s.size_group for s in species}
    assert len(species) == 12 and [s.class_id for s in species] == list(range(1, 13))
    assert {n for n, g in groups.items() if g == "tiny"} == {"1s3x", "3qm1"}
    assert {n for n, g in groups.items() if g == "small"} == {"3gl1", "3h84"}
    assert {n for n, g in groups.items() if g == "large"} == {"4b4t", "4d8q"}
    assert min(s.radius_px for s in species) >= 2.0
    tomo = simulate_tomogram(species, recipe.shape_zyx, recipe.particles_per_species, seed=[recipe.seed, 0], snr_linear=None)
    assert len(tomo.particles) == 12 * recipe.particles_per_species
