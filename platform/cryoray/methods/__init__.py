"""Methods, each a subpackage implementing the one interface in ``train.method``.

``METHODS`` names every method by its job script name (``jobs/<name>.py``) so that tools which take a method
by name (the sweep driver, ``tuning/<name>.yaml``) find it. An entry holds what a command line needs before any
work (the class as a "module:Class" string, a summary, the default and smoke datasets): the class is imported
only when asked for, so ``--help`` costs no torch and a method's heavy imports cost nothing to the others.
Adding a method is one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryoray.train.method import Method


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: where its class is and what its job's command line says about it."""

    cls: str  # "module:Class"
    summary: str  # one line, the job's --help description
    default_dataset: str  # recipe name in datasets/ or a dataset directory
    smoke_dataset: str  # the dataset of --smoke (a run of at most 2 minutes on 2 CPU cores)


METHODS: dict[str, MethodEntry] = {
    "betagan": MethodEntry(
        "cryoray.methods.betagan:BetaGAN",
        "(α,β)-GAN + λ·ℓ1 robust denoiser of particle images",
        "particles-betagan-phantom",
        "particles-betagan-smoke",
    ),
    "cryo2ssnet": MethodEntry(
        "cryoray.methods.cryo2ssnet:Cryo2SSNet",
        "ab-initio reconstruction: pose encoder + Hartley decoder + denoised heuristic beam search, two stages",
        "particles-phantom-32",
        "particles-smoke",
    ),
    "cryogen2": MethodEntry(
        "cryoray.methods.cryogen2:CryoGEN2",
        "cryo-ET missing-wedge restoration with a UNet++ GAN and a wedge-aware masked loss",
        "tomograms-cryogen2",
        "tomograms-smoke",
    ),
    "cryospin": MethodEntry(
        "cryoray.methods.cryospin:CryoSPIN",
        "ab-initio reconstruction: multi-head pose encoder, then per-image pose auto-decoding (cryoSPIN)",
        "particles-phantom-32",
        "particles-smoke",
    ),
    "reconstruct": MethodEntry(
        "cryoray.methods.reconstruct:KnownPoseReconstruction",
        "voxel-map reconstruction from particle images with known poses and CTF",
        "particles-phantom",
        "particles-smoke",
    ),
    "robpicker": MethodEntry(
        "cryoray.methods.robpicker:RobPicker",
        "cryo-ET particle picking by bi-level meta-learning (label correction + reweighting)",
        "tomograms-default",
        "tomograms-smoke",
    ),
}


def load_method(name: str) -> Method:
    """A fresh instance of the method registered as ``name``; ``KeyError`` names the known ones."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    module_name, class_name = METHODS[name].cls.split(":")
    return getattr(importlib.import_module(module_name), class_name)()
