"""Gold-standard projection matching after an ab-initio run: a by-parts experiment for the SNR 0.1 target.

Does the pose error of an ab-initio run fall when its poses are refined the way a refinement program does it? The
images are split into two halves, each with its own map (least squares through the project's image-formation model),
and repeated: the half-maps' FSC gives the band that is signal (FSC ≥ 0.143); each half's images are searched
against their own half's map over that band only, locally around their current pose (Hopf level ``--start-level`` →
``--final-level``; ``--global-first``: the first iteration searches globally); the half-maps are rebuilt from the
new poses. Both halves start from one run's poses, so their FSC is not independent (it over-states the band); a true
gold-standard split needs two independent ab-initio runs. Reported per iteration: median pose error after global
alignment to the truth, shares within 10° and beyond 90°, the half-map FSC 0.143 resolution, seconds.

Run: .venv/bin/python benchmarks/projection_matching.py --dataset particles-3qm1-32-snr0.1 \
         --run benchmarks/out/spr_abinitio/cryospin-particles-3qm1-32-snr0.1 [--iterations 4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from cryoray.physics import ctf_2d, rotation_error_after_alignment
from cryoray.physics.fourier import ht2_centered, ht3_centered
from cryoray.physics.metrics import fourier_shell_correlation, fsc_resolution_angstrom
from cryoray.physics.pose_search import FourierDisc, PoseSearch, search_poses
from symmetry_breaking import images_with_ctf, reconstruct, run_rotations


@torch.no_grad()
def refine_poses(
    volume: torch.Tensor,
    images: torch.Tensor,
    ctf_columns: dict[str, torch.Tensor],
    pixel: float,
    band_px: float,
    initial: torch.Tensor | None,
    start_level: int,
    final_level: int,
    batch_size: int = 100,
) -> torch.Tensor:
    """Each image's best pose against ``volume`` over the disc of radius ``band_px``: locally from ``initial``, or
    globally (``initial`` None, from Hopf level ``start_level``)."""
    box = images.shape[-1]
    disc = FourierDisc.build(box, band_px)
    hartley = ht3_centered(volume)
    found = []
    for lo in range(0, len(images), batch_size):
        part = slice(lo, lo + batch_size)
        ctf = disc.take(ctf_2d(box, pixel, **{k: v[part] for k, v in ctf_columns.items()}))
        problem = PoseSearch(hartley, disc, disc.take(ht2_centered(images[part])), ctf, "correlation")
        start = None if initial is None else initial[part]
        found.append(search_poses(problem, width=8, final_level=final_level, start_level=start_level, initial=start)[0])
    return torch.cat(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="particles-3qm1-32-snr0.1")
    parser.add_argument("--run", type=Path, required=True, help="a job's output folder with poses.star")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--start-level", type=int, default=3, help="local search: the beam's first Hopf level")
    parser.add_argument("--final-level", type=int, default=5)
    parser.add_argument("--global-first", action="store_true", help="the first iteration searches globally (level 2 on)")
    parser.add_argument("--lsq-steps", type=int, default=40)
    parser.add_argument("--l2", type=float, default=1e-2, help="ℓ2 weight on the voxels of each half-map")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/projection_matching.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    pixel, images, ctf, truth = images_with_ctf(args.dataset)
    rotations = run_rotations(args.run, len(images))
    box = images.shape[-1]
    halves = [torch.arange(0, len(images), 2), torch.arange(1, len(images), 2)]

    def half_maps() -> list[torch.Tensor]:
        return [
            reconstruct(images[h], rotations[h], {k: v[h] for k, v in ctf.items()}, pixel, args.l2, args.lsq_steps)
            for h in halves
        ]

    def score(iteration: int, maps: list[torch.Tensor], seconds: float) -> dict[str, float]:
        errors = rotation_error_after_alignment(rotations.double(), truth.double())["errors_deg"]
        frequency, fsc = fourier_shell_correlation(maps[0], maps[1])
        return {
            "iteration": iteration,
            "median_error_deg": float(errors.median()),
            "within_10deg": float((errors <= 10).float().mean()),
            "beyond_90deg": float((errors > 90).float().mean()),
            "half_map_fsc_0.143_angstrom": fsc_resolution_angstrom(frequency, fsc, pixel, 0.143),
            "seconds": seconds,
        }

    start = time.perf_counter()
    maps = half_maps()
    rows = [score(0, maps, time.perf_counter() - start)]
    print(json.dumps(rows[-1]), flush=True)
    for iteration in range(1, args.iterations + 1):
        frequency, fsc = fourier_shell_correlation(maps[0], maps[1])
        band_px = max(2.0, box * pixel / fsc_resolution_angstrom(frequency, fsc, pixel, 0.143))  # the signal's band
        global_search = args.global_first and iteration == 1
        for h, volume in zip(halves, maps):
            rotations[h] = refine_poses(
                volume,
                images[h],
                {k: v[h] for k, v in ctf.items()},
                pixel,
                band_px,
                None if global_search else rotations[h],
                2 if global_search else args.start_level,
                args.final_level,
            )
        maps = half_maps()
        rows.append({**score(iteration, maps, time.perf_counter() - start), "band_px": band_px})
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    print("RESULT " + json.dumps(rows[-1]))


if __name__ == "__main__":
    main()
