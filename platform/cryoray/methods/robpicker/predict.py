"""Pick particles in new tomograms with a trained RobPicker model: ``python jobs/robpicker.py predict ...``.

Each tomogram is one Ray task (on a GPU with ``--use-gpu``), so a cluster picks many tomograms at once.
A tomogram whose voxel size differs from the training voxel size by more than 2% is resampled to it for
inference (linear interpolation), and its picks are mapped back to its own voxel grid. Evaluation against
a given particle list (distance rule; the hit-box rule needs instance maps only simulations have) is
optional. Output: ``picks_<tomogram>.star/.csv`` per tomogram, ``picks.star`` with all of them
(``rlnTomoName``), an orthoslice PNG per tomogram, ``result.json``, and a last line ``RESULT {json}``.
Every input is checked on the driver before Ray starts; an output folder that holds another run's ``result.json``
or these files is used only with ``--overwrite``; a run that fails leaves none of the files it created.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from scipy import ndimage

from cryoray.errors import CryorayInputError
from cryoray.formats import PicksFormat
from cryoray.io.figures import write_orthoslices_with_picks
from cryoray.io.models import Model, read_model
from cryoray.io.mrc import check_mrc, read_mrc
from cryoray.io.outputs import RESULT_FILE, atomic_write, check_output_dir, removed_on_failure
from cryoray.io.star import TomogramFrame, read_coordinates, write_coordinates
from cryoray.io.validate import check_positive
from cryoray.methods.parsers import predict_parser
from cryoray.methods.robpicker.inference import PickingSettings, pick_tomogram, score_tomograms
from cryoray.nn.unet3d import UNet3D
from cryoray.session import check_gpus, connect_ray, gather, run_tool

RESAMPLE_TOLERANCE = 0.02
ALL_PICKS = "picks.star"


def load_model(reference: str) -> Model:
    """The model a RobPicker training run wrote: a model file, a run's output folder, or an MLflow URI."""
    return read_model(reference, "robpicker", required=("num_classes", "species", "voxel_size_angstrom"))


def build_segmenter(model: Model) -> UNet3D:
    config = model.config
    segmenter = UNet3D(model.metadata["num_classes"], config["channels"], config["bottleneck_channels"])
    segmenter.load_state_dict(model.state_dicts["segmenter"])
    return segmenter.eval()


def picking_settings(config: dict[str, Any], metadata: dict[str, Any] | None = None) -> PickingSettings:
    """The picking settings a model was trained with; ``metadata``: the model file's, whose clustering and
    per-class cluster-size floors (chosen on validation) replace the configured ones."""
    metadata = metadata or {}
    calibrated = metadata.get("min_cluster_voxels")
    sizes = None if calibrated is None else {int(class_id): int(size) for class_id, size in calibrated.items()}
    cluster_by = metadata.get("cluster_by") or config.get("cluster_by", "class")
    return PickingSettings(
        patch_px=config["patch_px"],
        overlap_px=config["inference_overlap_px"],
        batch_size=config["inference_batch_size"],
        dbscan_eps_px=config["dbscan_eps_px"],
        dbscan_min_voxels=config["dbscan_min_voxels"],
        min_cluster_voxels=config["min_cluster_voxels"] if sizes is None else sizes,
        tolerance_px=config["tolerance_px"],
        precision=config.get("precision", "fp32"),
        test_time_flips=config.get("test_time_flips", False),
        cluster_by="class" if cluster_by == "auto" else cluster_by,
    )


def tomogram_name(path: str | Path) -> str:
    """The name a tomogram's picks and figure are written under: its file name without extensions."""
    return Path(path).name.split(".")[0]


def tomogram_outputs(name: str) -> tuple[str, str, str]:
    """The files one tomogram's picks go to: ``.star`` and ``.csv`` picks, and the orthoslice figure."""
    return f"picks_{name}.star", f"picks_{name}.csv", f"orthoslices_{name}.png"


def pick_file(
    model: Model,
    tomogram_path: str,
    voxel_size_angstrom: float | None,
    output_dir: str,
    use_gpu: bool,
    picks_format: PicksFormat = "relion5",
) -> dict[str, Any]:
    """Pick one tomogram file; returns its picks (in its own voxel grid) and where they were written."""
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    mrc = read_mrc(tomogram_path, voxel_size_angstrom)
    tomogram, voxel = mrc.data, mrc.voxel_size_angstrom
    scale = voxel / model.metadata["voxel_size_angstrom"]
    resampled = abs(scale - 1.0) > RESAMPLE_TOLERANCE
    volume = ndimage.zoom(tomogram, scale, order=1) if resampled else tomogram
    picks, _ = pick_tomogram(
        build_segmenter(model).to(device),
        volume,
        picking_settings(model.config, model.metadata),
        device,
    )
    if resampled:
        picks[["x_px", "y_px", "z_px"]] = picks[["x_px", "y_px", "z_px"]] / scale
    name = tomogram_name(tomogram_path)
    picks.insert(0, "tomo_name", name)
    out = Path(output_dir)
    names = {s["class_id"]: s["name"] for s in model.metadata["species"]}
    star, csv, figure = tomogram_outputs(name)  # the driver checked that they may be written
    frames = {name: TomogramFrame(tomogram.shape, voxel)} if picks_format == "relion5" else None
    files = [str(write_coordinates(out / table, picks, overwrite=True, frames=frames)) for table in (star, csv)]
    files.append(str(write_orthoslices_with_picks(out / figure, tomogram, picks, class_names=names, overwrite=True)))
    return {
        "name": name,
        "picks": picks,
        "files": files,
        "shape_zyx": list(tomogram.shape),
        "voxel_size_angstrom": voxel,
        "resampled_by": scale if resampled else 1.0,
    }


def _predict(args: argparse.Namespace) -> dict[str, Any]:
    """Check every input on the driver (model, tomograms, truth, flags, output folder), then pick on Ray."""
    for flag, value in (("--voxel-size-angstrom", args.voxel_size_angstrom), ("--tolerance-px", args.tolerance_px)):
        if value is not None:
            check_positive(value, None, flag)
    if args.use_gpu:
        check_gpus(1)
    model = load_model(args.model)
    checked = [check_mrc(Path(t).resolve(), "volume", args.voxel_size_angstrom) for t in args.tomograms]
    tomograms = [str(info.path) for info in checked]
    names = [tomogram_name(t) for t in tomograms]
    if len(set(names)) != len(names):
        raise CryorayInputError(None, "--tomograms", "files with distinct names (outputs are named after them)", names)
    if args.truth and len(args.truth) != len(tomograms):
        raise CryorayInputError(None, "--truth", f"one particle list per tomogram ({len(tomograms)})", len(args.truth))
    frames = [TomogramFrame(info.shape, info.voxel_size_angstrom or 1.0) for info in checked]  # RELION 5 truth files
    truths = [read_coordinates(t, frame) for t, frame in zip(args.truth, frames)] if args.truth else None
    planned = [ALL_PICKS, *(file for name in names for file in tomogram_outputs(name))]
    output_dir = check_output_dir(args.output_dir, "--output-dir", args.overwrite, planned)
    with removed_on_failure(output_dir, [*planned, RESULT_FILE]):
        return _pick_all(args, model, tomograms, truths, output_dir)


def _pick_all(
    args: argparse.Namespace, model: Model, tomograms: list[str], truths: list[pd.DataFrame] | None, output_dir: Path
) -> dict[str, Any]:
    """One Ray task per (checked) tomogram; then ``picks.star``, the scores and ``result.json``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    import ray  # here, where the work starts: the module itself imports without Ray

    started = connect_ray()
    try:
        task = ray.remote(num_cpus=1, num_gpus=1 if args.use_gpu else 0)(pick_file)
        model_ref = ray.put(model)
        done = gather(
            [
                task.remote(model_ref, t, args.voxel_size_angstrom, str(output_dir), args.use_gpu, args.picks_format)
                for t in tomograms
            ],
            "tomograms picked",
        )
    finally:
        if started:
            ray.shutdown()
    all_picks = pd.concat([d["picks"] for d in done], ignore_index=True)
    frames = {d["name"]: TomogramFrame(tuple(d["shape_zyx"]), d["voxel_size_angstrom"]) for d in done}
    relion5 = frames if args.picks_format == "relion5" else None
    write_coordinates(output_dir / ALL_PICKS, all_picks, overwrite=True, frames=relion5)
    names = {s["class_id"]: s["name"] for s in model.metadata["species"]}
    counts = {names.get(int(c), str(c)): int(n) for c, n in all_picks["class_id"].value_counts().sort_index().items()}
    result: dict[str, Any] = {
        "tomograms": {
            d["name"]: {"picks": len(d["picks"]), "shape_zyx": d["shape_zyx"], "resampled_by": d["resampled_by"]} for d in done
        },
        "picks_per_class": counts,
        "picks": str(output_dir / ALL_PICKS),
        "files": [f for d in done for f in d["files"]],
    }
    if truths is not None:
        tolerance = args.tolerance_px or model.config["tolerance_px"]
        groups = {s["class_id"]: s["size_group"] for s in model.metadata["species"]}
        scores = score_tomograms([(d["picks"], t, None) for d, t in zip(done, truths)], tolerance, names, groups)["distance"]
        result["f1_macro"] = scores["macro"]["f1"]
        result["f1"] = {entry["name"]: entry["f1"] for entry in scores["per_class"].values()}
    atomic_write(output_dir / RESULT_FILE, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    return result


def run_predict(argv: list[str]) -> int:
    """CLI entry: exit 0 with a ``RESULT`` line, 2 on bad input (one line naming file and field), 1 on failure."""
    args = predict_parser().parse_args(argv)
    return run_tool("robpicker predict", lambda: _predict(args), args.verbosity)
