"""cryoSPIN ablation, side by side in one run: semi- vs fully-amortized (M = 7) and M = 1 vs M = 7 (semi).

Every variant trains on the same simulated images (HSP90 2CG9 from ../shared/data, 64 px, SNR 0.1, CTF; a
subset of ``--images`` so that the whole run fits a CPU box) with the same epochs, switch epoch, batch and
seed; the table gives the pose error after global alignment per epoch (median, MLflow history), the final
FSC resolution of the aligned map against the ground-truth map (0.5 and 0.143), the final pose error over
every image, the head usage, and the wall time of each job.

    python benchmarks/cryospin_ablation.py --out benchmarks/_work/cryospin_ablation          # ≈ 15 min, 2 CPUs
    python benchmarks/cryospin_ablation.py --images 10000 --epochs 20 --switch-epoch 7 --paper-widths --use-gpu

cryoDRGN's ``abinit_homo`` is not run here: on this kind of machine one pose-search epoch of it costs
0.13-1.3 s per image (peers.md §1c), i.e. hours for the same images; peers.md has its numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
HSP90_RECIPE = REPO / "datasets" / "particles-hsp90.yaml"

VARIANTS: dict[str, dict] = {
    "semi-amortized M=7": {"n_heads": 7, "fully_amortized": False},
    "fully-amortized M=7": {"n_heads": 7, "fully_amortized": True},
    "semi-amortized M=1": {"n_heads": 1, "fully_amortized": False},
}


def build_subset(images: int, out: Path) -> Path:
    """The HSP90 recipe with ``images`` particles, built once into ``out`` (absolute source path)."""
    from cryoray.data.recipes import build_particle_dataset

    target = out / f"particles-hsp90-{images}"
    if (target / "manifest.json").is_file():
        return target
    recipe = yaml.safe_load(HSP90_RECIPE.read_text())
    recipe["source"]["path"] = str((HSP90_RECIPE.parent / recipe["source"]["path"]).resolve())
    recipe.update(name=f"particles-hsp90-{images}", n_images=images, images_per_shard=min(images, 2500))
    recipe_path = out / f"particles-hsp90-{images}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    return build_particle_dataset(recipe_path, target, overwrite=True)


def run_variant(name: str, settings: dict, dataset: Path, args: argparse.Namespace, out: Path) -> dict:
    slug = name.replace(" ", "_").replace("=", "")
    method = {**settings, "switch_epoch": args.switch_epoch, "fsc_every_epochs": 1000, "align_search_level": 2}
    if not args.paper_widths:
        method.update(encoder_channels=[16, 32, 64, 64], encoder_convs_per_stage=[1, 1, 2, 2], head_hidden=[128, 64])
    config = out / f"{slug}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "train": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "cpus_per_worker": 1},
                "method": method,
            }
        )
    )
    command = [
        sys.executable, str(REPO / "jobs/cryospin.py"), "--dataset", str(dataset), "--config", str(config),
        "--num-workers", str(args.num_workers), "--output-dir", str(out / slug), "--overwrite",
        "--run-name", f"ablation-{slug}-{int(time.time())}", "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}",
        *(["--use-gpu"] if args.use_gpu else []),
    ]  # fmt: skip
    start = time.perf_counter()
    completed = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    client = MlflowClient(result["tracking_uri"])
    history = client.get_metric_history(result["mlflow_run_id"], "pose_error_median_deg")
    per_epoch = [round(m.value, 1) for m in sorted(history, key=lambda m: m.step)]
    usage = pd.read_csv(result["artifacts"]["head_usage_csv"])["fraction"].round(2).tolist()
    metrics = result["metrics"]
    return {
        "variant": name,
        "median pose error per epoch (deg)": " ".join(map(str, per_epoch)),
        "final pose error median/mean (deg)": f"{metrics['pose_error_median_deg']:.1f} / {metrics['pose_error_mean_deg']:.1f}",
        "FSC 0.5 (Å)": round(metrics["fsc_resolution_0.5_angstrom"], 1),
        "FSC 0.143 (Å)": round(metrics["fsc_resolution_0.143_angstrom"], 1),
        "map correlation": round(metrics["map_correlation"], 3),
        "head usage": " ".join(map(str, usage)),
        "wall (s)": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "_work" / "cryospin_ablation")
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--switch-epoch", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paper-widths", action="store_true", help="the public code's VGG16 widths (GPU)")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = build_subset(args.images, args.out)
    rows = [run_variant(name, VARIANTS[name], dataset, args, args.out) for name in args.variants]
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "summary.csv", index=False)
    print(
        f"{args.images} HSP90 images (64 px, SNR 0.1), {args.epochs} epochs, switch after {args.switch_epoch}, "
        f"batch {args.batch_size}, {args.num_workers} worker(s)"
    )
    print(_markdown(table))


def _markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
