"""Import real tomograms and their particle picks as a cryoray ``tomograms`` dataset (RobPicker trains on it).

The output has the layout and manifest of a simulated tomograms dataset
(`cryoray.data.tomogram_recipes`), so every tool that reads one reads an import, with these differences:

* no ``clean/`` volumes and no ``species/`` files: real data have no noise-free density and no
  species maps;
* ``labels/<name>_shape.mrc`` is a copy of the sphere map: a real particle's shape is unknown, so
  validation (RobPicker's ``val_labels: shape``) runs on sphere labels. The manifest's provenance
  says so;
* ``particles/<name>.csv`` and ``particles/<name>_annotations.csv`` hold the same list: real
  annotations are the only truth there is;
* labels are balls: every voxel whose centre lies within the species radius (``radius_angstrom`` /
  voxel size, the manifest's ``radius_px``) of a pick rounded to the nearest voxel.
  ``labels/<name>_instances.mrc`` holds row number + 1 of the particle list in its ball (for the
  hit-box rule), ``labels/<name>_sphere.mrc`` its class id; later rows win where balls overlap;
* a tomogram that already is an uncompressed float32 MRC with the dataset's voxel size in its header
  is hard-linked instead of copied when the file system allows: the dataset file and the original are
  then one file, so treat the dataset as read-only. The import itself never writes to an input, and
  refuses an output folder that holds one (the output is emptied first).

Import spec (YAML; paths relative to the spec file, or absolute)::

    name: my-ribosomes
    voxel_size_angstrom: 10.0         # optional: else the MRC headers, which must agree within 1 %
    coordinates_binning: 1.0          # coordinates are in voxels of the tomogram / this factor
    species:                          # class_id -> name and radius (sphere labels, size groups)
      - {class_id: 1, name: ribosome, radius_angstrom: 130}
    tomograms:                        # at least one train, one val and one test tomogram
      - {tomogram: tomo01.mrc, particles: tomo01.star, split: train}
      - {tomogram: tomo02.mrc, particles: tomo02.csv, split: val, name: t02}
      - {tomogram: tomo03.mrc, particles: all.star, split: test, tomo_name: TS_03}

Coordinates files are what `cryoray.io.star.read_coordinates` reads (.star with rlnCoordinateX/Y/Z,
.csv with x/y/z); a file without a class column is class 1. ``tomo_name`` selects the rows of a
file that holds several tomograms (rlnTomoName). Coordinates are divided by ``coordinates_binning``
(the half-voxel difference between binned and unbinned voxel centres, ≤ 0.5 binned voxel, is ignored).

Why a test split is required: the job runner always calls RobPicker's ``test`` hook after training,
and it scores the ``test`` split, refusing an empty one (`cryoray.data.patches.split_entries`).

The size group of a species is `cryoray.simulate.tomogram.size_group_for_radius` of its ``radius_angstrom``.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mrcfile
import mrcfile.mrcfile
import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cryoray.data.recipe_common import load_yaml_model, prepare_output
from cryoray.data.tomogram_recipes import PARTICLE_LIST_COLUMNS, SPLITS
from cryoray.errors import CryorayInputError
from cryoray.io.manifest import DatasetManifest, ShardEntry, SpeciesEntry, TomogramEntry, write_manifest
from cryoray.io.mrc import check_mrc, read_mrc, write_mrc
from cryoray.io.star import read_coordinates, write_coordinates
from cryoray.physics import sphere_mask
from cryoray.simulate.tomogram import MAX_CLASS_ID, Species, instance_map, size_group_for_radius

VOXEL_SIZE_TOLERANCE = 0.01  # relative: tomograms of one dataset share one voxel size
MAX_PARTICLES_PER_TOMOGRAM = int(np.iinfo(np.int16).max)  # instance maps are stored as int16
MIN_SHAPE_PX = 8  # the label painters' smallest volume
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LABELS_NOTE = (
    "real data: particle shapes are unknown, so labels/<name>_shape.mrc is the sphere map and validation uses "
    "sphere labels; sphere and instance maps hold a ball of the species radius per pick; particles = annotations"
)


class ImportSpecies(BaseModel):
    """One particle species of the imported picks."""

    model_config = ConfigDict(extra="forbid")
    class_id: int = Field(ge=1, le=MAX_CLASS_ID, description="the class column of the coordinates files")
    name: str = Field(min_length=1)
    radius_angstrom: float = Field(gt=0, description="radius of the sphere labels and instance balls")


class ImportTomogram(BaseModel):
    """One tomogram, its picks and its split."""

    model_config = ConfigDict(extra="forbid")
    tomogram: str
    particles: str = Field(description="coordinates file (.star or .csv) in the tomogram's voxels × coordinates_binning")
    split: Literal["train", "val", "test"]
    name: str | None = Field(None, description="dataset name of the tomogram; default: its file name without extension")
    tomo_name: str | None = Field(None, description="keep only the rows with this tomo_name / rlnTomoName")

    @property
    def dataset_name(self) -> str:
        return self.name or Path(self.tomogram.removesuffix(".gz")).stem


class TomogramImportSpec(BaseModel):
    """The import spec: species, tomograms with their picks and splits, optional voxel size and binning."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    voxel_size_angstrom: float | None = Field(None, gt=0, description="overrides the MRC headers")
    coordinates_binning: float = Field(1.0, gt=0, description="tomogram position = file position / this")
    species: list[ImportSpecies] = Field(min_length=1)
    tomograms: list[ImportTomogram] = Field(min_length=1)

    @field_validator("species")
    @classmethod
    def _distinct_species(cls, value: list[ImportSpecies]) -> list[ImportSpecies]:
        for key in ("class_id", "name"):
            values = [getattr(s, key) for s in value]
            if len(set(values)) != len(values):
                raise ValueError(f"each {key} once, got {values}")
        return value

    @field_validator("tomograms")
    @classmethod
    def _names_and_splits(cls, value: list[ImportTomogram]) -> list[ImportTomogram]:
        names = [t.dataset_name for t in value]
        bad = [n for n in names if not _NAME_PATTERN.fullmatch(n)]
        if bad:
            raise ValueError(f"names of letters, digits, '.', '_', '-' (set name:), got {bad}")
        if len(set(names)) != len(names):
            raise ValueError(f"distinct tomogram names (set name: where file names repeat), got {names}")
        missing = [s for s in SPLITS if s not in {t.split for t in value}]
        if missing:
            raise ValueError(
                f"at least one train, one val and one test tomogram (RobPicker trains on train, validates on val "
                f"and scores test after training), no {' or '.join(missing)}"
            )
        return value


@dataclass(frozen=True)
class _Planned:
    """One tomogram checked from its header and picks, before anything is written."""

    entry: ImportTomogram
    tomogram_path: Path
    particles_path: Path
    shape_zyx: tuple[int, int, int]
    header_voxel_angstrom: float
    uncompressed_float32: bool
    particles: pd.DataFrame


def load_import_spec(path: str | Path) -> TomogramImportSpec:
    """Read and validate an import spec; every problem in one `CryorayInputError` naming the file."""
    return load_yaml_model(path, TomogramImportSpec, "tomogram import spec")


def _input_file(spec_path: Path | None, relative: str, field: str) -> Path:
    """An input path, relative to the spec file (or to the working directory for a spec object)."""
    base = spec_path.parent if spec_path is not None else Path.cwd()
    path = (base / relative).resolve()
    if not path.is_file():
        raise CryorayInputError(spec_path, field, "an existing file (relative to the spec, or absolute)", str(path))
    return path


def _header(path: Path) -> tuple[tuple[int, int, int], float, bool]:
    """Shape (z, y, x), header voxel size (x, Å; 0 when unset) and whether the data are plain float32 on disk, after
    checking the whole file (truncation, dimensionality, NaN/Inf) before anything is written."""
    shape = check_mrc(path, "volume", need_voxel_size=False, min_side_px=MIN_SHAPE_PX).shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read_mrc reports header oddities when the data are read
        with mrcfile.open(str(path), mode="r", permissive=True, header_only=True) as mrc:
            with np.errstate(divide="ignore", invalid="ignore"):
                voxel = float(mrc.voxel_size.x)
            plain = type(mrc) is mrcfile.mrcfile.MrcFile and int(mrc.header.mode) == 2
    return shape, voxel if math.isfinite(voxel) else 0.0, plain


def _picks(
    spec: TomogramImportSpec, index: int, path: Path, shape_zyx: tuple[int, int, int], tomogram_path: Path
) -> pd.DataFrame:
    """The tomogram's picks in its voxels, checked: known classes, inside the volume, few enough for int16 ids."""
    entry = spec.tomograms[index]
    table = read_coordinates(path)
    if entry.tomo_name is not None:
        if "tomo_name" not in table:
            expected = f"a tomo_name / rlnTomoName column (the spec selects {entry.tomo_name!r})"
            raise CryorayInputError(path, "tomo_name", expected, "no such column")
        found = sorted(table["tomo_name"].unique())
        table = table[table["tomo_name"] == entry.tomo_name]
        if table.empty:
            expected = f"rows of tomogram {entry.tomo_name!r} (tomograms[{index}].tomo_name)"
            raise CryorayInputError(path, "tomo_name", expected, found[:5])
    elif "tomo_name" in table and table["tomo_name"].nunique() > 1:
        expected = f"picks of one tomogram (set tomograms[{index}].tomo_name in the spec to choose)"
        raise CryorayInputError(path, "tomo_name", expected, sorted(table["tomo_name"].unique())[:5])
    rows = table.index.to_numpy() + 1  # 1-based data rows of the file
    known = sorted(s.class_id for s in spec.species)
    unknown = ~table["class_id"].isin(known).to_numpy()
    if unknown.any():
        row = int(np.argmax(unknown))
        expected = f"a class id listed under species in the spec {known}"
        raise CryorayInputError(path, "class_id", expected, f"{table['class_id'].iloc[row]} in row {rows[row]}")
    table = table.reset_index(drop=True).assign(tomo_name=entry.dataset_name)
    for axis in ("x_px", "y_px", "z_px"):
        table[axis] = table[axis] / spec.coordinates_binning
    for axis, size in zip(("z_px", "y_px", "x_px"), shape_zyx):
        voxel_index = np.rint(table[axis].to_numpy())  # the voxel the centre falls in
        outside = (voxel_index < 0) | (voxel_index > size - 1)
        if outside.any():
            row = int(np.argmax(outside))
            expected = (
                f"a position in [0, {size - 1}] ({tomogram_path.name}, "
                f"after dividing by coordinates_binning {spec.coordinates_binning})"
            )
            raise CryorayInputError(path, axis, expected, f"{table[axis].iloc[row]:g} in row {rows[row]}")
    if len(table) > MAX_PARTICLES_PER_TOMOGRAM:
        expected = f"at most {MAX_PARTICLES_PER_TOMOGRAM} particles per tomogram (instance ids are stored as int16)"
        raise CryorayInputError(path, "rows", expected, len(table))
    return table


def _plan(spec: TomogramImportSpec, spec_path: Path | None) -> tuple[list[_Planned], float]:
    """Check every input that can be checked without reading volumes; the dataset's voxel size."""
    planned = []
    for index, entry in enumerate(spec.tomograms):
        path = _input_file(spec_path, entry.tomogram, f"tomograms[{index}].tomogram")
        particles_path = _input_file(spec_path, entry.particles, f"tomograms[{index}].particles")
        shape, header_voxel, plain = _header(path)
        particles = _picks(spec, index, particles_path, shape, path)
        planned.append(_Planned(entry, path, particles_path, shape, header_voxel, plain, particles))
    for split in ("train", "val"):
        if not any(len(p.particles) for p in planned if p.entry.split == split):
            expected = f"at least one particle in the {split} split (patches are centred on particles)"
            raise CryorayInputError(spec_path, "tomograms", expected, "none")
    if spec.voxel_size_angstrom is not None:
        return planned, spec.voxel_size_angstrom
    reference = planned[0]
    for item in planned:
        if item.header_voxel_angstrom <= 0:
            expected = "a voxel size in the header, or voxel_size_angstrom in the spec"
            raise CryorayInputError(item.tomogram_path, "voxel size", expected, "unset")
        if abs(item.header_voxel_angstrom / reference.header_voxel_angstrom - 1) > VOXEL_SIZE_TOLERANCE:
            expected = (
                f"within {VOXEL_SIZE_TOLERANCE:.0%} of {reference.header_voxel_angstrom} Å ({reference.tomogram_path.name}), "
                "or voxel_size_angstrom in the spec"
            )
            raise CryorayInputError(item.tomogram_path, "voxel size", expected, f"{item.header_voxel_angstrom} Å")
    return planned, reference.header_voxel_angstrom


def _ball_species(species: ImportSpecies, voxel_size_angstrom: float, spec_path: Path | None, index: int) -> Species:
    """A species whose density and mask are a ball of its radius: what `instance_map` paints for a real pick."""
    radius_px = species.radius_angstrom / voxel_size_angstrom
    if radius_px < 1:
        expected = f"at least one voxel ({voxel_size_angstrom} Å) so that the labels hold the particle"
        raise CryorayInputError(spec_path, f"species[{index}].radius_angstrom", expected, species.radius_angstrom)
    half = math.ceil(radius_px) + 1  # Species wants the mask inside the box's inscribed sphere minus a voxel
    ball = sphere_mask(2 * half + 1, radius_px, 3, dtype=torch.bool).numpy()
    return Species(species.class_id, species.name, ball.astype(np.float32), ball, voxel_size_angstrom)


def _place_tomogram(item: _Planned, target: Path, voxel_size_angstrom: float) -> bool:
    """Hard-link the tomogram when it already is the stored format, else write it as float32; True when linked."""
    if item.uncompressed_float32 and np.float32(item.header_voxel_angstrom) == np.float32(voxel_size_angstrom):
        try:
            os.link(item.tomogram_path, target)
            return True
        except OSError:  # another file system, or linking not permitted: copy
            pass
    write_mrc(target, read_mrc(item.tomogram_path, voxel_size_angstrom=voxel_size_angstrom).data, voxel_size_angstrom)
    return False


def import_tomograms(spec: str | Path | TomogramImportSpec, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Turn real tomograms and their picks into a tomograms dataset in `out_dir` (manifest written last).

    `spec` is a spec file or a `TomogramImportSpec` (whose relative paths are then relative to the working
    directory). Every input (whole tomograms included: truncation, NaN/Inf) and the picks are checked before
    `out_dir` is touched; an existing non-empty `out_dir` is replaced only with `overwrite=True`.
    """
    spec_path: Path | None = None
    if not isinstance(spec, TomogramImportSpec):
        spec_path = Path(spec).resolve()
        spec = load_import_spec(spec_path)
    planned, voxel = _plan(spec, spec_path)
    species = [_ball_species(s, voxel, spec_path, i) for i, s in enumerate(spec.species)]
    out_dir = Path(out_dir)
    inputs = [spec_path] + [p for item in planned for p in (item.tomogram_path, item.particles_path)]
    inside = [p for p in inputs if p is not None and p.is_relative_to(out_dir.resolve())]
    if inside:  # the output folder is emptied first: never where the inputs live
        raise CryorayInputError(out_dir, "output", "a folder that holds none of the import's inputs", str(inside[0]))
    prepare_output(out_dir, overwrite)
    for folder in ("tomograms", "labels", "particles"):
        (out_dir / folder).mkdir()
    entries, shards, sources = [], [], []
    for item in planned:
        name = item.entry.dataset_name
        files = {
            "tomogram": f"tomograms/{name}.mrc",
            "particles": f"particles/{name}.csv",
            "annotations": f"particles/{name}_annotations.csv",
        }
        labels = {kind: f"labels/{name}_{kind}.mrc" for kind in ("sphere", "shape", "instances")}
        linked = _place_tomogram(item, out_dir / files["tomogram"], voxel)
        particles = item.particles
        for rel in (files["particles"], f"particles/{name}.star", files["annotations"]):
            write_coordinates(out_dir / rel, particles)
        # a ball needs no pose: identity angles paint the digitised ball exactly, centred on the rounded position
        unrotated = particles[["x_px", "y_px", "z_px", "class_id"]].assign(rot_deg=0.0, tilt_deg=0.0, psi_deg=0.0)
        instances = instance_map(unrotated, species, item.shape_zyx)
        write_mrc(out_dir / labels["instances"], instances, voxel, dtype=np.int16)
        class_of_instance = np.concatenate(([0], particles["class_id"])).astype(np.int8)  # int8: a volume-sized lookup
        spheres = class_of_instance[instances]  # the same balls, so sphere labels and hit boxes agree voxel for voxel
        for kind in ("sphere", "shape"):
            write_mrc(out_dir / labels[kind], spheres, voxel, dtype=np.int8)
        entries.append(TomogramEntry(name=name, split=item.entry.split, shape_zyx=list(item.shape_zyx), labels=labels, **files))
        shards.append(ShardEntry(path=files["tomogram"], count=1))
        sources.append({"name": name, "tomogram": str(item.tomogram_path), "linked": linked})
    present = set().union(*(p.particles.columns for p in planned))
    described = {**PARTICLE_LIST_COLUMNS, "score": "pick score from the coordinates file"}
    manifest = DatasetManifest(
        name=spec.name,
        kind="tomograms",
        voxel_size_angstrom=voxel,
        box_px=max(max(p.shape_zyx) for p in planned),
        count=len(entries),
        shards=shards,
        columns={column: meaning for column, meaning in described.items() if column in present},
        provenance={
            "source": "tomogram import",
            "spec": str(spec_path) if spec_path is not None else None,
            "labels": _LABELS_NOTE,
            "voxel_size_from": "spec" if spec.voxel_size_angstrom is not None else "MRC headers",
            "imported": sources,
            **spec.model_dump(mode="json"),
        },
        species=[
            SpeciesEntry(
                class_id=s.class_id,
                name=s.name,
                radius_px=s.radius_angstrom / voxel,
                size_group=size_group_for_radius(s.radius_angstrom),
                source=f"imported picks, radius {s.radius_angstrom} Å",
            )
            for s in spec.species
        ],
        tomograms=entries,
    )
    write_manifest(out_dir, manifest)
    return out_dir
