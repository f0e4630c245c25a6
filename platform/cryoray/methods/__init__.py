"""Methods, each a subpackage implementing the one interface in ``train.method``.

``METHODS`` names every method by its job script name (``jobs/<name>.py``) so that tools which take a method
by name (the sweep driver, ``tuning/<name>.yaml``) find it; entries are "module:Class" strings, imported only
when asked for, so a method's heavy imports cost nothing to the others. Adding a method is one line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryoray.train.method import Method

METHODS: dict[str, str] = {
    "betagan": "cryoray.methods.betagan:BetaGAN",
    "cryo2ssnet": "cryoray.methods.cryo2ssnet:Cryo2SSNet",
    "cryogen2": "cryoray.methods.cryogen2:CryoGEN2",
    "cryospin": "cryoray.methods.cryospin:CryoSPIN",
    "reconstruct": "cryoray.methods.reconstruct:KnownPoseReconstruction",
    "robpicker": "cryoray.methods.robpicker:RobPicker",
}


def load_method(name: str) -> Method:
    """A fresh instance of the method registered as ``name``; ``KeyError`` names the known ones."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    module_name, class_name = METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()
