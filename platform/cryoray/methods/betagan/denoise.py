"""Denoise a user's particle stack with a trained (α,β)-GAN generator: ``python jobs/betagan.py denoise ...``.

Input: a ``.mrcs`` stack and the ``.star`` file that describes it (one row per image of that stack, a pixel size).
The images stream through Ray Data (``map_batches`` over image indices; each task reads its images from the memory
mapped stack and runs the generator on a CPU, or on a GPU with ``--use-gpu``), so a stack of any size works and a
cluster denoises in parallel. The driver writes each denoised batch into a memory-mapped output ``.mrcs`` at its
indices, and the output ``.star`` is the input's metadata (every column kept) pointing at the denoised stack.
The pixel size must match the model's within 5%: the generator learned features at its training sampling. The box
must be the model's training box: a different box is refused (not resampled, which would change the pixel size; not
cropped or padded, which would change how much background each image's normalisation sees), naming the box to
window the particles to. Every input is checked on the driver before Ray starts (including NaN/Inf pixels, scanned in
slabs of the memory-mapped stack); an output folder holding another run's ``result.json`` or these outputs is used
only with ``--overwrite``; the stack is written under a temporary name and renamed when complete, and a run that
fails leaves none of the files it created.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import torch

from cryoray import console
from cryoray.errors import CryorayInputError
from cryoray.io.models import Model, read_model
from cryoray.io.mrc import check_mrc, open_stack_mmap
from cryoray.io.outputs import RESULT_FILE, atomic_write, check_output_dir, removed_on_failure
from cryoray.io.star import ParticleTable, read_particles_star, write_particles_star
from cryoray.methods.betagan import BetaGANConfig, build_generator
from cryoray.methods.betagan.evaluation import denormalise, normalise_pair
from cryoray.methods.parsers import denoise_parser
from cryoray.session import check_gpus, connect_ray, run_tool

PIXEL_SIZE_TOLERANCE = 0.05


def load_model(reference: str) -> Model:
    """The model a betagan training run wrote: a model file, the run's output folder, or an MLflow URI."""
    return read_model(reference, "betagan", required=("pixel_size_angstrom", "box_px"))


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
        noisy, _, frame = normalise_pair(torch.from_numpy(images).to(self.device))
        denoised = denormalise(self.generator(noisy), frame)
        return {"id": index, "denoised": denoised.cpu().numpy()}


def _check_inputs(model: Model, stack_path: Path, star_path: Path) -> tuple[ParticleTable, int, int, float]:
    """Validate the stack/STAR pair against each other and the model on the driver; (table, images, box, pixel size)."""
    table = read_particles_star(star_path)
    particles = table.particles
    stack = check_mrc(stack_path, "stack", float(particles["pixel_size_angstrom"].iloc[0]))
    count, height, width = stack.shape
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
    box = int(model.metadata["box_px"])
    if (height, width) != (box, box):
        expected = f"{box} x {box} px images, the model's training box (window the particles to it, e.g. relion_image_handler)"
        raise CryorayInputError(stack_path, "image size", expected, f"{height} x {width}")
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
    """Denoise every image of ``stack_path`` through Ray Data; write ``<stem>_denoised.mrcs``, ``.star`` and
    ``result.json``. Every input and the output folder are checked before Ray starts."""
    stack_path, star_path = Path(stack_path).resolve(), Path(star_path).resolve()
    table, count, box, pixel = _check_inputs(model, stack_path, star_path)
    outputs = (f"{stack_path.name.split('.')[0]}_denoised.mrcs", f"{star_path.stem}_denoised.star")
    output_dir = check_output_dir(output_dir, "--output-dir", overwrite, outputs)
    out_stack, out_star = output_dir / outputs[0], output_dir / outputs[1]
    if out_stack == stack_path or out_star == star_path:
        raise CryorayInputError(output_dir, "--output-dir", "a folder other than the input's", str(output_dir))
    with removed_on_failure(output_dir, [*outputs, RESULT_FILE]):
        atomic_write(out_stack, lambda tmp: _denoise_into(tmp, model, stack_path, count, box, pixel, batch_size, use_gpu))
        particles = table.particles.assign(image_path=str(out_stack))
        write_particles_star(out_star, ParticleTable(particles=particles, optics=table.optics), overwrite=True)
        result = {
            "images": count,
            "stack": str(out_stack),
            "star": str(out_star),
            "pixel_size_angstrom": pixel,
            "box_px": box,
        }
        atomic_write(output_dir / RESULT_FILE, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    return result


def _denoise_into(
    path: Path, model: Model, stack_path: Path, count: int, box: int, pixel: float, batch_size: int, use_gpu: bool
) -> None:
    """Stream the stack through Ray Data and write each denoised batch at its indices into a memory-mapped ``path``."""
    import ray  # here, where the work starts: the module itself imports without Ray

    started = connect_ray()
    try:
        resources = {"num_gpus": 1} if use_gpu else {"num_cpus": 1}
        stream = ray.data.range(count).map_batches(
            DenoiseBatch,
            fn_constructor_args=(model, str(stack_path), pixel, use_gpu),
            batch_size=batch_size,
            concurrency=1 if use_gpu else (1, max(1, int(ray.cluster_resources().get("CPU", 1)))),
            **resources,
        )
        with mrcfile.new_mmap(str(path), shape=(count, box, box), mrc_mode=2, overwrite=True) as out:
            out.set_image_stack()
            out.voxel_size = pixel
            batches = stream.iter_batches(batch_size=None, batch_format="numpy")
            for batch in console.progress(batches, -(-count // batch_size), "image batches denoised"):
                out.data[batch["id"]] = batch["denoised"]
    finally:
        if started:
            ray.shutdown()


def run_denoise(argv: list[str]) -> int:
    """CLI entry: exit 0 with a ``RESULT`` line, 2 on bad input (one line naming file and field)."""
    args = denoise_parser().parse_args(argv)

    def denoise() -> dict:
        if args.batch_size < 1:
            raise CryorayInputError(None, "--batch-size", "a positive integer", args.batch_size)
        if args.use_gpu:
            check_gpus(1)
        model = load_model(args.model)
        return denoise_stack(model, args.stack, args.star, args.output_dir, args.batch_size, args.use_gpu, args.overwrite)

    return run_tool("betagan denoise", denoise, args.verbosity)
