"""Dataset directories: ``manifest.json`` plus the shards Ray Data streams.

A dataset directory is self-describing: the manifest says what kind of data it holds, its voxel size and
box, how many items, which shard files hold them, which ground-truth files came with it and how it was
made (recipe, seed, source files), so a run can be reproduced from the manifest alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cryoray import __version__
from cryoray.errors import CryorayInputError
from cryoray.io.mrc import read_mrc

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION: Final = 1

DatasetKind = Literal["particles", "tomograms", "subtomograms"]
SizeGroup = Literal["tiny", "small", "medium", "large"]  # SHREC-like particle size groups
Split = Literal["train", "val", "test"]  # the splits of a tomograms dataset


class ShardEntry(BaseModel):
    """One shard file, relative to the dataset directory, and the number of items in it."""

    model_config = ConfigDict(extra="forbid")
    path: str
    count: int = Field(gt=0)


class SpeciesEntry(BaseModel):
    """One particle species of a tomograms dataset (radius: the equivalent-volume radius of its mask)."""

    model_config = ConfigDict(extra="forbid")
    class_id: int = Field(ge=1)
    name: str
    radius_px: float = Field(gt=0)
    size_group: SizeGroup
    source: str = ""


class TomogramEntry(BaseModel):
    """One tomogram and its ground-truth files, paths relative to the dataset directory."""

    model_config = ConfigDict(extra="forbid")
    name: str
    split: Split
    tomogram: str = Field(description="the (noisy) tomogram .mrc")
    shape_zyx: list[int] = Field(min_length=3, max_length=3)
    particles: str = Field(description="ground-truth particle list .csv (a .star next to it)")
    annotations: str = Field(description="the annotation list .csv the sphere labels were painted from")
    labels: dict[str, str] = Field(description="sphere / shape / instances -> label map .mrc")
    clean: str | None = Field(None, description="wedge-free, noise-free density .mrc")


class DatasetManifest(BaseModel):
    """The contents of ``manifest.json``."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str
    kind: DatasetKind
    voxel_size_angstrom: float = Field(gt=0)
    box_px: int = Field(gt=0)
    count: int = Field(gt=0)
    shards: list[ShardEntry] = Field(min_length=1)
    columns: dict[str, str] = Field(description="column name -> meaning, with units")
    ground_truth: dict[str, str] = Field(default_factory=dict, description="name -> file relative to the dataset")
    provenance: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    created_with: str = f"cryoray {__version__}"
    species: list[SpeciesEntry] = Field(default_factory=list, description="tomograms datasets: the particle species")
    tomograms: list[TomogramEntry] = Field(default_factory=list, description="tomograms datasets: one entry per tomogram")

    @property
    def has_ctf(self) -> bool:
        """False for images simulated without a CTF (their CTF columns then hold neutral zeros)."""
        return self.provenance.get("ctf") is not False

    @property
    def has_poses(self) -> bool:
        """False for particles imported without orientations (their angle columns then hold zeros)."""
        return self.provenance.get("poses") != "absent"

    @property
    def symmetry(self) -> str:
        """The particle's point group as its recipe declares it (C1 when none is declared)."""
        return str(self.provenance.get("symmetry", "C1"))

    def ground_truth_map(self, dataset_dir: str | Path) -> np.ndarray | None:
        """The dataset's ground-truth map (simulated, or supplied at import) as float32, or None without one."""
        relative = self.ground_truth.get("map")
        return None if relative is None else read_mrc(Path(dataset_dir) / relative).data.astype(np.float32)


def write_manifest(dataset_dir: str | Path, manifest: DatasetManifest) -> Path:
    """Write ``manifest.json`` last, so a directory with a manifest is a complete dataset."""
    path = Path(dataset_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.model_dump(), indent=2) + "\n")
    return path


def read_manifest(dataset_dir: str | Path) -> DatasetManifest:
    """Read and check a dataset directory: schema, shard files present, counts consistent."""
    dataset_dir = Path(dataset_dir)
    path = dataset_dir / MANIFEST_NAME
    if not path.is_file():
        raise CryorayInputError(dataset_dir, MANIFEST_NAME, "a dataset directory holding manifest.json", "no such file")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CryorayInputError(path, "json", "valid JSON", f"{exc.msg} at line {exc.lineno}") from None
    try:
        manifest = DatasetManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CryorayInputError(path, "manifest", "a valid cryoray manifest", problems) from None
    missing = [s.path for s in manifest.shards if not (dataset_dir / s.path).is_file()]
    if missing:
        raise CryorayInputError(path, "shards", "every listed shard file to exist", f"missing {missing[:3]}")
    total = sum(s.count for s in manifest.shards)
    if total != manifest.count:
        raise CryorayInputError(path, "count", f"the sum of shard counts ({total})", manifest.count)
    for name, rel in manifest.ground_truth.items():
        if not (dataset_dir / rel).is_file():
            raise CryorayInputError(path, f"ground_truth.{name}", f"file {rel} to exist", "missing")
    for index, entry in enumerate(manifest.tomograms):
        files = {"tomogram": entry.tomogram, "particles": entry.particles, "annotations": entry.annotations}
        files |= {f"labels.{kind}": rel for kind, rel in entry.labels.items()}
        if entry.clean is not None:
            files["clean"] = entry.clean
        for field, rel in files.items():
            if not (dataset_dir / rel).is_file():
                raise CryorayInputError(path, f"tomograms[{index}].{field}", f"file {rel} to exist", "missing")
    return manifest


def shard_paths(dataset_dir: str | Path, manifest: DatasetManifest) -> list[str]:
    """Absolute shard paths (workers chdir, so relative paths would break)."""
    return [str((Path(dataset_dir) / s.path).resolve()) for s in manifest.shards]
