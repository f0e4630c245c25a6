"""Named, seeded cryo-ET tomogram dataset recipes (``datasets/<name>.yaml`` with ``kind: tomograms``).

A recipe builds the same dataset bit for bit: tomogram ``i`` (counted over train, val, test in that
order) is simulated from the seed ``(recipe seed, i)`` and its annotation noise from
``(recipe seed, i, 1)``. File paths in a recipe are relative to the recipe file (as in the particle
recipes: ``../../shared/data/...`` from ``datasets/``) or absolute. A built dataset directory holds::

    manifest.json                      written last (kind "tomograms"; species and tomograms lists)
    tomograms/<name>.mrc               noisy tomogram (z, y, x) float32, voxel size in the header
    clean/<name>.mrc                   wedge-free, noise-free density (ground truth)
    labels/<name>_sphere.mrc           int8 class ids: balls painted from the annotation list
    labels/<name>_shape.mrc            int8 class ids: rotated species masks from the true list
    labels/<name>_instances.mrc        int16 row number + 1 of the true list inside its mask, 0 elsewhere
    particles/<name>.csv, .star        true particle list (x_px, y_px, z_px, class_id, rot/tilt/psi_deg)
    particles/<name>_annotations.csv   the annotation list (the true list unless the split has noise)
    species/<id>_<species>_density.mrc, _mask.mrc   each species at the tomogram voxel size

Tomogram names are ``<split>_<index within split, 3 digits>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cryoray import console
from cryoray.data.recipe_common import load_yaml_model, prepare_output
from cryoray.errors import CryorayInputError
from cryoray.io.manifest import DatasetManifest, ShardEntry, SpeciesEntry, Split, TomogramEntry, write_manifest
from cryoray.io.mrc import write_mrc
from cryoray.io.star import write_coordinates
from cryoray.simulate.tomogram import (
    BUILTIN_SPECIES,
    MASK_THRESHOLD_FRACTION,
    Species,
    TomogramCtf,
    annotation_noise,
    builtin_species,
    instance_map,
    shape_label_map,
    simulate_tomogram,
    species_from_atomic_model,
    species_from_map,
    species_from_mask,
    sphere_label_map,
)

SPLITS: tuple[Split, ...] = ("train", "val", "test")
PARTICLE_LIST_COLUMNS = {
    "x_px": "particle centre, x voxel index (0-based)",
    "y_px": "particle centre, y voxel index (0-based)",
    "z_px": "particle centre, z voxel index (0-based)",
    "class_id": "species class id (manifest species)",
    "rot_deg": "RELION ZYZ rot, degrees (pose: particle -> tomogram)",
    "tilt_deg": "RELION ZYZ tilt, degrees",
    "psi_deg": "RELION ZYZ psi, degrees",
    "tomo_name": "tomogram name",
}


class SpeciesFile(BaseModel):
    """A species from files: a density map (optionally with its mask), an atomic model, or a mask alone."""

    model_config = ConfigDict(extra="forbid")
    name: str
    map: str | None = None
    pdb: str | None = None
    mask: str | None = None
    file_voxel_size_angstrom: float | None = Field(None, gt=0, description="overrides the map/mask header voxel size")
    threshold_fraction: float = Field(MASK_THRESHOLD_FRACTION, gt=0, lt=1, description="mask = density > this × peak")

    @model_validator(mode="after")
    def _one_source(self) -> SpeciesFile:
        if self.map is not None and self.pdb is not None:
            raise ValueError("give map or pdb, not both")
        if self.pdb is not None and self.mask is not None:
            raise ValueError("a mask goes with a map (same frame), not with a pdb")
        if self.map is None and self.pdb is None and self.mask is None:
            raise ValueError("give a map, a pdb or a mask")
        return self


class AnnotationNoiseSettings(BaseModel):
    """Noise in the annotation lists of some splits: dropped particles and jittered positions."""

    model_config = ConfigDict(extra="forbid")
    missing_fraction: float = Field(default=0.0, ge=0, le=1)
    jitter_px: float = Field(default=0.0, ge=0, description="Gaussian standard deviation per axis, voxels")
    splits: list[Literal["train", "val", "test"]] = ["train"]


class SplitCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: int = Field(0, ge=0)
    val: int = Field(0, ge=0)
    test: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _some(self) -> SplitCounts:
        if self.train + self.val + self.test < 1:
            raise ValueError("at least one tomogram")
        return self


class TomogramRecipe(BaseModel):
    """A simulated tomogram dataset (see `cryoray.simulate.tomogram` for the image model)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    kind: Literal["tomograms"]
    seed: int
    voxel_size_angstrom: float = Field(gt=0)
    shape_zyx: list[int] = Field(min_length=3, max_length=3)
    species: Literal["builtin"] | list[str | SpeciesFile] = Field(
        description="'builtin' (all built-in shapes), or a list of built-in names and file species; class ids 1, 2, ... in order"
    )
    particles_per_species: int | list[int] = Field(description="per tomogram: one number, or one per species")
    splits: SplitCounts
    tilt_range_deg: tuple[float, float] = (-60.0, 60.0)
    tilt_step_deg: float | None = Field(2.0, gt=0, description="None: a continuous wedge")
    snr_linear: float | None = Field(None, gt=0, description="var(signal after wedge) / var(noise); None: noiseless")
    ctf: TomogramCtf | None = None
    slab_thickness_px: int | None = Field(None, gt=0)
    annotation_noise: AnnotationNoiseSettings = AnnotationNoiseSettings()

    @field_validator("shape_zyx")
    @classmethod
    def _shape(cls, value: list[int]) -> list[int]:
        if any(n < 8 for n in value):
            raise ValueError("every size must be at least 8")
        return value

    @field_validator("species")
    @classmethod
    def _builtin_names(cls, value: str | list[str | SpeciesFile]) -> str | list[str | SpeciesFile]:
        if isinstance(value, list):
            if not value:
                raise ValueError("at least one species")
            unknown = [v for v in value if isinstance(v, str) and v not in BUILTIN_SPECIES]
            if unknown:
                raise ValueError(f"unknown built-in species {unknown}; known: {list(BUILTIN_SPECIES)}")
        return value

    @field_validator("ctf", mode="before")
    @classmethod
    def _ctf_switch(cls, value: object) -> object:
        """``ctf: true`` takes the default CTF, ``ctf: false`` none."""
        if value is True:
            return {}
        return None if value is False else value

    @field_validator("tilt_range_deg")
    @classmethod
    def _tilt_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not -90.0 <= value[0] < value[1] <= 90.0:
            raise ValueError("need -90 <= min < max <= 90")
        return value

    @model_validator(mode="after")
    def _counts(self) -> TomogramRecipe:
        n_species = len(BUILTIN_SPECIES) if self.species == "builtin" else len(self.species)
        counts = self.particles_per_species
        if isinstance(counts, list) and len(counts) != n_species:
            raise ValueError(f"particles_per_species: one count per species ({n_species}), got {len(counts)}")
        if any(c < 0 for c in (counts if isinstance(counts, list) else [counts])):
            raise ValueError("particles_per_species: counts must be >= 0")
        return self


def load_tomogram_recipe(path: str | Path) -> TomogramRecipe:
    """Read and validate a tomogram recipe; every problem in one `CryorayInputError` naming the file."""
    return load_yaml_model(path, TomogramRecipe, "tomogram recipe")


def _resolve(recipe_path: Path, relative: str, field: str) -> Path:
    path = Path(relative)
    if not path.is_absolute():
        path = (recipe_path.parent / path).resolve()
    if not path.is_file():
        raise CryorayInputError(recipe_path, field, "an existing file (relative to the recipe, or absolute)", str(path))
    return path


def recipe_species(recipe: TomogramRecipe, recipe_path: Path) -> list[Species]:
    """The recipe's species at its voxel size, class ids 1, 2, ... in the order listed."""
    voxel = recipe.voxel_size_angstrom
    if recipe.species == "builtin":
        return builtin_species(None, voxel)
    species = []
    for index, entry in enumerate(recipe.species):
        class_id = index + 1
        if isinstance(entry, str):
            species.extend(builtin_species([entry], voxel, first_class_id=class_id))
            continue
        where = f"species[{index}]"
        files = {
            key: _resolve(recipe_path, getattr(entry, key), f"{where}.{key}")
            for key in ("map", "pdb", "mask")
            if getattr(entry, key) is not None
        }
        if "map" in files:
            built = species_from_map(
                files["map"],
                class_id,
                voxel,
                entry.name,
                entry.file_voxel_size_angstrom,
                files.get("mask"),
                entry.file_voxel_size_angstrom,
                entry.threshold_fraction,
            )
        elif "pdb" in files:
            built = species_from_atomic_model(
                files["pdb"], class_id, voxel, entry.name, threshold_fraction=entry.threshold_fraction
            )
        else:
            built = species_from_mask(files["mask"], class_id, voxel, entry.name, entry.file_voxel_size_angstrom)
        species.append(built)
    return species


def _tomogram_plan(recipe: TomogramRecipe) -> list[tuple[Split, str]]:
    """(split, name) for every tomogram, in seed order."""
    counts = recipe.splits.model_dump()
    return [(split, f"{split}_{i:03d}") for split in SPLITS for i in range(counts[split])]


def build_tomogram_dataset(recipe_path: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Simulate the recipe's tomograms with labels and particle lists into `out_dir` (manifest written last)."""
    recipe_path = Path(recipe_path).resolve()
    recipe = load_tomogram_recipe(recipe_path)
    species = recipe_species(recipe, recipe_path)
    out_dir = Path(out_dir)
    prepare_output(out_dir, overwrite)
    for folder in ("tomograms", "clean", "labels", "particles", "species"):
        (out_dir / folder).mkdir()
    voxel = recipe.voxel_size_angstrom
    shape = tuple(recipe.shape_zyx)
    ground_truth: dict[str, str] = {}
    for kind in species:
        stem = f"species/{kind.class_id:02d}_{kind.name}"
        write_mrc(out_dir / f"{stem}_density.mrc", kind.density, voxel)
        write_mrc(out_dir / f"{stem}_mask.mrc", kind.mask.astype(np.int8), voxel, dtype=np.int8)
        ground_truth |= {
            f"species_{kind.class_id}_density": f"{stem}_density.mrc",
            f"species_{kind.class_id}_mask": f"{stem}_mask.mrc",
        }
    noise = recipe.annotation_noise
    entries, shards = [], []
    plan = _tomogram_plan(recipe)
    for index, (split, name) in console.progress(enumerate(plan), len(plan), f"{recipe.name}: tomograms simulated"):
        simulated = simulate_tomogram(
            species,
            shape,
            recipe.particles_per_species,
            seed=[recipe.seed, index],
            tilt_range_deg=recipe.tilt_range_deg,
            tilt_step_deg=recipe.tilt_step_deg,
            snr_linear=recipe.snr_linear,
            ctf=recipe.ctf,
            slab_thickness_px=recipe.slab_thickness_px,
        )
        truth = simulated.particles.assign(tomo_name=name)
        annotations = truth
        if split in noise.splits and (noise.missing_fraction > 0 or noise.jitter_px > 0):
            annotations = annotation_noise(
                truth, noise.missing_fraction, noise.jitter_px, np.random.default_rng([recipe.seed, index, 1])
            )
        files = {
            "tomogram": f"tomograms/{name}.mrc",
            "clean": f"clean/{name}.mrc",
            "particles": f"particles/{name}.csv",
            "annotations": f"particles/{name}_annotations.csv",
        }
        labels = {kind: f"labels/{name}_{kind}.mrc" for kind in ("sphere", "shape", "instances")}
        write_mrc(out_dir / files["tomogram"], simulated.tomogram, voxel)
        write_mrc(out_dir / files["clean"], simulated.clean, voxel)
        write_coordinates(out_dir / files["particles"], truth)
        write_coordinates(out_dir / f"particles/{name}.star", truth)
        write_coordinates(out_dir / files["annotations"], annotations)
        write_mrc(out_dir / labels["sphere"], sphere_label_map(annotations, species, shape), voxel, dtype=np.int8)
        write_mrc(out_dir / labels["shape"], shape_label_map(truth, species, shape), voxel, dtype=np.int8)
        write_mrc(out_dir / labels["instances"], instance_map(truth, species, shape), voxel, dtype=np.int16)
        entries.append(TomogramEntry(name=name, split=split, shape_zyx=list(shape), labels=labels, **files))
        shards.append(ShardEntry(path=files["tomogram"], count=1))
    manifest = DatasetManifest(
        name=recipe.name,
        kind="tomograms",
        voxel_size_angstrom=voxel,
        box_px=max(shape),
        count=len(entries),
        shards=shards,
        columns=PARTICLE_LIST_COLUMNS,
        ground_truth=ground_truth,
        provenance={"recipe": str(recipe_path), **recipe.model_dump(mode="json")},
        seed=recipe.seed,
        species=[
            SpeciesEntry(class_id=s.class_id, name=s.name, radius_px=s.radius_px, size_group=s.size_group, source=s.source)
            for s in species
        ],
        tomograms=entries,
    )
    write_manifest(out_dir, manifest)
    return out_dir
