"""Datasets: recipes build reproducibly, RELION imports keep images and poses, manifests are checked, and
Ray Data streams every image exactly once per epoch across workers, in a new order each epoch."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import ray
import starfile
import yaml
from cryoray.data.particles import iter_particle_batches, particle_stream
from cryoray.data.ray_streams import ray_dataset
from cryoray.data.recipes import (
    build_particle_dataset,
    find_recipe,
    import_relion,
    resolve_dataset,
)
from cryoray.data.shards import read_particle_shard
from cryoray.errors import CryorayInputError
from cryoray.io.manifest import read_manifest
from cryoray.io.mrc import read_mrc
from cryoray.io.star import read_particles_star
from cryoray.methods.reconstruct import KnownPoseReconstruction, ReconstructConfig
from cryoray.session import start_local_ray


@pytest.fixture(scope="module")
def smoke_dataset():
    return resolve_dataset("particles-smoke")


def test_a_recipe_builds_bit_for_bit_from_its_seed(tmp_path, smoke_dataset):
    rebuilt = build_particle_dataset(find_recipe("particles-smoke"), tmp_path / "again")
    first_dir, manifest = smoke_dataset
    assert read_manifest(rebuilt) == manifest
    for shard in manifest.shards:
        images_a, meta_a = read_particle_shard(first_dir / shard.path)
        images_b, meta_b = read_particle_shard(rebuilt / shard.path)
        np.testing.assert_array_equal(images_a, images_b)
        assert meta_a.equals(meta_b)
    assert manifest.count == 1024 and manifest.box_px == 24 and manifest.voxel_size_angstrom == 8.0
    assert read_mrc(first_dir / manifest.ground_truth["map"]).voxel_size_angstrom == 8.0


def test_a_recipe_without_ctf_builds_with_neutral_ctf_columns_and_says_so(tmp_path, smoke_dataset):
    recipe = tmp_path / "noctf.yaml"
    recipe.write_text(
        "name: noctf\nkind: particles\nseed: 0\nsource: {type: phantom, box_px: 16, voxel_size_angstrom: 5.0}\n"
        "n_images: 8\nctf: false\n"
    )
    manifest = read_manifest(build_particle_dataset(recipe, tmp_path / "noctf"))
    _, meta = read_particle_shard(tmp_path / "noctf" / manifest.shards[0].path)
    assert manifest.has_ctf is False and (meta["defocus_u_angstrom"] == 0).all()
    assert smoke_dataset[1].has_ctf


def test_building_into_a_non_empty_folder_needs_overwrite(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(CryorayInputError, match="--overwrite"):
        build_particle_dataset(find_recipe("particles-smoke"), tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "user data"


def test_relion_import_keeps_images_poses_and_ctf(tmp_path, shared_data):
    star = shared_data / "cryodrgn" / "relion31.star"
    out = import_relion(star, tmp_path / "r31", images_per_shard=2)
    manifest = read_manifest(out)
    assert manifest.count == 5 and manifest.box_px == 256 and len(manifest.shards) == 3
    assert manifest.voxel_size_angstrom == pytest.approx(2.806)
    shards = [read_particle_shard(out / s.path) for s in manifest.shards]
    images = np.concatenate([images for images, _ in shards])
    np.testing.assert_array_equal(images, read_mrc(shared_data / "cryodrgn" / "relion31.mrcs", voxel_size_angstrom=2.806).data)
    particles = read_particles_star(star).particles
    for column in ("rot_deg", "tilt_deg", "psi_deg", "defocus_u_angstrom", "shift_x_angstrom"):
        stored = np.concatenate([meta[column].to_numpy() for _, meta in shards])
        np.testing.assert_allclose(stored, particles[column].to_numpy(), rtol=1e-6, err_msg=column)


def test_relion_import_of_unposed_particles_is_marked_and_refused_by_known_pose_reconstruction(tmp_path, shared_data):
    star = starfile.read(shared_data / "cryodrgn" / "relion31.star")
    star["particles"] = star["particles"].drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"])
    star["particles"]["rlnImageName"] = star["particles"]["rlnImageName"].str.replace(
        "relion31.mrcs", str(shared_data / "cryodrgn" / "relion31.mrcs")
    )
    unposed = tmp_path / "unposed.star"
    starfile.write(star, unposed)
    out = import_relion(unposed, tmp_path / "unposed")
    assert read_manifest(out).has_poses is False  # ab-initio methods train on it; nothing scores poses against zeros
    assert read_manifest(import_relion(shared_data / "cryodrgn" / "relion31.star", tmp_path / "posed")).has_poses
    with pytest.raises(CryorayInputError, match="manifest.json: poses"):
        KnownPoseReconstruction().check_dataset(out, read_manifest(out), ReconstructConfig())


def test_relion_import_without_a_pixel_size_names_the_missing_field(tmp_path, shared_data):
    with pytest.raises(CryorayInputError, match="toy_projections.star: rlnImagePixelSize"):
        import_relion(shared_data / "cryodrgn" / "toy_projections.star", tmp_path / "toy")
    assert not (tmp_path / "toy").exists()


def test_relion_import_refuses_an_index_past_the_end_of_the_stack(tmp_path, shared_data):
    text = (shared_data / "cryodrgn" / "relion31.star").read_text()
    stack = shared_data / "cryodrgn" / "relion31.mrcs"
    bad = tmp_path / "bad.star"
    bad.write_text(text.replace("000005@", "000009@").replace("relion31.mrcs", str(stack)))
    with pytest.raises(CryorayInputError, match="bad.star.*rlnImageName"):
        import_relion(bad, tmp_path / "out")


def test_a_manifest_with_a_missing_shard_or_wrong_count_is_refused(tmp_path, smoke_dataset):
    source, _ = smoke_dataset
    raw = json.loads((source / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(CryorayInputError, match="manifest.json: shards: expected every listed shard file to exist"):
        read_manifest(tmp_path)
    raw["count"] = 5
    raw["shards"] = [{"path": str(source / raw["shards"][0]["path"]), "count": 256}]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(CryorayInputError, match="count: expected the sum of shard counts"):
        read_manifest(tmp_path)


@pytest.fixture(scope="module")
def local_ray():
    start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
def test_streaming_split_delivers_every_image_once_and_reshuffles_each_epoch(local_ray, smoke_dataset):
    dataset_dir, manifest = smoke_dataset
    ds = ray_dataset(particle_stream(dataset_dir, manifest))
    epochs = []
    for _ in range(2):
        splits = ds.streaming_split(2, equal=True)
        seen: list[list[int]] = [[], []]

        def consume(rank: int, splits: list = splits, seen: list[list[int]] = seen) -> None:
            for batch in iter_particle_batches(splits[rank], 64, device="cpu", shuffle_buffer_images=128):
                assert batch["image"].shape[1:] == (24, 24) and batch["rotation"].shape[1:] == (3, 3)
                seen[rank].extend(batch["particle_index"].long().tolist())

        threads = [threading.Thread(target=consume, args=(r,)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(seen[0]) == len(seen[1]) == 512
        assert sorted(seen[0] + seen[1]) == list(range(1024))
        epochs.append(seen[0] + seen[1])
    assert epochs[0] != epochs[1]


@pytest.mark.ray
def test_a_pipeline_quiets_its_own_progress_bars_not_the_process(local_ray, smoke_dataset):
    process_context = ray.data.DataContext.get_current()
    before = process_context.enable_progress_bars
    ds = ray_dataset(particle_stream(*smoke_dataset))
    assert ds.context.enable_progress_bars is False
    assert process_context.enable_progress_bars is before


def test_the_atomic_model_recipe_builds_from_shared_data(tmp_path, shared_data):
    recipe = yaml.safe_load(find_recipe("particles-4ake").read_text())
    recipe["source"]["path"] = str(shared_data / "mdanalysis_workshop" / "4ake.pdb.gz")
    recipe |= {"n_images": 64, "images_per_shard": 32}
    small = tmp_path / "4ake-small.yaml"
    small.write_text(yaml.safe_dump(recipe))
    manifest = read_manifest(build_particle_dataset(small, tmp_path / "out"))
    assert manifest.box_px == 64 and manifest.voxel_size_angstrom == 1.5 and manifest.count == 64
    assert manifest.provenance["source"] == "atomic model"
    density = read_mrc(tmp_path / "out" / manifest.ground_truth["map"]).data
    assert density.shape == (64, 64, 64) and density.max() > 0
