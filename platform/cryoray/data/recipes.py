"""Named, seeded dataset recipes (``datasets/<name>.yaml``), the RELION importer, and dataset resolution by name.

Resolving or building a recipe dispatches on its ``kind``: particle recipes are built here, tomogram recipes by
``cryoray.data.tomogram_recipes``, which this module imports and which never imports it back.

A recipe builds the same dataset bit for bit from its seed: shard ``i`` is simulated from the seed
``(recipe seed, i)``, so shards build independently and memory stays bounded by one shard. Built datasets
live in ``$CRYORAY_DATA_DIR`` (default ``~/.cache/cryoray/datasets``); on a multi-node cluster point it at
shared storage every node can read.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cryoray import console
from cryoray.data.recipe_common import load_yaml_model, prepare_output, read_recipe_yaml
from cryoray.data.shards import PARTICLE_COLUMNS, write_particle_shard
from cryoray.data.tomogram_recipes import build_tomogram_dataset
from cryoray.errors import CryorayInputError
from cryoray.io.atomic import atomic_model_to_density
from cryoray.io.manifest import MANIFEST_NAME, DatasetManifest, read_manifest, write_manifest
from cryoray.io.mrc import check_mrc, open_stack_mmap, read_mrc, write_mrc
from cryoray.io.star import read_particles_star
from cryoray.physics.alignment import rotate_volume
from cryoray.physics.symmetry import SYMMETRY_PATTERN, symmetry_rotations
from cryoray.simulate.particles import simulate_particle_stack
from cryoray.simulate.phantom import builtin_phantom

REPO_ROOT = Path(__file__).resolve().parents[3]
GROUND_TRUTH_MAP = "ground_truth_map.mrc"


class PhantomSource(BaseModel):
    """The built-in chiral phantom: needs no external file."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["phantom"]
    box_px: int = Field(gt=7)
    voxel_size_angstrom: float = Field(gt=0)


class AtomicModelSource(BaseModel):
    """A PDB/mmCIF model rendered to a density map (path relative to the recipe file, or absolute)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["atomic_model"]
    path: str
    box_px: int = Field(gt=7)
    voxel_size_angstrom: float = Field(gt=0)


class MapSource(BaseModel):
    """An existing density map (.mrc) used as the ground truth."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["map"]
    path: str
    voxel_size_angstrom: float | None = Field(None, gt=0, description="only when the header lacks it")


class ParticleRecipe(BaseModel):
    """A simulated single-particle dataset."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    kind: Literal["particles"] = "particles"
    seed: int
    source: Annotated[PhantomSource | AtomicModelSource | MapSource, Field(discriminator="type")]
    n_images: int = Field(gt=0)
    images_per_shard: int = Field(4096, gt=0)
    snr_linear: float | None = Field(None, gt=0)
    snr_db: float | None = None
    ctf: bool = True
    max_shift_px: float = Field(0.0, ge=0)
    keep_clean_images: bool = Field(False, description="store the noiseless images too (denoiser training)")
    symmetry: str = Field(
        "C1",
        pattern=SYMMETRY_PATTERN,
        description="point group of the particle (C1, Cn, Dn, T, O, I): the source map is averaged over the group, "
        "and poses are scored modulo it",
    )

    @model_validator(mode="after")
    def _one_snr(self) -> ParticleRecipe:
        if self.snr_linear is not None and self.snr_db is not None:
            raise ValueError("give snr_linear or snr_db, not both (leave both out for noiseless images)")
        return self


def data_root() -> Path:
    """Where built datasets live."""
    return Path(os.environ.get("CRYORAY_DATA_DIR", Path.home() / ".cache" / "cryoray" / "datasets")).resolve()


def recipe_dirs() -> list[Path]:
    """Recipe folders searched in order: ./datasets, then the checkout's datasets/."""
    return [Path.cwd() / "datasets", REPO_ROOT / "datasets"]


def find_recipe(name: str) -> Path | None:
    for folder in recipe_dirs():
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


def known_recipes() -> list[str]:
    return sorted({p.stem for folder in recipe_dirs() if folder.is_dir() for p in folder.glob("*.yaml")})


def load_recipe(path: str | Path) -> ParticleRecipe:
    return load_yaml_model(path, ParticleRecipe, "recipe")


def build_recipe(recipe_path: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Build any recipe into `out_dir`: dispatch on its ``kind`` (particles, the default, or tomograms)."""
    raw = read_recipe_yaml(recipe_path)
    if isinstance(raw, dict) and raw.get("kind") == "tomograms":
        return build_tomogram_dataset(recipe_path, out_dir, overwrite)
    return build_particle_dataset(recipe_path, out_dir, overwrite)


def _resolve_source_path(recipe_path: Path, relative: str) -> Path:
    path = Path(relative)
    if not path.is_absolute():
        path = (recipe_path.parent / path).resolve()
    if not path.is_file():
        raise CryorayInputError(recipe_path, "source.path", "an existing file", str(path))
    return path


def _source_volume(recipe: ParticleRecipe, recipe_path: Path) -> tuple[np.ndarray, float, dict[str, str]]:
    source = recipe.source
    if isinstance(source, PhantomSource):
        return builtin_phantom(source.box_px), source.voxel_size_angstrom, {"source": "builtin phantom"}
    path = _resolve_source_path(recipe_path, source.path)
    if isinstance(source, AtomicModelSource):
        volume = atomic_model_to_density(path, source.voxel_size_angstrom, box_px=source.box_px)
        return volume, source.voxel_size_angstrom, {"source": "atomic model", "source_path": str(path)}
    mrc = read_mrc(path, voxel_size_angstrom=source.voxel_size_angstrom)
    return mrc.data, mrc.voxel_size_angstrom, {"source": "density map", "source_path": str(path)}


def build_particle_dataset(recipe_path: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Simulate the recipe's stack shard by shard into ``out_dir`` (manifest written last)."""
    recipe_path = Path(recipe_path).resolve()
    recipe = load_recipe(recipe_path)
    out_dir = Path(out_dir)
    prepare_output(out_dir, overwrite)
    volume, voxel, provenance = _source_volume(recipe, recipe_path)
    if recipe.symmetry != "C1":
        group = symmetry_rotations(recipe.symmetry, dtype=torch.float64)
        volume = rotate_volume(torch.from_numpy(np.asarray(volume, dtype=np.float64)), group).mean(0).float().numpy()
    write_mrc(out_dir / GROUND_TRUTH_MAP, volume, voxel, overwrite=True)
    shards = []
    starts = range(0, recipe.n_images, recipe.images_per_shard)
    for index, start in console.progress(enumerate(starts), len(starts), f"{recipe.name}: image shards simulated"):
        count = min(recipe.images_per_shard, recipe.n_images - start)
        stack = simulate_particle_stack(
            volume,
            voxel,
            count,
            snr_linear=recipe.snr_linear,
            snr_db=recipe.snr_db,
            ctf=recipe.ctf,
            max_shift_px=recipe.max_shift_px,
            seed=[recipe.seed, index],
        )
        table = _with_defaults(stack.particles)  # CTF-free images get neutral CTF columns (manifest.has_ctf is False)
        table["particle_index"] = np.arange(start, start + count)
        extra = {"clean_image": stack.clean_images} if recipe.keep_clean_images else None
        shards.append(write_particle_shard(out_dir, index, stack.images, table, extra))
    columns = dict(PARTICLE_COLUMNS)
    if recipe.keep_clean_images:
        columns["clean_image"] = "noiseless image (ground truth for denoising)"
    manifest = DatasetManifest(
        name=recipe.name,
        kind="particles",
        voxel_size_angstrom=voxel,
        box_px=int(volume.shape[-1]),
        count=recipe.n_images,
        shards=shards,
        columns={"image": "particle image (y, x), float32", **columns},
        ground_truth={"map": GROUND_TRUTH_MAP},
        provenance={"recipe": str(recipe_path), **recipe.model_dump(mode="json"), **provenance},
        seed=recipe.seed,
    )
    write_manifest(out_dir, manifest)
    return out_dir


def import_relion(
    star_path: str | Path,
    out_dir: str | Path,
    name: str | None = None,
    images_per_shard: int = 4096,
    ground_truth_map: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a RELION ``.star`` + ``.mrcs`` particle set into a cryoray dataset (images never all in memory)."""
    star_path = Path(star_path).resolve()
    table = read_particles_star(star_path)
    particles = table.particles
    if "defocus_u_angstrom" not in particles:
        raise CryorayInputError(star_path, "rlnDefocusU", "the CTF of every particle (rlnDefocusU/V/Angle)", "absent")
    for column, values in (("pixel_size_angstrom", particles["pixel_size_angstrom"]), ("box_px", particles["box_px"])):
        if values.nunique() != 1:
            raise CryorayInputError(
                star_path,
                column,
                "one value for all particles (import one optics setting at a time)",
                sorted(values.unique())[:4],
            )
    voxel = float(particles["pixel_size_angstrom"].iloc[0])
    box = int(particles["box_px"].iloc[0])
    for path in particles["image_path"].unique():  # every stack whole (truncation, NaN/Inf) before anything is written
        count, height, width = check_mrc(path, "stack", voxel).shape
        if (height, width) != (box, box):
            expected = f"{box} x {box} px images (rlnImageSize of {star_path.name})"
            raise CryorayInputError(path, "image size", expected, f"{height} x {width}")
        too_far = particles.loc[particles["image_path"] == path, "image_index"].max()
        if too_far >= count:
            raise CryorayInputError(star_path, "rlnImageName", f"indices within the {count} images of {path}", too_far + 1)
    if ground_truth_map is not None:
        check_mrc(ground_truth_map, "volume")
    out_dir = Path(out_dir)
    prepare_output(out_dir, overwrite)
    stacks = {path: open_stack_mmap(path, voxel_size_angstrom=voxel) for path in particles["image_path"].unique()}
    meta = particles.assign(particle_index=np.arange(len(particles)))
    shards = []
    starts = range(0, len(meta), images_per_shard)
    for index, start in console.progress(enumerate(starts), len(starts), f"{Path(star_path).name}: image shards imported"):
        chunk = meta.iloc[start : start + images_per_shard]
        images = np.stack([stacks[p].data[i] for p, i in zip(chunk["image_path"], chunk["image_index"])]).astype(np.float32)
        shards.append(write_particle_shard(out_dir, index, images, _with_defaults(chunk)))
    ground_truth = {}
    if ground_truth_map is not None:
        mrc = read_mrc(ground_truth_map)
        write_mrc(out_dir / GROUND_TRUTH_MAP, mrc.data, mrc.voxel_size_angstrom, overwrite=True)
        ground_truth["map"] = GROUND_TRUTH_MAP
    manifest = DatasetManifest(
        name=name or star_path.stem,
        kind="particles",
        voxel_size_angstrom=voxel,
        box_px=box,
        count=len(meta),
        shards=shards,
        columns={"image": "particle image (y, x), float32", **PARTICLE_COLUMNS},
        ground_truth=ground_truth,
        # Particles before ab-initio reconstruction have no orientations: their angle columns hold zeros.
        provenance={
            "source": "RELION import",
            "star": str(star_path),
            "poses": "from the STAR file" if table.has_poses else "absent",
        },
    )
    write_manifest(out_dir, manifest)
    return out_dir


def _with_defaults(chunk: pd.DataFrame) -> pd.DataFrame:
    """Fill the optional columns a STAR may lack (phase shift, shifts) with their neutral values."""
    chunk = chunk.copy()
    for column in PARTICLE_COLUMNS:
        if column not in chunk:
            chunk[column] = 0.0
    return chunk


def resolve_dataset(name_or_path: str) -> tuple[Path, DatasetManifest]:
    """A dataset directory, or a recipe name built on first use into ``data_root()/<name>``."""
    as_path = Path(name_or_path).expanduser()
    if (as_path / MANIFEST_NAME).is_file():
        return as_path.resolve(), read_manifest(as_path)
    recipe = find_recipe(name_or_path)
    if recipe is None:
        raise CryorayInputError(
            None,
            "--dataset",
            f"a dataset directory with {MANIFEST_NAME} or a recipe name ({', '.join(known_recipes())})",
            name_or_path,
        )
    target = data_root() / name_or_path
    if not (target / MANIFEST_NAME).is_file():
        staging = target.with_name(f".{target.name}.building-{os.getpid()}")
        build_recipe(recipe, staging, overwrite=True)
        if (target / MANIFEST_NAME).is_file():  # another process finished the same build first
            shutil.rmtree(staging)
        else:
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return target, read_manifest(target)
