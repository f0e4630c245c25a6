"""Denoise a user's particle stack with a trained (α,β)-GAN generator: ``python jobs/betagan.py denoise ...``.

Input: a ``.mrcs`` stack and the ``.star`` file that describes it (one row per image of that stack, a pixel size).
The images stream through Ray Data (``map_batches`` over image indices; each task reads its images from the memory
mapped stack and runs the generator on a CPU, or on a GPU with ``--use-gpu``), so a stack of any size works and a
cluster denoises in parallel. The driver writes each denoised batch into a memory-mapped output ``.mrcs`` at its
indices, and the output ``.star`` is the input's metadata (every column kept) pointing at the denoised stack.
The pixel size must match the model's within 5%: the generator learned features at its training sampling.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import ray
import ray.data
import torch

from cryoray.errors import CryorayInputError
from cryoray.io.models import Model, read_model
from cryoray.io.mrc import open_stack_mmap
from cryoray.io.star import read_particles_star, write_particles_star
from cryoray.io.validate import check_can_write, check_finite
from cryoray.methods.betagan import BetaGANConfig, build_generator
from cryoray.methods.betagan.evaluation import denormalise, normalise_pair
from cryoray.session import connect_ray, run_tool

PIXEL_SIZE_TOLERANCE = 0.05


def load_model(reference: str) -> Model:
    """The model a betagan training run wrote: a model file, the run's output folder, or an MLflow URI."""
    return read_model(reference, "betagan", required=("pixel_size_angstrom",))


class DenoiseBatch:
    """Ray Data callable class: one generator per worker, reused for every batch of image indices."""

    def __init__(self, model: Model, stack_path: str, pixel_size_angstrom: float, use_gpu: bool) -> None:
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.generator = build_generator(BetaGANConfig.model_validate(model.config))
        self.generator.load_state_dict(model.state_dicts["generator"])
        self.generator.to(self.device).eval()
        self.stack = open_stack_mmap(stack_path, voxel_size_angstrom=pixel_size_angstrom)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = np.asarray(batch["id"], dtype=np.int64)
        images = np.asarray(self.stack.data[np.sort(index)], dtype=np.float32)[np.argsort(np.argsort(index))]
        check_finite(images, self.stack.path, "data")
        noisy, _, frame = normalise_pair(torch.from_numpy(images).to(self.device))
        denoised = denormalise(self.generator(noisy), frame)
        return {"id": index, "denoised": denoised.cpu().numpy()}


def _check_inputs(model: Model, stack_path: Path, star_path: Path) -> tuple[Any, int, int, float]:
    """Validate the stack/STAR pair on the driver; returns (table, images, box, pixel size)."""
    table = read_particles_star(star_path)
    particles = table.particles
    shape = open_stack_mmap(stack_path, voxel_size_angstrom=float(particles["pixel_size_angstrom"].iloc[0])).data.shape
    count, box = int(shape[0]), int(shape[-1])
    if len(particles) != count:
        raise CryorayInputError(
            star_path, "rows", f"one row per image of {stack_path} ({count} images)", f"{len(particles)} rows"
        )
    named = {os.path.realpath(p) for p in particles["image_path"].unique()}
    if named != {os.path.realpath(stack_path)}:
        raise CryorayInputError(star_path, "rlnImageName", f"images of {stack_path} only", sorted(named)[:3])
    if sorted(particles["image_index"].tolist()) != list(range(count)):
        raise CryorayInputError(
            star_path, "rlnImageName", f"each image 1..{count} of the stack exactly once", "repeated or missing indices"
        )
    pixel_sizes = particles["pixel_size_angstrom"].unique()
    if len(pixel_sizes) != 1:
        raise CryorayInputError(star_path, "rlnImagePixelSize", "one pixel size for the stack", sorted(pixel_sizes)[:4])
    pixel = float(pixel_sizes[0])
    trained = float(model.metadata["pixel_size_angstrom"])
    if abs(pixel / trained - 1.0) > PIXEL_SIZE_TOLERANCE:
        expected = f"the model's pixel size {trained} Å within {PIXEL_SIZE_TOLERANCE:.0%} (rescale the particles first)"
        raise CryorayInputError(star_path, "rlnImagePixelSize", expected, pixel)
    multiple = 2 ** (len(model.config["channels"]) - 1)
    if box % multiple or shape[-1] != shape[-2]:
        raise CryorayInputError(
            stack_path, "image size", f"square images of a multiple of {multiple} px", f"{shape[-2]} x {shape[-1]}"
        )
    return table, count, box, pixel


def denoise_stack(
    model: Model,
    stack_path: str | Path,
    star_path: str | Path,
    output_dir: str | Path,
    batch_size: int = 64,
    use_gpu: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Denoise every image of ``stack_path`` through Ray Data; write ``<stem>_denoised.mrcs`` and ``.star``."""
    stack_path, star_path = Path(stack_path).resolve(), Path(star_path).resolve()
    table, count, box, pixel = _check_inputs(model, stack_path, star_path)
    output_dir = Path(output_dir).resolve()
    out_stack = check_can_write(output_dir / f"{stack_path.name.split('.')[0]}_denoised.mrcs", overwrite)
    out_star = check_can_write(output_dir / f"{star_path.stem}_denoised.star", overwrite)
    if out_stack == stack_path or out_star == star_path:
        raise CryorayInputError(output_dir, "--output-dir", "a folder other than the input's", str(output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)

    started = connect_ray()
    written = 0
    try:
        resources = {"num_gpus": 1} if use_gpu else {"num_cpus": 1}
        stream = ray.data.range(count).map_batches(
            DenoiseBatch,
            fn_constructor_args=(model, str(stack_path), pixel, use_gpu),
            batch_size=batch_size,
            concurrency=1 if use_gpu else (1, max(1, int(ray.cluster_resources().get("CPU", 1)))),
            **resources,
        )
        with mrcfile.new_mmap(str(out_stack), shape=(count, box, box), mrc_mode=2, overwrite=True) as out:
            out.set_image_stack()
            out.voxel_size = pixel
            for batch in stream.iter_batches(batch_size=None, batch_format="numpy"):
                out.data[batch["id"]] = batch["denoised"]
                written += len(batch["id"])
    finally:
        if started:
            ray.shutdown()
    particles = table.particles.assign(image_path=str(out_stack))
    write_particles_star(out_star, type(table)(particles=particles, optics=table.optics), overwrite=True)
    return {
        "images": written,
        "stack": str(out_stack),
        "star": str(out_star),
        "pixel_size_angstrom": pixel,
        "box_px": box,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobs/betagan.py denoise", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="model.safetensors, a training output folder, or runs:/<run id>/outputs/model.safetensors"
    )
    parser.add_argument("--stack", required=True, help=".mrcs particle stack to denoise")
    parser.add_argument(
        "--star", required=True, help="the RELION .star describing the stack (pixel size, one row per image)"
    )
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--batch-size", type=int, default=64, help="images per Ray Data batch")
    parser.add_argument("--use-gpu", action="store_true", help="denoise on one GPU")
    parser.add_argument("--overwrite", action="store_true", help="replace a denoised stack already in --output-dir")
    return parser


def run_denoise(argv: list[str]) -> int:
    """CLI entry: exit 0 with a ``RESULT`` line, 2 on bad input (one line naming file and field)."""
    args = _parser().parse_args(argv)

    def denoise() -> dict:
        if args.batch_size < 1:
            raise CryorayInputError(None, "--batch-size", "a positive integer", args.batch_size)
        model = load_model(args.model)
        result = denoise_stack(model, args.stack, args.star, args.output_dir, args.batch_size, args.use_gpu, args.overwrite)
        Path(result["stack"]).with_name("result.json").write_text(json.dumps(result, indent=2) + "\n")
        return result

    return run_tool("betagan denoise", denoise)
