"""Cryo2SSNet's search: the matrix-product pose search against the per-candidate renders it replaced, in one run.

On a known map (the dataset's ground truth), noiseless CTF-free projections at random poses are searched
(a) by DHBS from an encoder-like first guess 10° off (width 4, depth 2 and 5), scored the previous way: every
candidate rendered as a full image and compared by ℓ2 in real space; (b) the same DHBS with the matrix-product
costs over the Fourier disc (`cryoray.physics.pose_search`); (c) a global search (every rotation of Hopf level
2, then down to level 5), which needs no first guess. Seconds per image, the ratio (a)/(b), and the pose error.

Then the encoder alone, supervised by the true poses (d_quat² to them, the paper's encoder and Adam 1e-4, batch
32) on the dataset's noisy images: the held-out median pose error every 250 steps, i.e. how many steps the
amortised part needs before its poses could stand in for the search. Training quality of the whole methods
lives in `benchmarks/spr_abinitio.py`.

With ``--oracle-images N``: the pose error floor of the dataset. Its own noisy CTF images are searched globally
(Hopf level 2 down to 5 and 6, correlation cost over the whole disc) against the *true* map: no ab-initio method
can place these images better than this at their SNR, so it says how far a method's pose error is from the data's
limit. With ``--search-map MAP.mrc`` as well, the same search runs against that map instead (a known-pose
reconstruction from the noisy images, or a method's final map; poses scored after the best global rotation and
hand): which part of a method's pose error its map explains.

Run: .venv/bin/python benchmarks/cryo2ssnet_benchmark.py [--dataset particles-4ake-32] [--images 64] [--encoder-steps 2000]
         [--oracle-images 1000 [--search-map MAP.mrc]]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from cryoray.data.recipes import resolve_dataset
from cryoray.data.shards import read_particle_shard
from cryoray.io.manifest import shard_paths
from cryoray.io.mrc import read_mrc
from cryoray.methods.cryo2ssnet.networks import HartleyDecoder, PoseEncoder
from cryoray.methods.cryo2ssnet.search import quaternion_distance_squared
from cryoray.physics import (
    CTF_PARAMETERS,
    axis_angle_to_matrix,
    ctf_2d,
    euler_relion_to_matrix,
    geodesic_distance_deg,
    ht2_centered,
    ht3_centered,
    random_rotations,
    rotation_error_after_alignment,
    standardize,
)
from cryoray.physics.pose_search import FourierDisc, PoseSearch, search_poses


@dataclass(frozen=True)
class FullRenderSearch(PoseSearch):
    """The previous DHBS cost: each candidate rendered as a whole standardised image, ℓ2 in real space."""

    images: torch.Tensor = torch.zeros(0)

    def cost(self, rotations: torch.Tensor) -> torch.Tensor:
        rendered = HartleyDecoder.render(self.volume_ft, rotations, None)
        return ((rendered - self.images[:, None]) ** 2).mean(dim=(-2, -1))


def timed(problem: PoseSearch, **search: object) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    with torch.no_grad():
        found, _ = search_poses(problem, **search)  # type: ignore[arg-type]
    return found, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="particles-4ake-32")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--encoder-steps", type=int, default=2000)
    parser.add_argument("--oracle-images", type=int, default=0, help="only the pose-error floor on this many images")
    parser.add_argument("--search-map", type=Path, help="with --oracle-images: search against this map, not the truth")
    args = parser.parse_args()
    if args.search_map is not None and not args.oracle_images:
        parser.error("--search-map needs --oracle-images N (the images to search against it)")
    if args.oracle_images:
        floor = search_floor(args.dataset, args.oracle_images, args.search_map)
        where = {"search_map": str(args.search_map) if args.search_map else "ground truth"}
        print("RESULT " + json.dumps({"dataset": args.dataset, "images": args.oracle_images, **where, **floor}))
        return
    dataset_dir, manifest = resolve_dataset(args.dataset)
    reference = torch.from_numpy(manifest.ground_truth_map(dataset_dir))
    hartley = ht3_centered(reference)
    box = reference.shape[-1]
    generator = torch.Generator().manual_seed(0)
    truth = random_rotations(args.images, generator=generator)
    images = HartleyDecoder.render(hartley, truth, None)
    axes = torch.nn.functional.normalize(torch.randn(args.images, 3, generator=generator), dim=-1)
    initial = axis_angle_to_matrix(axes * math.radians(10.0)) @ truth
    disc = FourierDisc.build(box, box // 2)
    fast = PoseSearch(hartley, disc, disc.take(ht2_centered(images)), None, "correlation")
    slow = FullRenderSearch(hartley, disc, fast.observed, None, "correlation", images=images)
    results: dict[str, float | str] = {"dataset": args.dataset, "images": args.images, "threads": torch.get_num_threads()}
    for depth in (2, 5):
        for name, problem in (("full_render", slow), ("matrix", fast)):
            found, seconds = timed(problem, width=4, final_level=depth, initial=initial)
            results[f"dhbs_depth{depth}_{name}_s_per_image"] = seconds / args.images
            results[f"dhbs_depth{depth}_{name}_median_error_deg"] = float(geodesic_distance_deg(found, truth).median())
        results[f"dhbs_depth{depth}_speedup"] = (
            results[f"dhbs_depth{depth}_full_render_s_per_image"] / results[f"dhbs_depth{depth}_matrix_s_per_image"]
        )
    found, seconds = timed(fast, width=4, final_level=5, start_level=2)
    results["global_level2_to_5_s_per_image"] = seconds / args.images
    results["global_level2_to_5_median_error_deg"] = float(geodesic_distance_deg(found, truth).median())
    results["encoder_supervised_median_error_deg"] = encoder_supervised(args.dataset, args.encoder_steps)
    print(json.dumps(results, indent=1))
    print("RESULT " + json.dumps(results))


def dataset_arrays(dataset: str, count: int | None = None) -> tuple[torch.Tensor, pd.DataFrame, torch.Tensor]:
    """The first ``count`` images (standardised), their metadata and true rotations."""
    dataset_dir, manifest = resolve_dataset(dataset)
    shards = [read_particle_shard(path) for path in shard_paths(dataset_dir, manifest)]
    images = standardize(torch.from_numpy(np.concatenate([np.asarray(i) for i, _ in shards])[:count]), 2)
    table = pd.concat([t for _, t in shards], ignore_index=True).iloc[: len(images)]
    truth = euler_relion_to_matrix(
        *(torch.tensor(table[c].to_numpy(), dtype=torch.float32) for c in ("rot_deg", "tilt_deg", "psi_deg"))
    )
    return images, table, truth


@torch.no_grad()
def search_floor(dataset: str, count: int, search_map: Path | None = None, batch_size: int = 100) -> dict[str, float]:
    """Median / 90th-percentile pose error (°) of a global search of the images against the true map (or against
    ``search_map``, in its own frame: then the errors are taken after the best global rotation and hand)."""
    dataset_dir, manifest = resolve_dataset(dataset)
    volume = manifest.ground_truth_map(dataset_dir) if search_map is None else read_mrc(search_map).data
    hartley = ht3_centered(torch.from_numpy(np.asarray(volume, dtype=np.float32)))
    images, table, truth = dataset_arrays(dataset, count)
    disc = FourierDisc.build(manifest.box_px, manifest.box_px // 2)
    found: dict[int, list[torch.Tensor]] = {5: [], 6: []}
    start = time.perf_counter()
    for lo in range(0, len(images), batch_size):
        part = slice(lo, lo + batch_size)
        ctf = None
        if manifest.has_ctf:
            columns = {k: torch.tensor(table[k].to_numpy()[part], dtype=torch.float32) for k in CTF_PARAMETERS}
            ctf = disc.take(ctf_2d(manifest.box_px, manifest.voxel_size_angstrom, **columns))
        problem = PoseSearch(hartley, disc, disc.take(ht2_centered(images[part])), ctf, "correlation")
        for level in found:
            found[level].append(search_poses(problem, width=8, final_level=level, start_level=2)[0])
    result = {"seconds_per_image": (time.perf_counter() - start) / len(images)}
    for level, parts in found.items():
        poses = torch.cat(parts)
        if search_map is None:
            errors = geodesic_distance_deg(poses, truth)
        else:
            errors = rotation_error_after_alignment(poses.double(), truth.double())["errors_deg"].float()
        result[f"level{level}_median_error_deg"] = float(errors.median())
        result[f"level{level}_p90_error_deg"] = float(errors.quantile(0.9))
        result[f"level{level}_within_10deg"] = float((errors <= 10).float().mean())
        result[f"level{level}_beyond_90deg"] = float((errors > 90).float().mean())  # the other mode of a pseudo-symmetry
    return result


def encoder_supervised(dataset: str, steps: int, batch_size: int = 32, held_out: int = 500) -> dict[int, float]:
    """Median pose error (°) of held-out images against the step count, the encoder trained on the true poses."""
    images, _, truth = dataset_arrays(dataset)
    torch.manual_seed(0)
    encoder = PoseEncoder(images.shape[-1])
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    train = len(images) - held_out
    curve = {}
    for step in range(1, steps + 1):
        pick = torch.randint(0, train, (batch_size,), generator=generator)
        loss = quaternion_distance_squared(encoder(images[pick]), truth[pick]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 250 == 0:
            with torch.no_grad():
                predicted = encoder(images[train:])
            curve[step] = float(geodesic_distance_deg(predicted, truth[train:]).median())
            print(f"encoder supervised: step {step}, held-out median error {curve[step]:.1f}°", flush=True)
    return curve


if __name__ == "__main__":
    main()
