"""One GPU suite: every job's method trained in this process (no Ray, no MLflow) for a fixed step budget.

Made for the lent GPU machine (DEVELOPERS.md): it has torch but neither Ray, MLflow nor a package index, so the
methods run through the in-process route (``cryoray.train.local.run_local``) on the same stream specs and hooks
as on Ray Train. Per method: steps/s, images or voxels/s, peak GPU memory and the quality figure reached, plus
RobPicker and CryoGEN-II in fp32 beside bf16 autocast. The data are simulated first by the project's recipes (on
the machine's CPUs), at sizes like the papers' where the budget allows. Writes ``gpu_suite.md`` (a table for
benchmarks/RESULTS.md) and ``gpu_suite.json`` into ``--out`` after each case; data and runs go to ``--work``.

The device time is scarce (15 minutes per task, starts included), so each case has a wall-clock cap at paper scale
(a case past it is stopped and its row keeps the last step line's speed), and ``--step-fraction`` runs every case
at a fraction of its steps: a first short call measures the speeds that size the step budgets of the real one.

Usage:
    benchmarks/gpu_suite.sh --out "$OUT"                                   # on the GPU machine (installs carried wheels)
    .venv/bin/python benchmarks/gpu_suite.py --device cpu --scale tiny      # here: the same code path in minutes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import platform
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from cryoray import console
from cryoray.config import deep_update, validate_job_config
from cryoray.data.recipes import REPO_ROOT, build_particle_dataset
from cryoray.data.tomogram_recipes import build_tomogram_dataset
from cryoray.io.manifest import read_manifest
from cryoray.methods.betagan import BetaGAN
from cryoray.methods.cryo2ssnet import Cryo2SSNet
from cryoray.methods.cryogen2 import CryoGEN2
from cryoray.methods.cryospin import CryoSPIN
from cryoray.methods.reconstruct import KnownPoseReconstruction
from cryoray.methods.robpicker import RobPicker
from cryoray.train.local import run_local
from cryoray.train.loop import steps_per_epoch
from cryoray.train.method import Method

Scale = str  # "paper" (the GPU machine) or "tiny" (a check on a CPU)


@dataclass
class Case:
    """One row: a method, its data recipe (a file in datasets/ with overrides per scale) and its settings per scale."""

    label: str
    method: Callable[[], Method[Any]]
    recipe: str
    recipe_overrides: dict[Scale, dict[str, Any]]
    settings: dict[Scale, dict[str, Any]]
    quality: tuple[str, ...]  # result metrics shown, the first the headline
    items_per_step: Callable[[dict[str, Any], int], float]  # (settings, box or patch edge) -> images or voxels
    unit: str
    cap_s: float  # wall-clock cap of the training at paper scale (data building not counted)
    in_default_run: bool = True  # False: run only when --only names it


def _images(settings: dict[str, Any], box: int) -> float:
    return float(settings["train"]["batch_size"])


def _voxels(key: str) -> Callable[[dict[str, Any], int], float]:
    def count(settings: dict[str, Any], default_edge: int) -> float:
        edge = settings.get("method", {}).get(key, default_edge)
        return float(settings["train"]["batch_size"] * edge**3)

    return count


_PARTICLES_64 = {"paper": {"n_images": 8192, "images_per_shard": 2048}, "tiny": {"n_images": 256, "images_per_shard": 128}}
_TINY_PARTICLES = {"source": {"type": "phantom", "box_px": 24, "voxel_size_angstrom": 8.0}}
_TINY_TOMOGRAMS = {
    "shape_zyx": [32, 64, 64],
    "species": ["tiny_dimer", "small_tripod", "medium_helix"],
    "particles_per_species": 4,
}


def _cases() -> list[Case]:
    """The flagship first, then the ab-initio methods: what the cap of the whole call cuts last matters least."""
    robpicker_paper = {
        "train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 250},
        "method": {
            "calibrate_cluster_sizes": True,  # the picking that the CPU diagnosis found right (RESULTS.md)
            "patch_px": 64,
            "channels": [32, 48, 64, 64],
            "bottleneck_channels": 128,
            "train_patches_per_epoch": 2400,
            "meta_patches_per_epoch": 800,
            "learning_rate": 0.2,
            "inference_overlap_px": 16,
            "inference_batch_size": 8,
        },
    }
    robpicker_tiny = {
        "train": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 3},
        "method": {"patch_px": 16, "channels": [4, 8], "bottleneck_channels": 8, "train_patches_per_epoch": 6},
    }
    robpicker = {"paper": robpicker_paper, "tiny": robpicker_tiny}
    particles_tiny = {"train": {"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 3}}
    particles_64 = {"paper": {**_PARTICLES_64["paper"], "snr_linear": 1.0}, "tiny": {**_PARTICLES_64["tiny"], **_TINY_PARTICLES}}
    return [
        *(
            Case(
                f"RobPicker {precision}",
                RobPicker,
                "tomograms-default",
                {"paper": {}, "tiny": _TINY_TOMOGRAMS},
                {scale: deep_update(s, {"method": {"precision": precision}}) for scale, s in robpicker.items()},
                ("test_f1_macro", "val_f1_macro"),
                _voxels("patch_px"),
                "voxels",
                cap_s=cap_s,
            )
            for precision, cap_s in (("fp32", 90.0), ("bf16", 70.0))
        ),
        *(
            Case(
                f"RobPicker SHREC-like {mode}",
                RobPicker,
                "tomograms-shrec",
                {"paper": {}, "tiny": {"shape_zyx": [48, 96, 96], "particles_per_species": 1}},
                {
                    "paper": deep_update(
                        robpicker_paper,
                        {"train": {"max_steps_per_epoch": 400}, "method": {**_shrec(mode), "train_patches_per_epoch": 3200}},
                    ),
                    "tiny": deep_update(robpicker_tiny, {"method": _shrec(mode)}),
                },
                ("test_f1_macro", "val_f1_macro"),
                _voxels("patch_px"),
                "voxels",
                cap_s=cap_s,
                in_default_run=False,
            )
            for mode, cap_s in (("supervised", 45.0), ("full", 90.0))
        ),
        Case(
            "Cryo2SSNet",
            Cryo2SSNet,
            "particles-phantom",
            particles_64,
            {
                "paper": {
                    "train": {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 400},
                    "method": {"denoiser_pretrain_steps": 50, "eval_images": 512},
                },
                "tiny": {**particles_tiny, "method": {"denoiser_pretrain_steps": 1, "eval_images": 16, "search_depth": 2}},
            },
            ("pose_error_median_deg", "fsc_resolution_0.143_angstrom"),
            _images,
            "images",
            cap_s=60.0,
        ),
        Case(
            "cryoSPIN",
            CryoSPIN,
            "particles-phantom",
            particles_64,
            {
                "paper": {"train": {"epochs": 8, "batch_size": 128}, "method": {"switch_epoch": 4}},
                "tiny": {"train": {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 2}, "method": {"switch_epoch": 1}},
            },
            ("pose_error_median_deg", "fsc_resolution_0.143_angstrom"),
            _images,
            "images",
            cap_s=75.0,
        ),
        *(
            Case(
                f"CryoGEN-II {precision}",
                CryoGEN2,
                "tomograms-cryogen2",
                {"paper": {}, "tiny": _TINY_TOMOGRAMS},
                {
                    "paper": {
                        "train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 80},
                        "method": {
                            "cube_px": 64,
                            "channels": [32, 64, 128, 256],
                            "critic_channels": [32, 64, 128, 256],
                            "train_subtomograms": 480,
                            "precision": precision,
                        },
                    },
                    "tiny": {
                        "train": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2},
                        "method": {
                            "cube_px": 16,
                            "channels": [4, 8],
                            "critic_channels": [4, 8],
                            "train_subtomograms": 4,
                            "val_subtomograms": 2,
                            "test_subtomograms": 2,
                            "precision": precision,
                        },
                    },
                },
                ("test_fsc_wedge_mean", "test_input_fsc_wedge_mean"),
                _voxels("cube_px"),
                "voxels",
                cap_s=cap_s,
            )
            for precision, cap_s in (("fp32", 100.0), ("bf16", 70.0))
        ),
        Case(
            "reconstruct (known poses)",
            KnownPoseReconstruction,
            "particles-phantom",
            particles_64,
            {"paper": {"train": {"epochs": 1, "batch_size": 256, "max_steps_per_epoch": 32}}, "tiny": particles_tiny},
            ("map_correlation", "fsc_resolution_0.143_angstrom"),
            _images,
            "images",
            cap_s=25.0,
        ),
        Case(
            "(α,β)-GAN",
            BetaGAN,
            "particles-betagan-phantom",
            {"paper": {}, "tiny": {**_PARTICLES_64["tiny"], **_TINY_PARTICLES}},
            {
                "paper": {"train": {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 300}},
                "tiny": {**particles_tiny, "method": {"val_images": 32, "test_images": 32}},
            },
            ("test_psnr_denoised", "test_psnr_noisy"),
            _images,
            "images",
            cap_s=45.0,
        ),
    ]


def _shrec(mode: str) -> dict[str, Any]:
    """The SHREC-like comparison (issue 14): the paper's mode against supervised training, bf16, one step budget."""
    return {"mode": mode, "precision": "bf16"}


_SHARED_PREFIX = "../../shared/data/"


def build_dataset(case: Case, scale: Scale, work: Path, shared_data: Path) -> Path:
    """The case's recipe with its overrides, built into ``work`` once (cases sharing a recipe share the data).
    Species files under the repository's ``../shared/data`` are read from ``shared_data`` instead (the GPU machine
    gets a carried copy of the few it needs)."""
    recipe = yaml.safe_load((REPO_ROOT / "datasets" / f"{case.recipe}.yaml").read_text())
    recipe = deep_update(recipe, case.recipe_overrides[scale])
    if isinstance(recipe.get("species"), list):
        for entry in (e for e in recipe["species"] if isinstance(e, dict)):  # the others name built-in shapes
            for key in ("map", "mask", "pdb"):
                if str(entry.get(key, "")).startswith(_SHARED_PREFIX):
                    entry[key] = str(shared_data / entry[key].removeprefix(_SHARED_PREFIX))
    digest = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    recipe["name"] = f"{case.recipe}-suite-{digest}"
    target = work / "data" / recipe["name"]
    if not (target / "manifest.json").is_file():
        path = work / "recipes" / f"{recipe['name']}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(recipe))
        build = build_tomogram_dataset if recipe["kind"] == "tomograms" else build_particle_dataset
        build(path, target, overwrite=True)
    return target


class CapReached(Exception):
    """A case ran past its wall-clock cap (raised by SIGALRM in the training loop)."""


class _LastStepLine(logging.Handler):
    """Keeps the newest step line, so a case stopped at its cap still reports its speed."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if " step " in message and "samples/s" in message:
            self.text = message


def run_case(
    case: Case, scale: Scale, device: torch.device, work: Path, shared_data: Path, fraction: float, cap_s: float | None
) -> dict[str, Any]:
    """Train one case and measure it; an error or the cap becomes the row's note (the other cases still run)."""
    row: dict[str, Any] = {"method": case.label}
    last_line = _LastStepLine()
    console.LOGGER.addHandler(last_line)
    try:
        start = time.perf_counter()
        dataset_dir = build_dataset(case, scale, work, shared_data)
        row["data_s"] = time.perf_counter() - start
        manifest = read_manifest(dataset_dir)
        method = case.method()
        settings = case.settings[scale]
        raw = deep_update(deep_update({"dataset": str(dataset_dir)}, method.default_preset), settings)
        raw |= {
            "num_workers": 0,
            "use_gpu": device.type == "cuda",
            "output_dir": str(work / "runs" / case.label.replace(" ", "_")),
        }
        raw["overwrite"] = True
        job, config = validate_job_config(raw, method.config_schema, None)
        if fraction < 1.0:  # each epoch cut to this fraction of its steps (at least 2), for a short measuring call
            budget = steps_per_epoch(method.epoch_items(config, manifest), 1, job.train)
            raw = deep_update(raw, {"train": {"max_steps_per_epoch": max(2, math.ceil(budget * fraction))}})
            job, config = validate_job_config(raw, method.config_schema, None)
        method.check_dataset(dataset_dir, manifest, config)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        if cap_s is not None:
            signal.setitimer(signal.ITIMER_REAL, cap_s)
        outcome = run_local(method, job, config, dataset_dir, manifest, f"suite-{time.time_ns()}", None)
        signal.setitimer(signal.ITIMER_REAL, 0)
        row["run_s"] = time.perf_counter() - start
        steps = steps_per_epoch(method.epoch_items(config, manifest), 1, job.train)
        epoch_s = outcome.metrics["epoch_seconds"]  # the last epoch's training time
        edge = manifest.box_px or 0
        row["steps"] = steps * job.train.epochs
        row["steps_per_s"] = steps / epoch_s
        row[f"{case.unit}_per_s"] = steps * case.items_per_step(settings, edge) / epoch_s
        row["data_wait"] = outcome.metrics.get("data_wait_fraction")
        row["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        row["quality"] = {key: outcome.metrics.get(key) for key in case.quality}
        row["test_metrics"] = {k: v for k, v in outcome.metrics.items() if k.startswith("test_")}  # per class too
    except CapReached:
        row["error"] = f"stopped at its {cap_s:.0f} s cap; last step line: {last_line.text or 'none'}"
        row["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    except Exception as exc:  # noqa: BLE001 - one failing method must not hide the others' numbers
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        row["traceback"] = traceback.format_exc()[-3000:]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        console.LOGGER.removeHandler(last_line)
    return row


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [
        header,
        "",
        "| method | steps | steps/s | items/s | data wait | peak GPU GiB | quality | run s | data s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            error = row["error"].replace(" | ", "; ")  # a step line's separators would split the table's cells
            lines.append(f"| {row['method']} | failed: {error} | | | | | | | |")
            continue
        unit = "images" if "images_per_s" in row else "voxels"
        quality = ", ".join(f"{k} {_cell(v)}" for k, v in row["quality"].items())
        lines.append(
            f"| {row['method']} | {row['steps']} | {_cell(row['steps_per_s'])} | {_cell(row[f'{unit}_per_s'])} {unit} "
            f"| {_cell(row['data_wait'])} | {_cell(row['peak_gpu_gib'])} | {quality} | {_cell(row['run_s'])} "
            f"| {_cell(row['data_s'])} |"
        )
    return "\n".join(lines) + "\n"


def _raise_cap_reached(signum: int, frame: Any) -> None:
    raise CapReached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda (default when present) or cpu"
    )
    parser.add_argument("--scale", choices=["paper", "tiny"], default=None, help="default: paper on cuda, tiny on cpu")
    parser.add_argument("--only", nargs="*", help="labels (or their first word) of the cases to run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/gpu_suite"), help="where the table and JSON go")
    parser.add_argument("--work", type=Path, default=None, help="where data and runs go (default: OUT/work)")
    parser.add_argument(
        "--step-fraction", type=float, default=1.0, help="run each epoch at this fraction of its steps (a measuring call)"
    )
    parser.add_argument("--no-caps", action="store_true", help="no wall-clock cap per case (caps apply at paper scale)")
    parser.add_argument(
        "--shared-data", type=Path, default=REPO_ROOT.parent / "shared" / "data", help="the shared data (SHREC-like cases)"
    )
    args = parser.parse_args(argv)
    console.configure("normal")
    device = torch.device(args.device)
    scale = args.scale or ("paper" if device.type == "cuda" else "tiny")
    cases = [
        c
        for c in _cases()
        if (c.in_default_run and not args.only) or (args.only and (c.label in args.only or c.label.split()[0] in args.only))
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "work"
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    fraction = f" --step-fraction {args.step_fraction}" if args.step_fraction < 1.0 else ""
    header = (
        f"GPU suite, {time.strftime('%Y-%m-%d')}, {hardware}, torch {torch.__version__}, scale {scale}, "
        f"command: benchmarks/gpu_suite.py --device {args.device} --scale {scale}{fraction}"
    )
    signal.signal(signal.SIGALRM, _raise_cap_reached)
    rows = []
    for case in cases:
        cap_s = None if args.no_caps or scale != "paper" else case.cap_s
        rows.append(run_case(case, scale, device, work, args.shared_data.resolve(), args.step_fraction, cap_s))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "traceback"}), flush=True)
        (args.out / "gpu_suite.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
        (args.out / "gpu_suite.md").write_text(markdown(rows, header))
    print(markdown(rows, header))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
