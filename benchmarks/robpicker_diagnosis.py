"""RobPicker by parts: the segmentation net alone, trained in-process (no Ray, no meta step) for a fixed step budget.

Each row trains the U-Net by plain SGD from one seed with one loss and one label source, then picks the
validation and test tomograms with the job's own inference and scoring. It isolates what limits learning
(the loss, the labels, the budget) from the meta-learning and the platform.

    python benchmarks/robpicker_diagnosis.py --dataset tomograms-smoke --steps 150 --precisions fp32 bf16
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from cryoray.config import RunnerConfig
from cryoray.data.patches import draw_patches, patch_source, split_entries
from cryoray.data.recipes import resolve_dataset
from cryoray.io.manifest import DatasetManifest
from cryoray.io.models import write_model_file
from cryoray.methods.robpicker import RobPicker, RobPickerConfig
from cryoray.methods.robpicker.inference import (
    PickingSettings,
    SegmentedTomogram,
    calibrate_min_cluster_voxels,
    evaluate_split,
    score_split,
    segment_split,
)
from cryoray.methods.robpicker.predict import build_segmenter, load_model, picking_settings
from cryoray.train.context import TrainContext


def run(args: argparse.Namespace, precision: str, labels: str) -> dict:
    dataset_dir, manifest = resolve_dataset(args.dataset)
    overrides = json.loads(args.method)
    config = RobPickerConfig(**{**overrides, "mode": "supervised", "precision": precision, "train_labels": labels})
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    method = RobPicker()  # supervised mode: the method's own plain-Dice SGD step on the segmenter alone
    ctx = TrainContext(
        rank=0, world_size=1, device=torch.device("cpu"), dataset_dir=dataset_dir, manifest=manifest, runner=RunnerConfig()
    )
    state = method.setup(config, manifest, ctx)
    net = state.modules["segmenter"]
    source = patch_source(dataset_dir, split_entries(manifest, "train"), labels, "annotations")
    shift = config.patch_px // 4 if config.max_shift_px is None else config.max_shift_px
    start, history = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        net.train()
        drawn = draw_patches(source, rng, args.batch_size, config.patch_px, shift, "particles", augment=True)
        batch = {"patch": torch.from_numpy(drawn["patch"]), "labels": torch.from_numpy(drawn["labels"]).long()}
        loss = method.train_step(state, batch, config, ctx)["dice"]
        ctx.global_step += 1
        if step % args.eval_every == 0 or step == args.steps:
            val = evaluate_split(net, dataset_dir, manifest, "val", config.picking(), torch.device("cpu"), "val_")
            history.append({"step": step, "loss": loss, "val_f1_macro": val["val_f1_macro"]})
            print(
                f"{precision:>5} {labels:>6} step {step:4d} loss {loss:.3f} val F1 {val['val_f1_macro']:.3f}",
                flush=True,
            )
    train_s = time.perf_counter() - start
    if args.save_model:
        write_model_file(
            args.save_model,
            method.name,
            {"segmenter": net},
            {
                "config": config.model_dump(mode="json"),
                "num_classes": len(manifest.species) + 1,
                "species": [s.model_dump(mode="json") for s in manifest.species],
                "voxel_size_angstrom": manifest.voxel_size_angstrom,
            },
        )
    test = evaluate_split(net, dataset_dir, manifest, "test", config.picking(), torch.device("cpu"), "test_")
    per_class = {k.split("/")[-1]: round(v, 3) for k, v in test.items() if "/f1/" in k and "hitbox" in k}
    per_class |= {k: round(v, 3) for k, v in test.items() if "hitbox/precision_macro" in k or "hitbox/recall_macro" in k}
    return {
        "precision": precision,
        "labels": labels,
        "steps": args.steps,
        "train_s": round(train_s, 1),
        "s_per_step": round(train_s / args.steps, 3),
        "test_f1_macro": round(test["test_f1_macro"], 3),
        "per_class": per_class,
        "history": history,
    }


def postprocess_sweep(
    model_reference: str,
    dataset: str,
    sizes: list[int],
    cluster_modes: list[str],
    test_time_flips: bool = False,
    tile_sizes_px: list[int] | None = None,
) -> list[dict]:
    """Picking of a trained model per clustering mode (per class, or on the foreground with a majority vote) with
    clusters below ``min_cluster_voxels`` dropped, per size, and with per-class sizes calibrated on the validation
    tomograms (``calibrate_cluster_sizes``): val and test macro F1.

    The net runs once per tomogram and inference tile size (``tile_sizes_px``, default the model's own); only the
    clustering and scoring are repeated. Choosing on the validation tomogram and reading the test F1 at that choice
    is the honest use of the table.
    """
    model = load_model(model_reference)
    segmenter = build_segmenter(model)
    dataset_dir, manifest = resolve_dataset(dataset)
    trained = replace(picking_settings(model.config), test_time_flips=test_time_flips)
    rows = []
    for tile_px in tile_sizes_px or [trained.patch_px]:
        settings = replace(trained, patch_px=tile_px)
        segmented = {
            split: segment_split(segmenter, dataset_dir, manifest, split, settings, torch.device("cpu"))
            for split in ("val", "test")
        }
        rows += _cluster_rows(segmented, manifest, settings, sizes, cluster_modes)
    return rows


def _cluster_rows(
    segmented: dict[str, list[SegmentedTomogram]],
    manifest: DatasetManifest,
    settings: PickingSettings,
    sizes: list[int],
    cluster_modes: list[str],
) -> list[dict]:
    """One row per clustering mode and size floor (fixed, then calibrated on validation): val and test macro F1."""
    rows = []
    for cluster_by in cluster_modes:
        mode_settings = replace(settings, cluster_by=cluster_by)
        calibrated = calibrate_min_cluster_voxels(segmented["val"], manifest, mode_settings)
        for size in [*sizes, "calibrated"]:
            row: dict = {
                "tile_px": settings.patch_px,
                "cluster_by": cluster_by,
                "min_cluster_voxels": size if size != "calibrated" else calibrated,
            }
            for split, items in segmented.items():
                result, _ = score_split(
                    items, manifest, replace(mode_settings, min_cluster_voxels=calibrated if size == "calibrated" else size)
                )
                row[f"{split}_f1_macro"] = round(result["hitbox"]["macro"]["f1"], 3)
                row[f"{split}_per_class"] = {e["name"]: round(e["f1"], 2) for e in result["hitbox"]["per_class"].values()}
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="tomograms-smoke")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "auto"])
    parser.add_argument("--labels", nargs="+", default=["sphere"])
    parser.add_argument("--method", default="{}", help="JSON of RobPickerConfig overrides, e.g. '{\"patch_px\": 16}'")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "robpicker_diagnosis.json")
    parser.add_argument("--save-model", type=Path, help="write the trained segmenter here (one precision and label set)")
    parser.add_argument("--postprocess-model", help="instead of training: sweep min_cluster_voxels for this trained model")
    parser.add_argument("--cluster-sizes", type=int, nargs="+", default=[1, 5, 10, 20, 40, 80, 160])
    parser.add_argument("--cluster-by", nargs="+", default=["class", "foreground"], choices=["class", "foreground"])
    parser.add_argument("--test-time-flips", action="store_true", help="with --postprocess-model: average 4 rotations")
    parser.add_argument("--tile-sizes", type=int, nargs="+", help="with --postprocess-model: inference tile edges (px)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.postprocess_model:
        rows = postprocess_sweep(
            args.postprocess_model, args.dataset, args.cluster_sizes, args.cluster_by, args.test_time_flips, args.tile_sizes
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_name("robpicker_postprocess.json").write_text(json.dumps(rows, indent=1))
        return
    rows = [run(args, precision, labels) for precision in args.precisions for labels in args.labels]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "rows": rows}, indent=1)
    )
    print("| precision | train labels | steps | s/step | test macro F1 | per class |")
    print("|---|---|---:|---:|---:|---|")
    for row in rows:
        cells = [row["precision"], row["labels"], row["steps"], row["s_per_step"], row["test_f1_macro"], row["per_class"]]
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
