"""Run a trained CryoGEN-II generator on new data: ``python jobs/cryogen2.py apply ...``.

Input: subtomograms or whole tomograms (``.mrc``, any size). A volume is contrast-inverted when the model was
trained so, normalised to its 5th–95th percentiles (as the training cubes were), cut into overlapping tiles of
the training cube size, restored tile by tile (batched) and stitched with weights that fall linearly to the
tile borders inside the overlaps, so no seam shows; a side shorter than a tile is reflect-padded. The result is
mapped back to the input's units and contrast and written as ``<name>_cryogen2.mrc`` with the input's voxel size.
Every input is checked before any work; an output folder that holds another run's ``result.json`` or these files is
used only with ``--overwrite``; a run that fails leaves none of the files it created.

The generator normalises every tile internally and maps its output back to the tile's scale, so tiles that
differ in contrast still stitch consistently. Runs in this process (one device); the model is either the
``model.safetensors`` a training run writes, its output folder, a runner checkpoint folder (``state.pt``) or an MLflow
artifact URI.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryoray import console
from cryoray.data.subtomograms import DATA_PERCENTILES
from cryoray.errors import CryorayInputError
from cryoray.io.models import Model, read_model
from cryoray.io.mrc import check_mrc, read_mrc, write_mrc
from cryoray.io.outputs import atomic_write, check_output_dir, removed_on_failure
from cryoray.io.validate import check_positive
from cryoray.methods.parsers import apply_parser
from cryoray.nn.unetpp import UNetPlusPlus3d
from cryoray.session import check_gpus, run_tool

METHOD_NAME = "cryogen2"
APPLY_RESULT = "apply_result.json"


def tile_starts(size: int, tile_px: int, overlap_px: int) -> list[int]:
    """Tile origins along one axis: stride ``tile − overlap``, the last tile flush with the end."""
    if size <= tile_px:
        return [0]
    stride = tile_px - overlap_px
    starts = list(range(0, size - tile_px, stride))
    return starts + [size - tile_px]


def _blend_weights(tile_px: int, overlap_px: int) -> np.ndarray:
    """Separable weights, 1 in the middle, falling linearly over ``overlap`` voxels to (but never reaching) 0."""
    ramp = np.ones(tile_px, dtype=np.float64)
    if overlap_px > 0:
        edge = (np.arange(overlap_px) + 0.5) / overlap_px
        ramp[:overlap_px] = edge
        ramp[-overlap_px:] = np.minimum(ramp[-overlap_px:], edge[::-1])
    return ramp[:, None, None] * ramp[None, :, None] * ramp[None, None, :]


@torch.no_grad()
def restore_tiled(
    generator: torch.nn.Module, volume: np.ndarray, tile_px: int, overlap_px: int, batch_size: int, device: torch.device
) -> np.ndarray:
    """The generator's output over a (Z, Y, X) volume of any size, from overlapping ``tile_px`` cubes, stitched."""
    if not 0 <= overlap_px < tile_px:
        raise ValueError(f"restore_tiled: need 0 <= overlap_px < tile_px, got {overlap_px}, {tile_px}")
    original = volume.shape
    pads = [(0, max(tile_px - n, 0)) for n in original]
    if any(p[1] for p in pads):
        volume = np.pad(volume, pads, mode="reflect" if min(original) > 1 else "edge")
    shape = volume.shape
    weights = _blend_weights(tile_px, overlap_px)
    total = np.zeros(shape, dtype=np.float64)
    norm = np.zeros(shape, dtype=np.float64)
    corners = [
        (z, y, x)
        for z in tile_starts(shape[0], tile_px, overlap_px)
        for y in tile_starts(shape[1], tile_px, overlap_px)
        for x in tile_starts(shape[2], tile_px, overlap_px)
    ]
    generator.eval()
    for first in range(0, len(corners), batch_size):
        chunk = corners[first : first + batch_size]
        tiles = np.stack([volume[z : z + tile_px, y : y + tile_px, x : x + tile_px] for z, y, x in chunk])
        restored = generator(torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32)).to(device)).float().cpu().numpy()
        for (z, y, x), tile in zip(chunk, restored):
            window = (slice(z, z + tile_px), slice(y, y + tile_px), slice(x, x + tile_px))
            total[window] += tile * weights
            norm[window] += weights
    out = total / norm
    return out[: original[0], : original[1], : original[2]].astype(np.float32)


def restore_volume(
    generator: torch.nn.Module,
    volume: np.ndarray,
    invert_contrast: bool,
    tile_px: int,
    overlap_px: int,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """Preprocess as in training (inversion, 5–95 % normalisation), restore tiled, and map back to the input's units."""
    signal = -np.asarray(volume, dtype=np.float32) if invert_contrast else np.asarray(volume, dtype=np.float32)
    low, high = np.percentile(signal, DATA_PERCENTILES)
    scale = float(high - low) if high > low else 1.0
    restored = restore_tiled(generator, (signal - low) / scale, tile_px, overlap_px, batch_size, device)
    restored = restored * scale + low
    return -restored if invert_contrast else restored


def load_model(reference: str) -> Model:
    """A CryoGEN-II model: a model file, a training output folder, a runner checkpoint folder, or an MLflow URI."""
    return read_model(reference, METHOD_NAME, required=("invert_contrast",))


def build_generator(model: Model) -> UNetPlusPlus3d:
    generator = UNetPlusPlus3d(model.config["channels"])
    generator.load_state_dict(model.state_dicts["generator"])
    return generator.eval()


def _apply(args: argparse.Namespace) -> dict[str, Any]:
    """Check every input (model, volumes, flags, output folder) before restoring anything."""
    if args.voxel_size_angstrom is not None:
        check_positive(args.voxel_size_angstrom, None, "--voxel-size-angstrom")
    if args.use_gpu:
        check_gpus(1, in_this_process=True)
    model = load_model(args.model)
    generator = build_generator(model)
    config = model.config
    tile = args.tile_px or config["cube_px"]
    overlap = config["inference_overlap_px"] if args.overlap_px is None else args.overlap_px
    multiple = generator.size_multiple
    if tile < 2 * multiple or tile % multiple:
        raise CryorayInputError(None, "--tile-px", f"a multiple of {multiple} of at least {2 * multiple}", tile)
    if not 0 <= overlap < tile:
        raise CryorayInputError(None, "--overlap-px", f"a whole number in [0, {tile})", overlap)
    if args.batch_size < 1:
        raise CryorayInputError(None, "--batch-size", "a positive whole number", args.batch_size)
    inputs = [check_mrc(Path(p).resolve(), "volume", args.voxel_size_angstrom).path for p in args.inputs]
    outputs = [f"{path.name.split('.')[0]}_cryogen2.mrc" for path in inputs]
    if len(set(outputs)) != len(outputs):
        raise CryorayInputError(
            None, "--inputs", "files with distinct names (outputs are named after them)", [p.name for p in inputs]
        )
    output_dir = check_output_dir(args.output_dir, "--output-dir", args.overwrite, [*outputs, APPLY_RESULT])
    with removed_on_failure(output_dir, [*outputs, APPLY_RESULT]):
        return _restore_all(args, model, generator, dict(zip(inputs, outputs)), output_dir, tile, overlap)


def _restore_all(
    args: argparse.Namespace,
    model: Model,
    generator: UNetPlusPlus3d,
    outputs: dict[Path, str],
    output_dir: Path,
    tile: int,
    overlap: int,
) -> dict[str, Any]:
    """Restore each (checked) input volume into its output file in ``output_dir``, then write ``apply_result.json``."""
    device = torch.device("cuda" if args.use_gpu else "cpu")
    generator.to(device)
    written = {}
    for path, name in console.progress(outputs.items(), len(outputs), "volumes restored"):
        out = output_dir / name
        mrc = read_mrc(path, args.voxel_size_angstrom)
        restored = restore_volume(
            generator, mrc.data, bool(model.metadata["invert_contrast"]), tile, overlap, args.batch_size, device
        )
        write_mrc(out, restored, mrc.voxel_size_angstrom, overwrite=True)
        written[path.name] = {
            "output": str(out),
            "shape_zyx": list(mrc.data.shape),
            "voxel_size_angstrom": mrc.voxel_size_angstrom,
        }
    result = {
        "outputs": written,
        "tile_px": tile,
        "overlap_px": overlap,
        "device": str(device),
        "training_voxel_size_angstrom": model.metadata.get("voxel_size_angstrom"),
    }
    atomic_write(output_dir / APPLY_RESULT, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    return result


def run_apply(argv: list[str]) -> int:
    """CLI entry: exit 0 with a ``RESULT`` line, 2 on bad input (one line naming file and field)."""
    args = apply_parser().parse_args(argv)
    return run_tool("cryogen2 apply", lambda: _apply(args), args.verbosity)
