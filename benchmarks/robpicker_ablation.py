"""RobPicker ablation: supervised (DeepFinder-style) vs dr_only vs lc_only vs full, same budget, one run each.

Every mode trains on the same dataset (sphere labels from noisy annotations on the training tomograms) for
the same number of lower-level steps, then picks the held-out test tomogram; the table gives per-class
hit-box F1, macro F1 per size group, wall time and peak resident memory of the job's process tree.

    python benchmarks/robpicker_ablation.py --dataset tomograms-shrec --epochs 4 --out benchmarks/_work/robpicker_ablation
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import yaml
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
MODES = ("supervised", "dr_only", "lc_only", "full")


def tree_rss_bytes(process: psutil.Process) -> int:
    """Resident memory of a process and all its descendants (the job's driver, Ray and workers)."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_logged(command: list[str], log: Path) -> tuple[int, float, int, str]:
    """Run ``command`` with its output in ``log`` (a file, not a pipe: a full pipe would block the child's console
    until it exits); returns its exit code, wall seconds, peak resident bytes of its process tree and its output."""
    start = time.perf_counter()
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        watched, peak = psutil.Process(process.pid), 0
        while process.poll() is None:
            peak = max(peak, tree_rss_bytes(watched))
            time.sleep(0.5)
    return process.returncode, time.perf_counter() - start, peak, log.read_text()


def run_mode(mode: str, args: argparse.Namespace, out: Path) -> dict:
    """One training job in a subprocess; returns its RESULT plus wall time and peak memory."""
    config = out / f"{mode}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "train": {
                    "epochs": args.epochs,
                    "batch_size": args.batch_size,
                    "seed": args.seed,
                    "cpus_per_worker": 1 / args.num_workers,
                },
                "method": {
                    "mode": mode,
                    "train_patches_per_epoch": args.patches_per_epoch,
                    "meta_patches_per_epoch": args.patches_per_epoch // 2,
                    "learning_rate": args.learning_rate,
                    "precision": args.precision,
                    **json.loads(args.method),
                },
            }
        )
    )
    command = [
        sys.executable, str(REPO / "jobs/robpicker.py"),
        "--dataset", args.dataset, "--config", str(config), "--num-workers", str(args.num_workers),
        "--output-dir", str(out / mode), "--overwrite", "--run-name", f"ablation-{mode}-{int(time.time())}",
        "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}",
    ]  # fmt: skip
    returncode, wall, peak, output = run_logged(command, out / f"{mode}.log")
    result_line = next((line for line in reversed(output.splitlines()) if line.startswith("RESULT ")), None)
    if returncode != 0 or result_line is None:
        raise RuntimeError(f"{mode} failed (exit {returncode}); see {out / f'{mode}.log'}")
    result = json.loads(result_line[len("RESULT ") :])
    history = MlflowClient(result["tracking_uri"]).get_metric_history(result["mlflow_run_id"], "val_f1_macro")
    return {
        "mode": mode,
        "wall_s": wall,
        "peak_rss_gb": peak / 1e9,
        "val_f1_per_epoch": [round(m.value, 3) for m in sorted(history, key=lambda m: m.step)],
        "result": result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="tomograms-shrec")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8, help="patches per step on each worker")
    parser.add_argument("--num-workers", type=int, default=1, help="Ray Train workers (1 CPU each)")
    parser.add_argument("--patches-per-epoch", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=0.05, help="SGD step of the segmenter")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--method", default="{}", help="JSON of further RobPickerConfig settings, e.g. '{\"meta_interval\": 4}'")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/_work/robpicker_ablation")
    args = parser.parse_args()
    args.out = args.out.resolve()  # the MLflow sqlite URI needs an absolute path
    args.out.mkdir(parents=True, exist_ok=True)

    rows, per_class = [], []
    for mode in args.modes:
        run = run_mode(mode, args, args.out)
        metrics = run["result"]["metrics"]
        row = {
            "mode": mode,
            "test_f1_macro": metrics["test_f1_macro"],
            "wall_s": round(run["wall_s"], 1),
            "val_f1_per_epoch": run["val_f1_per_epoch"],
            "peak_rss_gb": round(run["peak_rss_gb"], 2),
        }
        row |= {k.split("/")[-1] + "_f1": v for k, v in metrics.items() if k.startswith("test/hitbox/f1_group/")}
        rows.append(row)
        scores = pd.read_csv(args.out / mode / "scores_test.csv")
        per_class.append(scores[scores["rule"] == "hitbox"].set_index("class_name")["f1"].rename(mode))
        print(json.dumps(row), flush=True)
    summary = pd.DataFrame(rows)
    classes = pd.concat(per_class, axis=1)
    summary.to_csv(args.out / "summary.csv", index=False)
    classes.to_csv(args.out / "per_class_f1.csv")
    print(summary.to_string(index=False))
    print(classes.round(3).to_string())


if __name__ == "__main__":
    main()
