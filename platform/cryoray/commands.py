"""The entry of every job script: ``sys.exit(main("<method>"))`` in ``jobs/<method>.py``.

The arguments are parsed first with parsers that import nothing heavy (``cryoray.methods.parsers``), so ``--help``
and usage errors come back at once; only then is the work imported (the method and the runner for training, the
subcommand's module for predict, apply and denoise), which parses them again with the same parser.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from cryoray.methods import load_method
from cryoray.methods.parsers import SUBCOMMANDS, job_parser


def main(name: str, argv: list[str] | None = None) -> int:
    """``jobs/<name>.py``: a subcommand when the first argument names one, else training (``cryoray.cli.run_job``)."""
    argv = sys.argv[1:] if argv is None else argv
    subcommand = SUBCOMMANDS.get(name, {}).get(argv[0]) if argv else None
    if subcommand is not None:
        subcommand.parser().parse_args(argv[1:])  # --help and usage errors before the heavy imports
        module, function = subcommand.run.split(":")
        entry: Callable[[list[str]], int] = getattr(importlib.import_module(module), function)
        return entry(argv[1:])
    job_parser(name).parse_args(argv)
    from cryoray.cli import run_job  # torch, Ray and MLflow: once the arguments are known to be good

    return run_job(load_method(name), argv)
