"""Run a hyperparameter sweep of one method from its spec (``tuning/<method>.yaml``) with Ray Tune.

Example usage:
    python tuning/sweep.py tuning/reconstruct.yaml --smoke
    python tuning/sweep.py tuning/reconstruct.yaml --num-samples 16 --tracking-uri http://HEAD:5000 \\
        --storage-path s3://bucket/cryoray
    ray job submit --working-dir . -- python tuning/sweep.py tuning/reconstruct.yaml --tracking-uri http://HEAD:5000

Joins the cluster in RAY_ADDRESS (set by ``ray job submit``) or starts a local Ray. Ends by printing
``RESULT {json}`` (best value and settings, MLflow sweep run id, summary.csv and best.json paths) as its last
line; bad input exits 2 naming the file and field, a failed sweep exits 1, each with one sentence on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cryoray import console
from cryoray.errors import CryorayInputError
from cryoray.session import input_error_in
from cryoray.tune import SweepFailedError, run_sweep
from ray.tune import TuneError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuning/sweep.py", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="sweep spec YAML, e.g. tuning/reconstruct.yaml")
    parser.add_argument("--smoke", action="store_true", help="the spec's smoke block: tiny data and budget (~2 min on 2 CPUs)")
    parser.add_argument(
        "--output-dir", type=Path, help="summary.csv, best.json, best.yaml, trial outputs (default outputs/sweeps/<sweep>)"
    )
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--storage-path", help="root for Tune state and trial checkpoints (shared storage on clusters)")
    parser.add_argument("--num-samples", type=int, help="override the spec's num_samples")
    console.add_verbosity_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; returns the process exit code (2 bad input, 1 failure)."""
    args = build_parser().parse_args(argv)
    console.configure(args.verbosity)
    try:
        if args.num_samples is not None and args.num_samples < 1:
            raise CryorayInputError(None, "--num-samples", "an integer >= 1", args.num_samples)
        outcome = run_sweep(
            args.spec,
            smoke=args.smoke,
            output_dir=args.output_dir,
            tracking_uri=args.tracking_uri,
            storage_path=args.storage_path,
            num_samples=args.num_samples,
        )
    except Exception as exc:
        bad_input = input_error_in(exc)  # raised before the sweep, or in a trial and wrapped by Ray
        if bad_input is not None:
            return _fail(f"bad input: {bad_input}", code=2)
        if not isinstance(exc, (SweepFailedError, TuneError)):
            raise
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return _fail(f"sweep failed: {lines[-1] if lines else type(exc).__name__}")
    print("RESULT " + json.dumps(outcome.result()), flush=True)
    return 0


def _fail(sentence: str, code: int = 1) -> int:
    print(f"cryoray sweep: {sentence}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
