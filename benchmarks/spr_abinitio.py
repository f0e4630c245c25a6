"""Ab-initio single-particle benchmark: Cryo2SSNet and cryoSPIN beside cryoDRGN ``abinit_homo`` on the same images.

Each method runs as a user runs it (``python jobs/<method>.py --dataset D``: its default settings, 2 Ray workers),
one after the other on the same machine; its per-epoch pose error comes back from MLflow with wall-clock
timestamps. Ablation rows (``--ablations``) rerun a method with one of its departures from the paper undone;
``--budget-epochs N`` runs each method N epochs instead of its default 10. cryoDRGN (its own virtualenv) gets the
same images as an .mrcs stack and a CTF pickle, runs ``abinit_homo_old`` (``abinit_homo`` of cryoDRGN < 4)
for ``--cryodrgn-budget-factor`` × our slowest wall time on that dataset (or ``--cryodrgn-budget-minutes``), and
every epoch's map and poses are scored by the same code as ours (global alignment with hand, FSC against the ground
truth, pose error modulo the recipe's point group).

cryoDRGN's virtualenv (once, ~70 s and 2.2 GB; ../shared/research/peers.md §1):
    python3 -m venv /tmp/peers/cryodrgn && /tmp/peers/cryodrgn/bin/pip install torch==2.13.0 cryodrgn==4.3.1

Run (writes table.md, curves.csv, curves.png and results.json under --out):
    .venv/bin/python benchmarks/spr_abinitio.py --out benchmarks/out/spr_abinitio \
        [--datasets particles-4ake-32 particles-4ake-32-snr0.1 particles-4ake-d2-32] [--methods cryo2ssnet cryospin] \
        [--ablations] [--budget-epochs 30] [--cryodrgn-venv /tmp/peers/cryodrgn]
        [--cryodrgn-budget-factor 3 | --cryodrgn-budget-minutes 30]
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from cryoray.data.recipes import resolve_dataset
from cryoray.data.shards import read_particle_shard
from cryoray.io.figures import agg_figure
from cryoray.io.manifest import DatasetManifest, shard_paths
from cryoray.io.mrc import read_mrc, write_mrc
from cryoray.methods.single_particle import evaluate_reconstruction
from cryoray.physics import euler_relion_to_matrix

REPO = Path(__file__).resolve().parents[1]
POSE_METRIC = "pose_error_median_deg"
# Ablation rows (``--ablations``): the paper's search (the defaults' departures switched off).
ABLATIONS = {
    "cryo2ssnet": {
        "paper-search": {
            "search_start": "encoder",
            "soft_assignment_fraction": 0.0,
            "search_band_start": 1.0,
            "stage1_loss_band": False,
            "output_poses": "encoder",
        }
    },
    "cryospin": {"paper-search": {"pose_proposals": "heads"}},
}


def longer_budget(method: str, epochs: int) -> dict:
    """The job config of a ``epochs``-epoch run: cryoSPIN keeps its default share of auto-encoding (half the run);
    Cryo2SSNet's schedule is already in fractions of the run."""
    return {"train": {"epochs": epochs}, **({"method": {"switch_epoch": epochs // 2}} if method == "cryospin" else {})}


def run_job(method: str, dataset: str, out: Path, label: str, overrides: dict | None) -> dict:
    """One job as a user runs it, ``overrides`` a job config (``--config``); wall time from launch (Ray start
    included) and the per-epoch pose error."""
    run_dir = out / f"{label}-{dataset}"
    command = [sys.executable, str(REPO / "jobs" / f"{method}.py"), "--dataset", dataset, "--output-dir", str(run_dir)]
    command += ["--overwrite", "--tracking-uri", f"sqlite:///{out.resolve()}/mlflow.db"]
    if overrides:
        config = out / f"{label}.yaml"
        config.write_text(json.dumps(overrides))  # JSON is YAML
        command += ["--config", str(config)]
    start = time.time()
    finished = subprocess.run(command, capture_output=True, text=True)
    wall_s = time.time() - start
    (out / f"{label}-{dataset}.log").write_text(finished.stdout + finished.stderr)
    if finished.returncode != 0:
        raise RuntimeError(f"{label} on {dataset} failed ({finished.returncode}); see {out / f'{label}-{dataset}.log'}")
    result = json.loads((run_dir / "result.json").read_text())
    client = mlflow.tracking.MlflowClient(f"sqlite:///{out.resolve()}/mlflow.db")
    history = client.get_metric_history(result["mlflow_run_id"], POSE_METRIC)
    curve = [(m.timestamp / 1000 - start, m.value) for m in sorted(history, key=lambda m: m.step)]
    return {"label": label, "method": method, "wall_s": wall_s, "metrics": result["metrics"], "curve": curve}


def _dataset_arrays(dataset: str) -> tuple[Path, DatasetManifest, np.ndarray, pd.DataFrame]:
    dataset_dir, manifest = resolve_dataset(dataset)
    shards = [read_particle_shard(path) for path in shard_paths(dataset_dir, manifest)]
    images = np.concatenate([np.asarray(images) for images, _ in shards]).astype(np.float32)
    return dataset_dir, manifest, images, pd.concat([table for _, table in shards], ignore_index=True)


def export_for_cryodrgn(dataset: str, folder: Path) -> tuple[Path, Path]:
    """The dataset as cryoDRGN reads it: particles.mrcs and ctf.pkl (N × 9: D, Apix, dfU, dfV, dfAng, kV, Cs, w, phase)."""
    folder.mkdir(parents=True, exist_ok=True)
    _, manifest, images, table = _dataset_arrays(dataset)
    stack = folder / "particles.mrcs"
    write_mrc(stack, images, manifest.voxel_size_angstrom, overwrite=True)
    columns = ["defocus_u_angstrom", "defocus_v_angstrom", "defocus_angle_deg", "voltage_kv", "cs_mm"]
    columns += ["amplitude_contrast", "phase_shift_deg"]
    ctf = np.column_stack(
        [np.full(len(table), manifest.box_px), np.full(len(table), manifest.voxel_size_angstrom), table[columns].to_numpy()]
    ).astype(np.float32)
    ctf_path = folder / "ctf.pkl"
    with ctf_path.open("wb") as handle:
        pickle.dump(ctf, handle)
    return stack, ctf_path


def run_cryodrgn(venv: Path, dataset: str, out: Path, budget_s: float) -> dict:
    """``abinit_homo_old`` for ``budget_s`` seconds; every finished epoch scored by our evaluation."""
    folder = out / f"cryodrgn-{dataset}"
    stack, ctf_path = export_for_cryodrgn(dataset, folder / "input")
    dataset_dir, manifest, _, table = _dataset_arrays(dataset)
    half_box = manifest.box_px // 2
    command = [str(venv / "bin" / "cryodrgn"), "abinit_homo_old", str(stack), "--ctf", str(ctf_path), "-o", str(folder / "run")]
    command += ["-n", "100", "--pretrain", str(manifest.count), "--no-amp", "--dim", "128", "--uninvert-data"]
    # --ps-freq 2: cryoDRGN searches when epoch % ps_freq == 1, so 1 would never search; 2 searches every other epoch.
    command += ["--l-start", str(half_box // 2), "--l-end", str(half_box), "--l-ramp-epochs", "4", "--ps-freq", "2"]
    command += ["--t-extent", "2", "--t-ngrid", "3", "--seed", "0"]
    start = time.time()
    with (folder / "cryodrgn.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            process.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    truth = euler_relion_to_matrix(
        *(torch.tensor(table[c].to_numpy(), dtype=torch.float32) for c in ("rot_deg", "tilt_deg", "psi_deg"))
    )
    reference = manifest.ground_truth_map(dataset_dir)
    curve, final = [], {}
    for volume_path in sorted((folder / "run").glob("reconstruct.*.mrc"), key=lambda p: int(p.name.split(".")[1])):
        epoch = volume_path.name.split(".")[1]
        with (folder / "run" / f"pose.{epoch}.pkl").open("rb") as handle:
            rotations = torch.from_numpy(np.asarray(pickle.load(handle)[0], dtype=np.float32))
        density = torch.from_numpy(read_mrc(volume_path).data.astype(np.float32))
        final = evaluate_reconstruction(
            density, reference, manifest.voxel_size_angstrom, rotations, truth, symmetry=manifest.symmetry
        ).metrics
        curve.append(
            (volume_path.stat().st_mtime - start, final["pose_error_median_deg"], final["fsc_resolution_0.143_angstrom"])
        )
    return {"label": "cryodrgn", "method": "cryodrgn", "wall_s": time.time() - start, "metrics": final, "curve": curve}


def write_report(rows: list[dict], out: Path) -> None:
    records, curves = [], []
    for row in rows:
        dataset_dir, manifest = resolve_dataset(row["dataset"])
        nyquist = 2 * manifest.voxel_size_angstrom
        metrics = row["metrics"]
        fsc = metrics.get("fsc_resolution_0.143_angstrom", float("nan"))
        records.append(
            {
                "dataset": row["dataset"],
                "run": row["label"],
                "wall_s": round(row["wall_s"]),
                "pose_error_median_deg": round(metrics.get("pose_error_median_deg", float("nan")), 2),
                "pose_error_mean_deg": round(metrics.get("pose_error_mean_deg", float("nan")), 1),
                "fsc_0.143_angstrom": round(fsc, 2),
                "fsc_0.143_over_nyquist": round(fsc / nyquist, 2),
                "map_correlation": round(metrics.get("map_correlation", float("nan")), 3),
                "encoder_pose_error_median_deg": round(metrics.get("encoder_pose_error_median_deg", float("nan")), 1),
            }
        )
        for point in row["curve"]:
            curves.append({"dataset": row["dataset"], "run": row["label"], "wall_s": point[0], "pose_error_median_deg": point[1]})
    table = pd.DataFrame(records)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in table.itertuples(index=False)]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    pd.DataFrame(curves).to_csv(out / "curves.csv", index=False)
    datasets = sorted({r["dataset"] for r in rows})
    fig = agg_figure(figsize=(5 * len(datasets), 3.6), dpi=110)
    axes = np.atleast_1d(fig.subplots(1, len(datasets)))
    frame = pd.DataFrame(curves)
    for ax, dataset in zip(axes, datasets):
        for run, part in frame[frame["dataset"] == dataset].groupby("run") if len(frame) else []:
            ax.plot(part["wall_s"] / 60, part["pose_error_median_deg"], marker="o", label=run)
        ax.set_yscale("log")
        ax.set_xlabel("wall time (min)")
        ax.set_ylabel("median pose error (°)")
        ax.set_title(dataset, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+", default=["particles-4ake-32", "particles-4ake-32-snr0.1", "particles-4ake-d2-32"]
    )
    parser.add_argument("--methods", nargs="*", default=["cryo2ssnet", "cryospin"])
    parser.add_argument("--ablations", action="store_true", help="also each method's ablation rows (ABLATIONS)")
    parser.add_argument("--budget-epochs", type=int, help="each method for this many epochs instead of its default")
    parser.add_argument("--cryodrgn-venv", type=Path, help="virtualenv with cryodrgn 4.3.1 (omit: no cryoDRGN rows)")
    parser.add_argument("--cryodrgn-budget-factor", type=float, default=3.0)
    parser.add_argument("--cryodrgn-budget-minutes", type=float, help="cryoDRGN's wall time (default: the factor × ours)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "spr_abinitio")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from --out's results.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.json"
    rows: list[dict] = json.loads(results.read_text()) if results.is_file() else []
    if args.report_only:
        write_report(rows, args.out)
        return
    for dataset in args.datasets:
        suffix = f"-{args.budget_epochs}-epochs" if args.budget_epochs else ""
        labels = [m + suffix for m in args.methods]
        labels += [f"{m}-{name}" for m in args.methods for name in ABLATIONS[m]] if args.ablations else []
        labels += ["cryodrgn"] if args.cryodrgn_venv is not None else []
        rows = [row for row in rows if not (row["dataset"] == dataset and row["label"] in labels)]  # reruns replace
        for method in args.methods:
            budget = longer_budget(method, args.budget_epochs) if args.budget_epochs else None
            rows.append({**run_job(method, dataset, args.out, method + suffix, budget), "dataset": dataset})
            for name, overrides in ABLATIONS[method].items() if args.ablations else ():
                label = f"{method}-{name}"
                rows.append({**run_job(method, dataset, args.out, label, {"method": overrides}), "dataset": dataset})
            print(json.dumps({k: rows[-1][k] for k in ("label", "wall_s", "metrics")}, default=float), flush=True)
        if args.cryodrgn_venv is not None:
            ours = [row["wall_s"] for row in rows if row["dataset"] == dataset and row["method"] != "cryodrgn"]
            minutes = args.cryodrgn_budget_minutes
            if minutes is None and not ours:
                parser.error(f"no row of ours on {dataset} to size cryoDRGN's budget: give --cryodrgn-budget-minutes")
            if minutes is not None and minutes <= 0:
                parser.error(f"--cryodrgn-budget-minutes must be positive, got {minutes}")
            budget_s = 60 * minutes if minutes is not None else args.cryodrgn_budget_factor * max(ours)
            rows.append({**run_cryodrgn(args.cryodrgn_venv, dataset, args.out, budget_s), "dataset": dataset})
        results.write_text(json.dumps(rows, indent=1, default=float))
        write_report(rows, args.out)


if __name__ == "__main__":
    main()
