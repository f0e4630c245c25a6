"""The job scripts' command lines (``jobs/<method>.py [SUBCOMMAND] ...``), built without torch, Ray or MLflow,
so that ``cryoray.commands.main`` answers ``--help`` and usage errors before any heavy import. The training
command line's contract: DESIGN.md and ``cryoray.cli``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryoray import console
from cryoray.formats import PICKS_FORMATS
from cryoray.methods import METHODS


def job_parser(name: str) -> argparse.ArgumentParser:
    """The training command line of method ``name``; its epilog lists the method's subcommands."""
    entry = METHODS[name]
    listed = [f"  {sub:<10} {what.summary} (jobs/{name}.py {sub} --help)" for sub, what in SUBCOMMANDS.get(name, {}).items()]
    parser = argparse.ArgumentParser(
        prog=f"jobs/{name}.py",
        description=f"Train {name} on Ray; tracked in MLflow. {entry.summary[0].upper()}{entry.summary[1:]}.",
        epilog="subcommands (a trained model on new data):\n" + "\n".join(listed) if listed else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, help="YAML file (keys of cryoray.config.JobConfig; method settings under 'method:')"
    )
    parser.add_argument("--dataset", help=f"recipe name in datasets/ or a dataset directory (default {entry.default_dataset})")
    parser.add_argument("--num-workers", type=int, help="Ray Train workers (0 = train in this process)")
    parser.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker")
    parser.add_argument("--output-dir", type=Path, help="where result.json and artifacts go (default outputs/<method>-<time>)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--storage-path", help="Ray Train checkpoint storage (shared storage on multi-node clusters)")
    parser.add_argument("--run-name", help="reuse a previous run name (same output dir) to resume from its checkpoint")
    parser.add_argument(
        "--smoke", action="store_true", help=f"tiny dataset and budget ({entry.smoke_dataset}); < 2 minutes on 2 CPUs"
    )
    parser.add_argument(
        "--overwrite", action="store_true", default=None, help="replace an output dir that already holds a result"
    )
    parser.add_argument(
        "--register-model", metavar="NAME", help="register the trained model in MLflow's registry (models:/NAME/VERSION)"
    )
    console.add_verbosity_flags(parser)
    return parser


_MODEL_HELP = "model.safetensors, a training output folder, runs:/<run id>/outputs/model.safetensors or models:/NAME/VERSION"


def predict_parser() -> argparse.ArgumentParser:
    """``jobs/robpicker.py predict``: pick particles in new tomograms (cryoray.methods.robpicker.predict)."""
    parser = argparse.ArgumentParser(
        prog="jobs/robpicker.py predict", description="Pick particles in new tomograms with a trained RobPicker model."
    )
    parser.add_argument("--model", required=True, help=_MODEL_HELP)
    parser.add_argument("--tomograms", nargs="+", required=True, help=".mrc tomograms to pick (any size)")
    parser.add_argument("--voxel-size-angstrom", type=float, help="use instead of the MRC header's voxel size")
    parser.add_argument("--truth", nargs="+", help="particle lists (.star/.csv), one per tomogram, to score the picks against")
    parser.add_argument("--tolerance-px", type=float, help="distance rule radius (default: the model's tolerance_px)")
    parser.add_argument(
        "--picks-format",
        choices=PICKS_FORMATS,
        default="relion5",
        help="picks STAR columns: relion5 (rlnTomoName + rlnCenteredCoordinateX/Y/ZAngst, RELION 5) or relion4 "
        "(rlnCoordinateX/Y/Z in voxels, Warp and RELION 4); the .csv is always in voxels",
    )
    parser.add_argument("--output-dir", required=True, help="where the picks, figures, scores and result.json go")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per tomogram task")
    parser.add_argument("--overwrite", action="store_true", help="replace picks already in --output-dir")
    console.add_verbosity_flags(parser)
    return parser


def apply_parser() -> argparse.ArgumentParser:
    """``jobs/cryogen2.py apply``: restore the missing wedge of new volumes (cryoray.methods.cryogen2.apply)."""
    parser = argparse.ArgumentParser(prog="jobs/cryogen2.py apply", description="Run a trained CryoGEN-II generator on new data.")
    parser.add_argument("--model", required=True, help=f"{_MODEL_HELP}, or a checkpoint folder")
    parser.add_argument("--inputs", nargs="+", required=True, help=".mrc subtomograms or tomograms (any size)")
    parser.add_argument("--output-dir", required=True, help="where <input>_cryogen2.mrc and apply_result.json go")
    parser.add_argument("--voxel-size-angstrom", type=float, help="use instead of the MRC header's voxel size")
    parser.add_argument(
        "--tile-px", type=int, help="tile edge (default: the training cube); a multiple of the net's 2**(levels-1)"
    )
    parser.add_argument("--overlap-px", type=int, help="tile overlap (default: the model's inference_overlap_px)")
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--use-gpu", action="store_true", help="run on the first CUDA device")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs already in --output-dir")
    console.add_verbosity_flags(parser)
    return parser


def denoise_parser() -> argparse.ArgumentParser:
    """``jobs/betagan.py denoise``: denoise a particle stack (cryoray.methods.betagan.denoise)."""
    parser = argparse.ArgumentParser(
        prog="jobs/betagan.py denoise", description="Denoise a user's particle stack with a trained (α,β)-GAN generator."
    )
    parser.add_argument("--model", required=True, help=_MODEL_HELP)
    parser.add_argument("--stack", required=True, help=".mrcs particle stack to denoise")
    parser.add_argument("--star", required=True, help="the RELION .star describing the stack (pixel size, one row per image)")
    parser.add_argument(
        "--output-dir", required=True, help="where <stack>_denoised.mrcs, <star>_denoised.star and result.json go"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per Ray Data batch")
    parser.add_argument("--use-gpu", action="store_true", help="denoise on one GPU")
    parser.add_argument("--overwrite", action="store_true", help="replace a denoised stack already in --output-dir")
    console.add_verbosity_flags(parser)
    return parser


@dataclass(frozen=True)
class Subcommand:
    """A job script's subcommand: a trained model on new data."""

    summary: str
    parser: Callable[[], argparse.ArgumentParser]
    run: str  # "module:function", the entry taking the arguments after the subcommand's name, returning the exit code


SUBCOMMANDS: dict[str, dict[str, Subcommand]] = {
    "robpicker": {
        "predict": Subcommand(
            "pick particles in new tomograms, picks as RELION/Warp STAR and CSV",
            predict_parser,
            "cryoray.methods.robpicker.predict:run_predict",
        )
    },
    "cryogen2": {
        "apply": Subcommand(
            "restore the missing wedge of new subtomograms or tomograms",
            apply_parser,
            "cryoray.methods.cryogen2.apply:run_apply",
        )
    },
    "betagan": {
        "denoise": Subcommand(
            "denoise a particle stack described by its STAR file", denoise_parser, "cryoray.methods.betagan.denoise:run_denoise"
        )
    },
}
