"""What every YAML-described dataset build shares: reading the YAML and preparing the output folder.

It sits below the particle recipes (``recipes``), the tomogram recipes (``tomogram_recipes``) and the tomogram
importer (``tomogram_import``), so none of them imports another for these.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from cryoray.config import format_validation_errors
from cryoray.errors import CryorayInputError
from cryoray.io.outputs import check_output_dir

RecipeModel = TypeVar("RecipeModel", bound=BaseModel)


def read_recipe_yaml(path: str | Path) -> Any:
    """The parsed YAML of a recipe or spec; an unreadable file is a ``CryorayInputError`` naming it."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CryorayInputError(path, "recipe", "a readable YAML recipe", str(exc).splitlines()[0]) from None


def load_yaml_model(path: str | Path, model: type[RecipeModel], what: str) -> RecipeModel:
    """Read a YAML recipe into ``model``; every problem in one ``CryorayInputError`` naming the file."""
    path = Path(path)
    raw = read_recipe_yaml(path)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise CryorayInputError(path, "recipe", f"a valid {what}", "; ".join(format_validation_errors(exc))) from None


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse a path that is a file, and an existing non-empty folder unless asked; never merge into one."""
    check_output_dir(out_dir, "output", overwrite=True)  # only its kind: a non-empty folder is checked here
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            expected = "an empty or new folder (pass --overwrite to replace it)"
            raise CryorayInputError(out_dir, "output", expected, "it holds files")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
