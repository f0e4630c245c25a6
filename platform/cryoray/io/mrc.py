"""MRC / MRCS maps and image stacks, through `mrcfile`.

Arrays are indexed (z, y, x) for volumes and (n, y, x) for image stacks, as `mrcfile` returns them.

Voxel-size rule: the voxel size comes from the header unless the caller passes
`voxel_size_angstrom`, which then wins. A header value of 0 means "not set" and is an error
that asks for `voxel_size_angstrom`; a pixel size is never defaulted silently. A header value
of 1.0 is read as 1.0 Å: it is also what many tools write when they know nothing, but it can be
a real pixel size, so it is kept — pass `voxel_size_angstrom` (e.g. from the STAR file) to override.
Volumes whose x/y/z voxel sizes differ (stacks: x/y) are read with the x size and a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mrcfile
import mrcfile.dtypes
import mrcfile.utils
import numpy as np

from cryoray.errors import CryorayInputError
from cryoray.io.outputs import atomic_write
from cryoray.io.validate import check_can_write, check_finite, check_positive

_GZIP_MAGIC = b"\x1f\x8b"
_HARMLESS_HEADER_WARNINGS = ("Map ID string not found", "Unrecognised machine stamp")
# What a command needs from an input MRC: a (z, y, x) volume (tomogram, subtomogram, map) or an (n, y, x) image stack.
MrcKind = Literal["volume", "stack"]


@dataclass(frozen=True)
class MrcData:
    """A map (z, y, x), an image stack (n, y, x) or one image (y, x), in float32, with its voxel size."""

    data: np.ndarray
    voxel_size_angstrom: float
    path: Path


@dataclass(frozen=True)
class MrcStack:
    """A read-only memory-mapped image stack (n, y, x): images are read from disk only when indexed."""

    data: np.memmap
    voxel_size_angstrom: float
    path: Path

    def __len__(self) -> int:
        return int(self.data.shape[0])


def _check_is_file(path: Path) -> None:
    if not path.is_file():
        raise CryorayInputError(path, "file", "an existing MRC file", "a directory" if path.is_dir() else "no such file")


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def _open_permissive(path: Path, opener, **kwargs):
    """Open leniently (files lacking the MAP id are common); fail only when mrcfile cannot find the data.

    Other header oddities are passed on as warnings that name the file.
    """
    _check_is_file(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = opener(str(path), mode="r", permissive=True, **kwargs)
        except (ValueError, OSError, EOFError) as err:
            raise CryorayInputError(path, "header", "a readable MRC file", str(err)) from None
    problems = [str(w.message) for w in caught if not str(w.message).startswith(_HARMLESS_HEADER_WARNINGS)]
    if mrc.data is None or mrc.data.size == 0 or mrc.data.ndim not in (2, 3):
        mrc.close()
        found = "; ".join(problems) or ("no data block" if mrc.data is None else f"data of shape {mrc.data.shape}")
        raise CryorayInputError(path, "header", "a readable MRC file holding a 2D image, a volume or a stack", found)
    if np.iscomplexobj(mrc.data) or not np.issubdtype(mrc.data.dtype, np.number):
        mode = int(mrc.header.mode)
        mrc.close()
        raise CryorayInputError(path, "mode", "a real-valued MRC mode (0, 1, 2, 6 or 12)", mode)
    for problem in problems:
        warnings.warn(f"{path}: {problem}", stacklevel=3)
    return mrc


def _shortest_float(value: float) -> float:
    """The header holds float32: read 2.806 back as 2.806, not 2.8059999942779541."""
    return float(str(np.float32(value)))


def _header_voxel_size(mrc, path: Path, given: float | None, is_stack: bool) -> float:
    if given is not None:
        return check_positive(given, path, "voxel_size_angstrom")
    with np.errstate(divide="ignore", invalid="ignore"):
        voxel = mrc.voxel_size
    axes = (voxel.x, voxel.y) if is_stack else (voxel.x, voxel.y, voxel.z)
    sizes = tuple(_shortest_float(v) for v in axes)
    if any(s <= 0 or not np.isfinite(s) for s in sizes):
        raise CryorayInputError(path, "voxel size", "a voxel size in the header, or pass voxel_size_angstrom", f"{sizes} (unset)")
    if not np.allclose(sizes, sizes[0], rtol=1e-3):
        warnings.warn(f"{path}: voxel size differs between axes {sizes} Å; using x = {sizes[0]} Å", stacklevel=3)
    return sizes[0]


def _is_stack(mrc, path: Path) -> bool:
    return mrc.data.ndim == 3 and (mrc.header.ispg == 0 or path.name.endswith((".mrcs", ".mrcs.gz")))


def read_mrc(path: str | Path, voxel_size_angstrom: float | None = None) -> MrcData:
    """Load a whole .mrc/.mrcs/.map (optionally .gz) as float32, validated: finite values and a known voxel size."""
    path = Path(path)
    with _open_permissive(path, mrcfile.open) as mrc:
        voxel = _header_voxel_size(mrc, path, voxel_size_angstrom, _is_stack(mrc, path))
        data = np.asarray(mrc.data, dtype=np.float32).copy()
    check_finite(data, path, "data")
    return MrcData(data=data, voxel_size_angstrom=voxel, path=path)


def open_stack_mmap(path: str | Path, voxel_size_angstrom: float | None = None) -> MrcStack:
    """Memory-map an uncompressed image stack so large datasets stream without being loaded.

    Values are not scanned here: check the file once on the driver with `check_mrc` before the images are
    read. A single 2D image maps as (1, y, x).
    """
    path = Path(path)
    if path.is_file() and _is_gzip(path):
        raise CryorayInputError(path, "compression", "an uncompressed file for memory mapping (gunzip it)", "gzip")
    with _open_permissive(path, mrcfile.mmap) as mrc:
        voxel = _header_voxel_size(mrc, path, voxel_size_angstrom, is_stack=True)
        data = mrc.data if mrc.data.ndim == 3 else mrc.data[np.newaxis]
    return MrcStack(data=data, voxel_size_angstrom=voxel, path=path)


@dataclass(frozen=True)
class MrcInfo:
    """An input MRC as checked on the driver: its shape ((z, y, x) volume, (n, y, x) stack) and voxel size."""

    path: Path
    shape: tuple[int, int, int]
    voxel_size_angstrom: float | None  # None when not asked for and unset in the header


def check_mrc(
    path: str | Path,
    kind: MrcKind,
    voxel_size_angstrom: float | None = None,
    need_voxel_size: bool = True,
    min_side_px: int = 2,
) -> MrcInfo:
    """Check an input file on the driver before any work starts, so that a bad one is refused in one line naming it
    rather than failing later inside a Ray task: a readable header, a data block as long as the header says (a
    truncated file), the dimensionality ``kind`` needs, a voxel size (``voxel_size_angstrom``, else the header's;
    with ``need_voxel_size``) and finite values, scanned in slabs of the memory-mapped data (a gzipped file is
    decompressed) so that a large tomogram is never loaded whole.

    A ``stack`` is a 2D image, an ``.mrcs`` file or an MRC of space group 0 (a volume of space group 1 is refused);
    a ``volume`` is 3D with at least ``min_side_px`` voxels per side (space group 0 is allowed: many tools write it).
    """
    path = Path(path)
    _check_is_file(path)
    compressed = _is_gzip(path)
    if not compressed:
        _check_sizes(path)
    with _open_permissive(path, mrcfile.open if compressed else mrcfile.mmap) as mrc:
        data = mrc.data
        stack = data.ndim == 2 or _is_stack(mrc, path)
        if kind == "volume" and (data.ndim != 3 or min(data.shape) < min_side_px):
            expected = f"a 3D volume (z, y, x) of at least {min_side_px} voxels per side"
            raise CryorayInputError(path, "shape", expected, f"{'a 2D image ' if data.ndim == 2 else ''}{data.shape}")
        if kind == "stack" and not stack:
            expected = "an image stack (n, y, x): a .mrcs file or an MRC of space group 0"
            raise CryorayInputError(path, "shape", expected, f"a volume {data.shape} (space group {int(mrc.header.ispg)})")
        voxel = None
        if need_voxel_size or voxel_size_angstrom is not None:
            voxel = _header_voxel_size(mrc, path, voxel_size_angstrom, is_stack=stack)
        check_finite(data, path, "data")
        shape = (1, *data.shape) if data.ndim == 2 else data.shape
    return MrcInfo(path=path, shape=(int(shape[0]), int(shape[1]), int(shape[2])), voxel_size_angstrom=voxel)


def _check_sizes(path: Path) -> None:
    """Check the sizes an uncompressed file's header promises against the file, from its first 1024 bytes only, before
    mrcfile reads it: a truncated file is named as one, and a foreign file (its "header" promising gigabytes of
    extended header) is refused without mrcfile allocating them."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        raw = handle.read(mrcfile.dtypes.HEADER_DTYPE.itemsize)
    if len(raw) < mrcfile.dtypes.HEADER_DTYPE.itemsize:
        raise CryorayInputError(path, "header", "an MRC file (a 1024-byte header)", f"a file of {size} bytes")
    header = np.frombuffer(raw, dtype=mrcfile.dtypes.HEADER_DTYPE)[0]
    try:
        order = mrcfile.utils.byte_order_from_machine_stamp(header["machst"])
    except ValueError:  # an unset stamp is common; the file is then read as little-endian, as mrcfile does
        order = "<"
    header = np.frombuffer(raw, dtype=mrcfile.dtypes.HEADER_DTYPE.newbyteorder(order))[0]
    try:
        itemsize = mrcfile.utils.dtype_from_mode(header["mode"]).itemsize
    except ValueError:
        raise CryorayInputError(path, "mode", "an MRC file (data mode 0, 1, 2, 4, 6 or 12)", f"{int(header['mode'])}") from None
    dims = [int(header[axis]) for axis in ("nx", "ny", "nz")]
    extended = int(header["nsymbt"])
    if min(dims) < 1 or extended < 0:
        raise CryorayInputError(
            path, "header", "positive nx, ny, nz and a non-negative extended header size (nsymbt)", (*dims, extended)
        )
    expected = int(np.prod(dims, dtype=np.int64)) * itemsize
    found = size - mrcfile.dtypes.HEADER_DTYPE.itemsize - extended
    if found < expected:
        described = f"{expected} bytes after the header ({' x '.join(map(str, dims))} values of MRC mode {int(header['mode'])})"
        raise CryorayInputError(path, "data block", described, f"{max(found, 0)} bytes (a truncated file)")


def read_mrc_shape(path: str | Path) -> tuple[int, int, int]:
    """The array shape from the header alone, without reading the data (e.g. a stack's box size)."""
    path = Path(path)
    _check_is_file(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with mrcfile.open(str(path), mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header
                shape = (int(header.nz), int(header.ny), int(header.nx))
        except (ValueError, OSError, EOFError) as err:
            raise CryorayInputError(path, "header", "a readable MRC file", str(err)) from None
    return shape


_STORED_DTYPES = (np.dtype(np.float32), np.dtype(np.int8), np.dtype(np.int16))


def write_mrc(
    path: str | Path,
    array: np.ndarray,
    voxel_size_angstrom: float,
    overwrite: bool = False,
    dtype: np.dtype | type | str = np.float32,
) -> Path:
    """Write a float32 map, or an image stack when the name ends in .mrcs, with the voxel size in the header.

    A name ending in .gz is gzip-compressed. An existing file is kept unless `overwrite=True`; the file is written
    under a temporary name and renamed when complete.
    `dtype` int8 (MRC mode 0) or int16 (mode 1) stores label maps compactly; their values must be
    whole numbers within the type's range (MRC has no 32-bit integer mode).
    """
    path = check_can_write(path, overwrite)
    voxel = check_positive(voxel_size_angstrom, path, "voxel_size_angstrom")
    try:
        stored = np.dtype(dtype)
    except TypeError:
        stored = None
    if stored not in _STORED_DTYPES:
        raise CryorayInputError(path, "dtype", "float32, int8 or int16", dtype)
    data = np.asarray(array, dtype=np.float32) if stored == np.float32 else np.asarray(array)
    if data.ndim not in (2, 3):
        expected = "a 2D image, a (z, y, x) volume or an (n, y, x) stack"
        raise CryorayInputError(path, "array", expected, f"shape {data.shape}")
    check_finite(data, path, "array")
    if stored != np.float32:
        limits = np.iinfo(stored)
        if data.size and (data.min() < limits.min or data.max() > limits.max or not np.array_equal(data, np.round(data))):
            expected = f"whole numbers in [{limits.min}, {limits.max}] for {stored.name}"
            raise CryorayInputError(path, "array", expected, f"values in [{data.min()}, {data.max()}]")
        data = data.astype(stored)
    stack = path.name.endswith((".mrcs", ".mrcs.gz"))
    compression = "gzip" if path.suffix == ".gz" else None

    def write(tmp: Path) -> None:
        with mrcfile.new(str(tmp), compression=compression, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(data))
            if stack and data.ndim == 3:
                mrc.set_image_stack()
            mrc.voxel_size = voxel

    return atomic_write(path, write)
