"""RELION STAR files, through `starfile`: particle tables and tomogram picks.

The rest of cryoray never sees rln names: readers turn them into columns with units in their
names, writers turn them back. Particle columns:

    image_index          0-based index into the stack (STAR's "000012@stack.mrcs" is 1-based)
    image_path           the stack, resolved against `image_dir` (default: the STAR file's folder)
    optics_group         int, joins data_optics
    rot_deg tilt_deg psi_deg                 RELION ZYZ Euler angles (present when the STAR has them)
    shift_x_angstrom shift_y_angstrom        rlnOriginX/YAngst (RELION 3.0: rlnOriginX/Y · pixel size);
                                             0 when absent. RELION's sign: the particle sits at the
                                             image centre − shift, i.e. image = shift(projection, −shift)
    defocus_u_angstrom defocus_v_angstrom defocus_angle_deg phase_shift_deg   (present when the STAR has a CTF)
    voltage_kv cs_mm amplitude_contrast pixel_size_angstrom box_px            (from the particle's optics group)

Other rln columns (coordinates, micrograph names, class numbers...) are kept as they are and
written back. RELION 3.1+ files (data_optics + data_particles, either order) and RELION 3.0/2
single-block files are read; RELION 3.0 files get one optics group per distinct optics setting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryoray.errors import CryorayInputError
from cryoray.io.mrc import read_mrc_shape
from cryoray.io.outputs import atomic_write
from cryoray.io.validate import check_can_write
from cryoray.physics.ctf import validate_ctf_parameters

PARTICLE_NAMES = {
    "rlnAngleRot": "rot_deg",
    "rlnAngleTilt": "tilt_deg",
    "rlnAnglePsi": "psi_deg",
    "rlnOriginXAngst": "shift_x_angstrom",
    "rlnOriginYAngst": "shift_y_angstrom",
    "rlnDefocusU": "defocus_u_angstrom",
    "rlnDefocusV": "defocus_v_angstrom",
    "rlnDefocusAngle": "defocus_angle_deg",
    "rlnPhaseShift": "phase_shift_deg",
}
OPTICS_NAMES = {
    "rlnOpticsGroup": "optics_group",
    "rlnVoltage": "voltage_kv",
    "rlnSphericalAberration": "cs_mm",
    "rlnAmplitudeContrast": "amplitude_contrast",
    "rlnImagePixelSize": "pixel_size_angstrom",
    "rlnImageSize": "box_px",
}
COORDINATE_NAMES = {
    "rlnCoordinateX": "x_px",
    "rlnCoordinateY": "y_px",
    "rlnCoordinateZ": "z_px",
    "rlnClassNumber": "class_id",
    "rlnAutopickFigureOfMerit": "score",
    "rlnAngleRot": "rot_deg",
    "rlnAngleTilt": "tilt_deg",
    "rlnAnglePsi": "psi_deg",
    "rlnTomoName": "tomo_name",
}
COORDINATE_NAMES_INVERSE = {v: k for k, v in COORDINATE_NAMES.items()}
PARTICLE_COLUMNS = (
    "image_index",
    "image_path",
    "optics_group",
    "rot_deg",
    "tilt_deg",
    "psi_deg",
    "shift_x_angstrom",
    "shift_y_angstrom",
    "defocus_u_angstrom",
    "defocus_v_angstrom",
    "defocus_angle_deg",
    "phase_shift_deg",
    "voltage_kv",
    "cs_mm",
    "amplitude_contrast",
    "pixel_size_angstrom",
    "box_px",
)
_ANGLES = ("rot_deg", "tilt_deg", "psi_deg")
_DEFOCUS = ("defocus_u_angstrom", "defocus_v_angstrom", "defocus_angle_deg")
_CTF_OPTICS = ("voltage_kv", "cs_mm", "amplitude_contrast")
_OPTICS_VALUES = ("voltage_kv", "cs_mm", "amplitude_contrast", "pixel_size_angstrom", "box_px")
_CONSUMED_RELION30 = ("rlnImageName", "rlnOriginX", "rlnOriginY", "rlnMagnification", "rlnDetectorPixelSize")
_CENTERED_NAMES = {
    "x_px": "rlnCenteredCoordinateXAngst",
    "y_px": "rlnCenteredCoordinateYAngst",
    "z_px": "rlnCenteredCoordinateZAngst",
}
_AXIS = {"x_px": 2, "y_px": 1, "z_px": 0}  # index of each coordinate's axis in a (z, y, x) shape


@dataclass(frozen=True)
class TomogramFrame:
    """What converts voxel coordinates to RELION 5's centred Ångström: the tomogram's (z, y, x) size and voxel size."""

    shape_zyx: tuple[int, int, int]
    voxel_size_angstrom: float

    def centre_px(self, column: str) -> float:
        return self.shape_zyx[_AXIS[column]] / 2


_COORDINATE_ALIASES = {
    "x_px": ("x_px", "x", "X", "rlnCoordinateX"),
    "y_px": ("y_px", "y", "Y", "rlnCoordinateY"),
    "z_px": ("z_px", "z", "Z", "rlnCoordinateZ"),
    "class_id": ("class_id", "class", "label", "rlnClassNumber"),
    "score": ("score", "rlnAutopickFigureOfMerit", "rlnLCCmax"),
    "rot_deg": ("rot_deg", "rot", "rlnAngleRot"),
    "tilt_deg": ("tilt_deg", "tilt", "rlnAngleTilt"),
    "psi_deg": ("psi_deg", "psi", "rlnAnglePsi"),
    "tomo_name": ("tomo_name", "tomo", "rlnTomoName"),
}


@dataclass(frozen=True)
class ParticleTable:
    """Particles (one row each, optics merged in) and the optics groups they refer to."""

    particles: pd.DataFrame
    optics: pd.DataFrame
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.particles)

    @property
    def has_poses(self) -> bool:
        """True when every particle has rot/tilt/psi (refined or ground-truth orientations)."""
        return all(c in self.particles for c in _ANGLES)

    @property
    def has_ctf(self) -> bool:
        """True when every particle has defocus and optics CTF parameters."""
        return all(c in self.particles for c in _DEFOCUS + _CTF_OPTICS)


def _numbers(df: pd.DataFrame, column: str, path: Path, block: str) -> np.ndarray:
    """A column as finite float64, or an error naming the column and the first bad row (1-based)."""
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise CryorayInputError(
            path, column, f"a finite number in every row of data_{block}", f"{df[column].iloc[row]!r} in row {row + 1}"
        )
    return values


def _integers(df: pd.DataFrame, column: str, path: Path, block: str) -> np.ndarray:
    values = _numbers(df, column, path, block)
    if not np.all(values == np.round(values)):
        row = int(np.argmax(values != np.round(values)))
        raise CryorayInputError(path, column, f"whole numbers in data_{block}", f"{values[row]} in row {row + 1}")
    return values.astype(np.int64)


def _require(df: pd.DataFrame, columns: tuple[str, ...] | list[str], path: Path, block: str) -> None:
    for column in columns:
        if column not in df:
            raise CryorayInputError(path, column, f"a column in data_{block}", "no such column")


def _read_blocks(path: Path) -> dict[str, pd.DataFrame]:
    if not path.is_file():
        raise CryorayInputError(path, "file", "an existing STAR file", "no such file")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as err:  # starfile raises assorted parser errors; the user needs the file and the reason
        raise CryorayInputError(path, "STAR syntax", "a readable STAR file", f"{type(err).__name__}: {err}") from None
    tables = {}
    for name, block in blocks.items():
        if isinstance(block, dict):
            block = pd.DataFrame([block])
        if isinstance(block, pd.DataFrame):
            tables[name] = block
    return tables


def _pixel_sizes(df: pd.DataFrame, path: Path, block: str) -> np.ndarray:
    """rlnImagePixelSize, else RELION 2/3.0's rlnDetectorPixelSize (µm) · 1e4 / rlnMagnification."""
    if "rlnImagePixelSize" in df:
        sizes = _numbers(df, "rlnImagePixelSize", path, block)
    elif "rlnDetectorPixelSize" in df and "rlnMagnification" in df:
        sizes = _numbers(df, "rlnDetectorPixelSize", path, block) * 1e4 / _numbers(df, "rlnMagnification", path, block)
    else:
        raise CryorayInputError(
            path,
            "rlnImagePixelSize",
            f"a column in data_{block} (or rlnDetectorPixelSize and rlnMagnification)",
            "no pixel size",
        )
    if (sizes <= 0).any():
        row = int(np.argmax(sizes <= 0))
        raise CryorayInputError(path, "rlnImagePixelSize", "a positive pixel size", f"{sizes[row]} in row {row + 1}")
    return sizes


def _split_image_names(df: pd.DataFrame, path: Path, base: Path) -> tuple[np.ndarray, list[str]]:
    names = df["rlnImageName"].astype(str)
    parts = names.str.split("@", n=1, expand=True)
    if parts.shape[1] == 1:
        parts[1] = None
    single = parts[1].isna()
    index_text = parts[0].where(~single, "1")
    files = parts[1].where(~single, parts[0])
    numbers = pd.to_numeric(index_text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(numbers) | (numbers < 1) | (numbers != np.round(numbers))
    if bad.any():
        row = int(np.argmax(bad))
        found = f"{names.iloc[row]!r} in row {row + 1}"
        raise CryorayInputError(path, "rlnImageName", "'<1-based index>@<stack file>'", found)
    resolved = {f: os.path.abspath(base / f) for f in files.unique()}
    return numbers.astype(np.int64) - 1, [resolved[f] for f in files]


def _box_from_stacks(image_paths: list[str], path: Path) -> dict[str, int]:
    """RELION 3.0 files carry no image size: take it from the stacks' headers (read once per file)."""
    boxes = {}
    for stack in dict.fromkeys(image_paths):
        if not Path(stack).is_file():
            expected = "an image size in the STAR, or the stacks it names"
            raise CryorayInputError(path, "rlnImageSize", expected, f"missing {stack}")
        shape = read_mrc_shape(stack)
        if shape[-1] != shape[-2]:
            raise CryorayInputError(stack, "image shape", "square images", f"{shape[-2]} x {shape[-1]}")
        boxes[stack] = shape[-1]
    return boxes


def _normalise_optics(raw: pd.DataFrame, path: Path, block: str) -> pd.DataFrame:
    """Optics columns with units in their names; unknown rln optics columns are kept."""
    optics = pd.DataFrame(index=raw.index)
    optics["optics_group"] = _integers(raw, "rlnOpticsGroup", path, block)
    names = "opticsGroup" + optics["optics_group"].astype(str)
    optics["optics_group_name"] = raw["rlnOpticsGroupName"].astype(str) if "rlnOpticsGroupName" in raw else names
    optics["pixel_size_angstrom"] = _pixel_sizes(raw, path, block)
    for rln in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        if rln in raw:
            optics[OPTICS_NAMES[rln]] = _numbers(raw, rln, path, block)
    if "rlnImageSize" in raw:
        optics["box_px"] = _integers(raw, "rlnImageSize", path, block)
    consumed = set(OPTICS_NAMES) | {"rlnOpticsGroupName", "rlnDetectorPixelSize", "rlnMagnification"}
    extras = [c for c in raw.columns if c not in consumed]
    return pd.concat([optics, raw[extras]], axis=1).reset_index(drop=True)


def _relion30_optics(raw: pd.DataFrame, path: Path, block: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Give a single-block file optics groups: one per distinct (voltage, Cs, amplitude contrast, pixel size)."""
    settings = pd.DataFrame({"pixel_size_angstrom": _pixel_sizes(raw, path, block)}, index=raw.index)
    for rln in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        if rln in raw:
            settings[OPTICS_NAMES[rln]] = _numbers(raw, rln, path, block)
    keys = list(settings.columns)
    optics = settings.drop_duplicates().reset_index(drop=True)
    optics.insert(0, "optics_group", np.arange(1, len(optics) + 1, dtype=np.int64))
    optics.insert(1, "optics_group_name", "opticsGroup" + optics["optics_group"].astype(str))
    groups = settings.merge(optics, on=keys, how="left")["optics_group"].to_numpy()
    particles = raw.drop(
        columns=[
            r
            for r in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnOpticsGroup")
            if r in raw
        ]
    )
    particles = particles.assign(rlnOpticsGroup=groups)
    return particles, optics


def _pick_blocks(blocks: dict[str, pd.DataFrame], path: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    if "optics" in blocks:
        if "particles" not in blocks:
            expected = "a particles block next to data_optics"
            raise CryorayInputError(path, "data_particles", expected, f"blocks {list(blocks)}")
        return blocks["particles"], blocks["optics"], "particles"
    with_images = [name for name, df in blocks.items() if "rlnImageName" in df]
    if len(with_images) != 1:
        raise CryorayInputError(
            path,
            "rlnImageName",
            "exactly one data block with an rlnImageName column (a particle STAR file)",
            f"{len(with_images)} such blocks",
        )
    return blocks[with_images[0]], None, with_images[0] or "_"


def read_particles_star(path: str | Path, image_dir: str | Path | None = None) -> ParticleTable:
    """Read a RELION 2/3.0/3.1+ particle STAR into normalised columns, validated row by row.

    `image_dir` is the folder relative image paths are resolved against (a RELION project
    folder); by default the STAR file's own folder.
    """
    path = Path(path)
    raw, raw_optics, block = _pick_blocks(_read_blocks(path), path)
    if raw.empty:
        raise CryorayInputError(path, f"data_{block}", "at least one particle row", "an empty table")
    _require(raw, ["rlnImageName"], path, block)
    if raw_optics is None:
        raw, optics = _relion30_optics(raw, path, block)
        optics_block = block
    else:
        _require(raw_optics, ["rlnOpticsGroup"], path, "optics")
        _require(raw, ["rlnOpticsGroup"], path, block)
        optics = _normalise_optics(raw_optics, path, "optics")
        optics_block = "optics"
    image_index, image_path = _split_image_names(raw, path, Path(image_dir) if image_dir else path.parent)
    particles = pd.DataFrame({"image_index": image_index, "image_path": image_path})
    particles["optics_group"] = _integers(raw, "rlnOpticsGroup", path, block)
    unknown = ~particles["optics_group"].isin(optics["optics_group"])
    if unknown.any():
        row = int(np.argmax(unknown.to_numpy()))
        known = sorted(optics["optics_group"].tolist())
        found = f"{particles['optics_group'].iloc[row]} in row {row + 1}"
        raise CryorayInputError(path, "rlnOpticsGroup", f"one of the groups in data_{optics_block} {known}", found)
    pixel = optics.set_index("optics_group")["pixel_size_angstrom"].loc[particles["optics_group"]].to_numpy()
    for rln, name in PARTICLE_NAMES.items():
        if rln in raw:
            particles[name] = _numbers(raw, rln, path, block)
    for axis in ("x", "y"):
        name = f"shift_{axis}_angstrom"
        if name not in particles:
            pixels_rln = f"rlnOrigin{axis.upper()}"
            particles[name] = _numbers(raw, pixels_rln, path, block) * pixel if pixels_rln in raw else 0.0
    if any(c in particles for c in _DEFOCUS):
        _require(raw, ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"], path, block)
        for rln in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
            if OPTICS_NAMES[rln] not in optics:
                expected = f"a column in data_{optics_block} (needed for the CTF)"
                raise CryorayInputError(path, rln, expected, "no such column")
        if "phase_shift_deg" not in particles:
            particles["phase_shift_deg"] = 0.0
        try:
            validate_ctf_parameters(optics["pixel_size_angstrom"], optics["voltage_kv"], optics["amplitude_contrast"])
        except ValueError as err:
            raise CryorayInputError(path, f"data_{optics_block}", "physical CTF parameters", str(err)) from None
    if "box_px" not in optics:
        boxes = _box_from_stacks(image_path, path)
        per_group = pd.DataFrame({"g": particles["optics_group"], "box": [boxes[p] for p in image_path]})
        per_group = per_group.drop_duplicates()
        if per_group["g"].duplicated().any():
            raise CryorayInputError(path, "rlnImageName", "stacks of one box size per optics group", "mixed box sizes")
        optics["box_px"] = optics["optics_group"].map(per_group.set_index("g")["box"]).astype(np.int64)
    merged = [c for c in _OPTICS_VALUES if c in optics]
    particles = particles.merge(optics[["optics_group", *merged]], on="optics_group", how="left")
    particles = particles[[c for c in PARTICLE_COLUMNS if c in particles]]
    consumed = set(PARTICLE_NAMES) | set(_CONSUMED_RELION30) | {"rlnOpticsGroup"}
    extras = raw[[c for c in raw.columns if c not in consumed]].reset_index(drop=True)
    particles = pd.concat([particles, extras], axis=1)
    return ParticleTable(particles=particles, optics=optics, path=path)


def _optics_for_writing(particles: pd.DataFrame, optics_extra: pd.DataFrame | None, path: Path) -> pd.DataFrame:
    present = [c for c in _OPTICS_VALUES if c in particles]
    per_group = particles[["optics_group", *present]].drop_duplicates()
    if per_group["optics_group"].duplicated().any():
        group = per_group["optics_group"][per_group["optics_group"].duplicated()].iloc[0]
        expected = "one voltage/Cs/amplitude contrast/pixel size/box per optics group"
        raise CryorayInputError(path, "optics_group", expected, f"several settings in group {group}")
    optics = per_group.sort_values("optics_group").reset_index(drop=True)
    if optics_extra is not None:
        keep = [c for c in optics_extra.columns if c.startswith("rln") or c == "optics_group_name"]
        optics = optics.merge(optics_extra[["optics_group", *keep]], on="optics_group", how="left")
    default_names = "opticsGroup" + optics["optics_group"].astype(str)
    if "optics_group_name" in optics:
        default_names = optics["optics_group_name"].fillna(default_names)
    optics["optics_group_name"] = default_names
    if "rlnImageDimensionality" not in optics:
        optics["rlnImageDimensionality"] = 2
    rename = {v: k for k, v in OPTICS_NAMES.items()} | {"optics_group_name": "rlnOpticsGroupName"}
    return optics.rename(columns=rename)


def _stack_name(stack: str, folder: Path) -> str:
    """Stacks inside the STAR's folder are written relative to it (the dataset can move); others stay absolute."""
    if not os.path.isabs(stack):
        return stack
    relative = os.path.relpath(stack, folder)
    return stack if relative.startswith("..") else relative


def write_particles_star(path: str | Path, table: ParticleTable | pd.DataFrame, overwrite: bool = False) -> Path:
    """Write RELION 3.1 (data_optics + data_particles) from normalised columns; image paths relative to the STAR."""
    path = check_can_write(path, overwrite)
    particles = table.particles if isinstance(table, ParticleTable) else table
    optics_extra = table.optics if isinstance(table, ParticleTable) else None
    _require(particles, ["image_index", "image_path", "pixel_size_angstrom", "box_px"], path, "particles")
    particles = particles.reset_index(drop=True)
    if "optics_group" not in particles:
        settings = [c for c in _OPTICS_VALUES if c in particles]
        particles = particles.assign(optics_group=particles.groupby(settings, sort=False).ngroup().to_numpy() + 1)
    numbers = [c for c in (*PARTICLE_NAMES.values(), *_OPTICS_VALUES) if c in particles]
    numeric = ["image_index", "optics_group", *numbers]
    for column in numeric:
        _numbers(particles, column, path, "particles")
    optics = _optics_for_writing(particles, optics_extra, path)
    folder = path.parent.resolve()
    stacks = {p: _stack_name(p, folder) for p in particles["image_path"].astype(str).unique()}
    image_paths = particles["image_path"].astype(str)
    names = [f"{int(i) + 1:06d}@{stacks[p]}" for i, p in zip(particles["image_index"], image_paths)]
    out = pd.DataFrame({"rlnImageName": names, "rlnOpticsGroup": particles["optics_group"].astype(np.int64)})
    for rln, name in PARTICLE_NAMES.items():
        if name in particles:
            out[rln] = particles[name].astype(np.float64)
    extras = [c for c in particles.columns if c.startswith("rln") and c not in out]
    out = pd.concat([out, particles[extras]], axis=1)
    return atomic_write(path, lambda tmp: starfile.write({"optics": optics, "particles": out}, tmp))


def _coordinate_block(blocks: dict[str, pd.DataFrame], path: Path, frame: TomogramFrame | None) -> pd.DataFrame:
    """The picks block; RELION 5's centred Ångström coordinates become voxel columns (which needs ``frame``)."""
    for block in blocks.values():
        if "rlnCoordinateX" in block:
            return block
        if _CENTERED_NAMES["x_px"] in block:
            if frame is None:
                expected = "the tomogram's size and voxel size to convert RELION 5 centred coordinates (pass the tomogram)"
                raise CryorayInputError(path, _CENTERED_NAMES["x_px"], expected, "no tomogram given")
            converted = block.copy()
            for column, centred in _CENTERED_NAMES.items():
                angstrom = _numbers(block, centred, path, "particles")
                converted[_COORDINATE_ALIASES[column][-1]] = angstrom / frame.voxel_size_angstrom + frame.centre_px(column)
            return converted
    expected = "a data block with rlnCoordinateX/Y/Z or rlnCenteredCoordinateX/Y/ZAngst (tomogram picks)"
    raise CryorayInputError(path, "rlnCoordinateX", expected, f"blocks {list(blocks)}")


def read_coordinates(path: str | Path, frame: TomogramFrame | None = None) -> pd.DataFrame:
    """Read tomogram picks from .star or .csv (x,y,z,class...) as x_px, y_px, z_px, class_id...

    A STAR file may hold voxel coordinates (rlnCoordinateX/Y/Z: Warp, RELION 4, cryoray's datasets) or RELION 5's
    rlnCenteredCoordinateX/Y/ZAngst, converted to voxels with ``frame`` (the tomogram they belong to). class_id is
    1 when the file has no class column; score, angles and tomo_name appear when the file has them.
    """
    path = Path(path)
    if path.suffix == ".star":
        raw, block = _coordinate_block(_read_blocks(path), path, frame), "particles"
    elif path.suffix == ".csv":
        if not path.is_file():
            raise CryorayInputError(path, "file", "an existing CSV file", "no such file")
        try:
            raw = pd.read_csv(path)
        except (ValueError, UnicodeDecodeError) as err:
            raise CryorayInputError(path, "CSV syntax", "a readable CSV file with a header row", str(err)) from None
        block = "csv"
    else:
        raise CryorayInputError(path, "file type", "a .star or .csv file", path.suffix or "no suffix")
    picks = pd.DataFrame(index=raw.index)
    for name, aliases in _COORDINATE_ALIASES.items():
        found = next((a for a in aliases if a in raw), None)
        if found is None:
            if name in ("x_px", "y_px", "z_px"):
                field = name if block == "csv" else aliases[-1]
                raise CryorayInputError(path, field, f"a column in {path.name}", "no such column")
            continue
        if name == "tomo_name":
            picks[name] = raw[found].astype(str)
        elif name == "class_id":
            picks[name] = _integers(raw, found, path, block)
        else:
            picks[name] = _numbers(raw, found, path, block)
    if "class_id" not in picks:
        picks["class_id"] = np.ones(len(picks), dtype=np.int64)
    return picks[[c for c in COORDINATE_NAMES.values() if c in picks]].reset_index(drop=True)


def write_coordinates(
    path: str | Path, picks: pd.DataFrame, overwrite: bool = False, frames: Mapping[str, TomogramFrame] | None = None
) -> Path:
    """Write picks as .star or as .csv with the normalised names (voxels).

    A STAR file gets RELION 5's columns when ``frames`` (tomogram name → its frame) is given: rlnTomoName and
    rlnCenteredCoordinateX/Y/ZAngst, which RELION 5 reads (the picks need ``tomo_name``); else voxel coordinates
    (rlnCoordinateX/Y/Z, which Warp and RELION 4 read). rlnClassNumber, rlnAutopickFigureOfMerit and angles travel
    when the picks have them.
    """
    path = Path(path)
    if path.suffix not in (".star", ".csv"):
        raise CryorayInputError(path, "file type", "a .star or .csv file", path.suffix or "no suffix")
    check_can_write(path, overwrite)
    relion5 = frames is not None and path.suffix == ".star"
    _require(picks, ["x_px", "y_px", "z_px", *(["tomo_name"] if relion5 else [])], path, "picks")
    columns = [c for c in COORDINATE_NAMES.values() if c in picks]
    out = picks[columns].reset_index(drop=True)
    for column in columns:
        if column != "tomo_name":
            _numbers(out, column, path, "picks")
    if path.suffix == ".csv":
        return atomic_write(path, lambda tmp: out.to_csv(tmp, index=False))
    named = out.rename(columns={v: k for k, v in COORDINATE_NAMES.items()})
    if relion5 and frames is not None:
        unknown = sorted(set(out["tomo_name"]) - set(frames))
        if unknown:
            raise CryorayInputError(path, "rlnTomoName", f"picks of the tomograms {sorted(frames)}", unknown)
        rows = [frames[name] for name in out["tomo_name"]]
        voxel = np.array([frame.voxel_size_angstrom for frame in rows])
        named = named[["rlnTomoName", *(c for c in named if c != "rlnTomoName")]]
        for position, (column, centred) in enumerate(_CENTERED_NAMES.items(), start=1):
            centre = np.array([frame.centre_px(column) for frame in rows])
            named.insert(position, centred, (named.pop(COORDINATE_NAMES_INVERSE[column]).to_numpy() - centre) * voxel)
    return atomic_write(path, lambda tmp: starfile.write({"particles": named}, tmp))
