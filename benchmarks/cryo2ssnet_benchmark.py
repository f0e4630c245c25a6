"""Cryo2SSNet benchmark: DHBS vs exhaustive search, and training with vs without DHBS on the same step budget.

Part 1 (search): on a known map (the dataset's ground truth), noiseless CTF-free projections at random poses are
searched (a) by DHBS (width c, depth i) from an encoder-like first guess 10° off, and (b) exhaustively on the
Hopf grid of the same level. Both are timed on the same images in one run; the exhaustive level-5 cost
(2.36 M rotations per image) is extrapolated from the measured per-render cost of the exhaustive run (level 2 by default).

Part 2 (training): the method's own train_step on the dataset's images, in-process on one worker, for the same
number of steps with DHBS (paper mode) and without it (end to end, the paper's "no DHBS" ablation); FSC
resolution (0.5 / 0.143) against the ground truth after alignment, pose error, wall time and images/s.

Run: .venv/bin/python benchmarks/cryo2ssnet_benchmark.py [--dataset particles-4ake] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import pandas as pd
import torch
from cryoray.config import RunnerConfig
from cryoray.data.recipes import resolve_dataset
from cryoray.data.shards import read_particle_shard
from cryoray.io.manifest import shard_paths
from cryoray.methods.cryo2ssnet import Cryo2SSNet, Cryo2SSNetConfig
from cryoray.methods.cryo2ssnet.networks import HartleyDecoder
from cryoray.methods.cryo2ssnet.search import beam_search
from cryoray.methods.single_particle import evaluate_reconstruction
from cryoray.physics import (
    axis_angle_to_matrix,
    euler_relion_to_matrix,
    geodesic_distance_deg,
    hopf_grid_rotations,
    hopf_grid_size,
    random_rotations,
    standardize,
)
from cryoray.physics.image_formation import CTF_PARAMETERS
from cryoray.train.context import TrainContext
from cryoray.train.loop import steps_per_epoch, take_step


def search_benchmark(reference: torch.Tensor, images: int, width: int, depth: int, exhaustive_level: int) -> dict:
    decoder = HartleyDecoder(reference.shape[-1], 1.0, reference.shape[-1] / 2)
    with torch.no_grad():
        decoder.density.copy_(reference)
        hartley = decoder.hartley_volume()
    generator = torch.Generator().manual_seed(0)
    truth = random_rotations(images, generator=generator)
    observed = HartleyDecoder.render(hartley, truth, None)
    axes = torch.nn.functional.normalize(torch.randn(images, 3, generator=generator), dim=-1)
    initial = axis_angle_to_matrix(axes * math.radians(10.0)) @ truth
    renders = 0

    def cost(rotations: torch.Tensor) -> torch.Tensor:
        nonlocal renders
        renders += rotations.shape[0] * rotations.shape[1]
        return ((HartleyDecoder.render(hartley, rotations, None) - observed[:, None]) ** 2).mean(dim=(-2, -1))

    out = {}
    with torch.no_grad():
        for level in sorted({exhaustive_level, depth}):
            start = time.perf_counter()
            found, _ = beam_search(cost, initial, width, level)
            out[f"dhbs_depth{level}_s_per_image"] = (time.perf_counter() - start) / images
            out[f"dhbs_depth{level}_median_error_deg"] = float(geodesic_distance_deg(found, truth).median())
        grid = hopf_grid_rotations(exhaustive_level)
        renders = 0
        start = time.perf_counter()
        best_cost = torch.full((images,), math.inf)
        best = torch.zeros(images, dtype=torch.long)
        for first in range(0, grid.shape[0], 256):
            chunk = grid[first : first + 256]
            scores = cost(chunk[None].expand(images, -1, -1, -1))
            value, where = scores.min(dim=1)
            better = value < best_cost
            best_cost, best = torch.where(better, value, best_cost), torch.where(better, where + first, best)
        exhaustive_s = (time.perf_counter() - start) / images
        per_render_s = exhaustive_s * images / renders
    out[f"exhaustive_level{exhaustive_level}_s_per_image"] = exhaustive_s
    out[f"exhaustive_level{exhaustive_level}_median_error_deg"] = float(geodesic_distance_deg(grid[best], truth).median())
    out[f"exhaustive_level{exhaustive_level}_over_dhbs_depth{exhaustive_level}"] = (
        exhaustive_s / out[f"dhbs_depth{exhaustive_level}_s_per_image"]
    )
    out[f"exhaustive_level{depth}_s_per_image_extrapolated"] = per_render_s * hopf_grid_size(depth)
    out[f"exhaustive_level{depth}_over_dhbs_depth{depth}_extrapolated"] = (
        per_render_s * hopf_grid_size(depth) / out[f"dhbs_depth{depth}_s_per_image"]
    )
    return out


def training_benchmark(dataset: str, steps: int, batch_size: int, use_search: bool, eval_images: int) -> dict:
    dataset_dir, manifest = resolve_dataset(dataset)
    shards = [read_particle_shard(path) for path in shard_paths(dataset_dir, manifest)]
    images = torch.from_numpy(np.concatenate([images for images, _ in shards]))
    table = pd.concat([table for _, table in shards], ignore_index=True)
    ctf = {k: torch.tensor(table[k].to_numpy(), dtype=torch.float32) for k in CTF_PARAMETERS}
    truth = euler_relion_to_matrix(
        *(torch.tensor(table[c].to_numpy(), dtype=torch.float32) for c in ("rot_deg", "tilt_deg", "psi_deg"))
    )
    reference = manifest.ground_truth_map(dataset_dir)
    method = Cryo2SSNet()
    config = Cryo2SSNetConfig(use_search=use_search, denoiser_pretrain_steps=steps // 10 if use_search else 0)
    epochs = max(1, math.ceil(steps * batch_size / manifest.count))
    runner = RunnerConfig(epochs=epochs, batch_size=batch_size, max_steps_per_epoch=math.ceil(steps / epochs))
    ctx = TrainContext(
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        dataset_dir=dataset_dir,
        manifest=manifest,
        runner=runner,
        steps_per_epoch=steps_per_epoch(manifest.count, 1, runner),
    )
    torch.manual_seed(0)
    state = method.setup(config, manifest, ctx)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        pick = torch.randint(0, manifest.count, (batch_size,), generator=generator)
        take_step(method, state, {"image": images[pick], **{k: v[pick] for k, v in ctf.items()}}, config, ctx)
    wall_s = time.perf_counter() - start
    with torch.no_grad():
        predicted = state.unwrapped("encoder")(standardize(images[:eval_images], 2))
    metrics = evaluate_reconstruction(
        state.unwrapped("decoder").density.detach(), reference, manifest.voxel_size_angstrom, predicted, truth[:eval_images]
    ).metrics
    return {
        "steps": steps,
        "wall_s": wall_s,
        "images_per_s": steps * batch_size / wall_s,
        "nyquist_angstrom": 2 * manifest.voxel_size_angstrom,
        **metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="particles-4ake")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--search-images", type=int, default=4)
    parser.add_argument("--exhaustive-level", type=int, default=2)
    parser.add_argument("--eval-images", type=int, default=1000)
    args = parser.parse_args()
    dataset_dir, manifest = resolve_dataset(args.dataset)
    reference = torch.from_numpy(manifest.ground_truth_map(dataset_dir))
    results = {"dataset": args.dataset, "threads": torch.get_num_threads()}
    results["search"] = search_benchmark(reference, args.search_images, 4, 5, args.exhaustive_level)
    print(json.dumps(results["search"], indent=1), flush=True)
    for name, use_search in (("dhbs", True), ("no_dhbs", False)):
        results[name] = training_benchmark(args.dataset, args.steps, args.batch_size, use_search, args.eval_images)
        print(name, json.dumps(results[name], indent=1), flush=True)
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
