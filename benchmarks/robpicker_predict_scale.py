"""RobPicker at real tomogram scale: the linear-time clustering beside scikit-learn's DBSCAN, and `predict` on 512×512×200.

1. Clustering: a class map of touching balls with speckle noise, clustered by ``dbscan_voxel_labels`` and by
   ``sklearn.cluster.DBSCAN(eps=1, min_samples=5)`` on the voxel coordinates: wall time of each, and whether the
   labels are identical.
2. Predict: a simulated 200×512×512 tomogram (built-in species, SNR 0.5) picked by ``jobs/robpicker.py predict``
   with a trained model, as a user runs it: wall time and peak resident memory of the whole process tree.

    python benchmarks/robpicker_predict_scale.py --model outputs/demo/model.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from cryoray.io.mrc import write_mrc
from cryoray.picking import dbscan_voxel_labels
from cryoray.simulate.tomogram import builtin_species, simulate_tomogram
from robpicker_ablation import run_logged  # this folder is on sys.path when run as a script
from scipy import ndimage
from sklearn.cluster import DBSCAN

REPO = Path(__file__).resolve().parents[1]


def clustering_row(shape_zyx: tuple[int, int, int], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (int(np.prod(shape_zyx) / 3000), 3)) * shape_zyx
    seeds = np.zeros(shape_zyx, dtype=bool)
    seeds[tuple(np.clip(centres.astype(int), 0, np.array(shape_zyx) - 1).T)] = True
    mask = ndimage.binary_dilation(seeds, iterations=4) | (rng.random(shape_zyx) < 0.01)
    start = time.perf_counter()
    ours, n_clusters = dbscan_voxel_labels(mask, 1.0, 5)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = DBSCAN(eps=1.0, min_samples=5).fit_predict(np.argwhere(mask).astype(np.float64))
    sklearn_s = time.perf_counter() - start
    return {
        "shape_zyx": list(shape_zyx),
        "class_voxels": int(mask.sum()),
        "clusters": n_clusters,
        "ours_s": round(ours_s, 2),
        "sklearn_s": round(sklearn_s, 2),
        "speedup": round(sklearn_s / ours_s, 1),
        "identical_labels": bool(np.array_equal(ours[mask], reference + 1)),
    }


def predict_row(model: str, out: Path, shape_zyx: tuple[int, int, int]) -> dict:
    species = builtin_species()
    tomogram = simulate_tomogram(species, shape_zyx, 40, seed=5, snr_linear=0.5)
    path = write_mrc(out / "big.mrc", tomogram.tomogram.astype(np.float32), 10.0, overwrite=True)
    command = [sys.executable, str(REPO / "jobs/robpicker.py"), "predict", "--model", model, "--tomograms", str(path)]
    command += ["--output-dir", str(out / "picks"), "--overwrite"]
    returncode, wall, peak, output = run_logged(command, out / "predict.log")
    if returncode != 0:
        raise RuntimeError(f"predict failed (exit {returncode}); see {out / 'predict.log'}")
    result = json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("RESULT "))[7:])
    return {
        "shape_zyx": list(shape_zyx),
        "voxels": int(np.prod(shape_zyx)),
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(peak / 1e9, 2),
        "picks": result["tomograms"]["big"]["picks"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a RobPicker model (file, run folder or MLflow URI); predict is skipped without")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "robpicker_predict_scale")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {"clustering": [clustering_row(shape) for shape in ((64, 128, 128), (100, 256, 256))]}
    if args.model:
        rows["predict"] = [predict_row(args.model, args.out, (200, 512, 512))]
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
