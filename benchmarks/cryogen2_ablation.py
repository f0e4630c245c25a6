"""CryoGEN-II ablation: the GAN (barycenter critic) vs the same generator with the masked loss only vs the input.

Every variant trains the same UNet++ generator from the same seed on the same fixed set of training cubes, drawn
in the same order, for the same number of steps (the paper's comparison: CryoGEN-II vs IsoNet/DeepDeWedge-style
masked-loss training), using the method's own hooks in one process per variant (no Ray: the numbers are the
method's, not the cluster's). Scores are the held-out test cubes' FSC against the simulation's wedge-free ground
truth, inside the missing wedge, over the whole volume and in the measured region, plus PSNR/SSIM; the input row
is the untouched subtomograms. Wall time and peak resident memory are per variant process tree.

    python benchmarks/cryogen2_ablation.py --steps 60 --cube-px 24 --out benchmarks/_work/cryogen2_ablation
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from robpicker_ablation import run_logged  # this folder is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("barycenter", "off")
SCORES = ("fsc_wedge_mean", "fsc_mean", "fsc_measured_mean", "psnr_db", "ssim")


def train_variant(args: argparse.Namespace) -> dict:
    """Train one variant in this process and return its test scores."""
    import numpy as np
    import torch
    from cryoray.config import RunnerConfig
    from cryoray.data.recipes import resolve_dataset
    from cryoray.data.subtomograms import extract_subtomograms
    from cryoray.methods.cryogen2 import CryoGEN2, CryoGEN2Config
    from cryoray.train.context import TrainContext
    from cryoray.train.loop import take_step

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dataset_dir, manifest = resolve_dataset(args.dataset)
    method = CryoGEN2()
    config = CryoGEN2Config(
        adversarial=args.run_variant,
        cube_px=args.cube_px,
        channels=args.channels,
        critic_channels=args.critic_channels,
        train_subtomograms=args.train_subtomograms,
        test_subtomograms=args.test_subtomograms,
        learning_rate=args.learning_rate,
        adversarial_weight=args.adversarial_weight,
        restore_test_tomograms=False,
    )
    steps_per_epoch = args.steps // args.epochs
    runner = RunnerConfig(epochs=args.epochs, batch_size=args.batch_size, max_steps_per_epoch=steps_per_epoch)
    ctx = TrainContext(
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        dataset_dir=dataset_dir,
        manifest=manifest,
        runner=runner,
        steps_per_epoch=steps_per_epoch,
    )
    state = method.setup(config, manifest, ctx)
    source = method._source(dataset_dir, manifest, config, "train")
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    last = {}
    for epoch in range(args.epochs):
        ctx.epoch = epoch
        for module in state.modules.values():
            module.train()
        for _ in range(steps_per_epoch):
            batch = extract_subtomograms(rng.integers(0, len(source), args.batch_size), source)
            last = take_step(method, state, {"subtomogram": torch.from_numpy(batch["subtomogram"])}, config, ctx)
    train_seconds = time.perf_counter() - start
    out = Path(args.out) / args.run_variant
    out.mkdir(parents=True, exist_ok=True)
    scores, _ = method.test(state, config, ctx, out)
    return {"variant": args.run_variant, "train_seconds": train_seconds, "steps": ctx.global_step, "last_step": last, **scores}


def run_variant(variant: str, args: argparse.Namespace, out: Path) -> dict:
    """One variant in a child process; its result plus wall time and peak memory."""
    command = [sys.executable, __file__, "--run-variant", variant, *sys.argv[1:]]
    returncode, wall, peak, output = run_logged(command, out / f"{variant}.log")
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if returncode != 0 or not lines:
        raise RuntimeError(f"variant {variant} failed:\n{output[-3000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result.update(wall_seconds=wall, peak_rss_mib=peak / 2**20)
    (out / f"{variant}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(results: list[dict]) -> str:
    header = "| | in-wedge FSC | whole FSC | measured-region FSC | PSNR (dB) | SSIM | wall (s) | peak RSS (MiB) |"
    rows = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    first = results[0]
    rows.append("| input (no restoration) | " + " | ".join(f"{first[f'test_input_{k}']:.3f}" for k in SCORES) + " | – | – |")
    for r in results:
        name = "CryoGEN-II (barycenter GAN)" if r["variant"] == "barycenter" else "masked loss only (no GAN)"
        rows.append(
            f"| {name} | "
            + " | ".join(f"{r[f'test_{k}']:.3f}" for k in SCORES)
            + f" | {r['wall_seconds']:.0f} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="tomograms-cryogen2")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=4, help="epochs over which the steps are spread (λ schedule)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cube-px", type=int, default=24)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 16, 32])
    parser.add_argument("--critic-channels", type=int, nargs="+", default=[4, 8, 8, 16])
    parser.add_argument("--train-subtomograms", type=int, default=256)
    parser.add_argument("--test-subtomograms", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--adversarial-weight", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", default=str(REPO / "benchmarks/_work/cryogen2_ablation"))
    parser.add_argument("--run-variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_variant:
        print("RESULT " + json.dumps(train_variant(args)), flush=True)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [run_variant(v, args, out) for v in args.variants]
    text = table(results)
    (out / "table.md").write_text(text + "\n")
    print(text)
    by = {r["variant"]: r for r in results}
    if {"barycenter", "off"} <= set(by):
        gain = by["barycenter"]["test_fsc_wedge_mean"] - by["off"]["test_fsc_wedge_mean"]
        print(
            f"in-wedge FSC, GAN − masked only: {gain:+.3f}; "
            f"time ratio {by['barycenter']['wall_seconds'] / by['off']['wall_seconds']:.2f}×"
        )


if __name__ == "__main__":
    main()
