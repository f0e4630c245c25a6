"""Build a named dataset recipe, or import a RELION particle set or real tomograms, into a cryoray dataset directory.

Example usage:
    python datasets/build.py --list
    python datasets/build.py particles-smoke                      # -> $CRYORAY_DATA_DIR/particles-smoke
    python datasets/build.py tomograms-smoke                      # kind: tomograms recipes build the same way
    python datasets/build.py particles-4ake --output /data/4ake
    python datasets/build.py --import-relion run_data.star --name myset --output /data/myset \
        [--ground-truth-map reference.mrc]
    python datasets/build.py --import-tomograms spec.yaml --output /data/myset   # spec format: cryoray.data.tomogram_import
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from cryoray import console
from cryoray.data.recipes import build_recipe, data_root, find_recipe, import_relion, known_recipes
from cryoray.data.tomogram_import import import_tomograms, load_import_spec
from cryoray.errors import CryorayInputError
from cryoray.io.outputs import removed_on_failure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", help="recipe name (datasets/<name>.yaml) or a recipe file")
    parser.add_argument("--list", action="store_true", help="list the known recipes")
    parser.add_argument("--import-relion", type=Path, metavar="STAR", help="RELION .star whose images to import")
    parser.add_argument("--import-tomograms", type=Path, metavar="SPEC", help="YAML spec of real tomograms + picks to import")
    parser.add_argument("--name", help="dataset name for a RELION import (default: the STAR file's stem)")
    parser.add_argument("--ground-truth-map", type=Path, help="reference map stored with an import")
    parser.add_argument("--images-per-shard", type=int, default=4096)
    parser.add_argument("--output", type=Path, help="dataset directory (default $CRYORAY_DATA_DIR/<name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    console.add_verbosity_flags(parser)
    args = parser.parse_args(argv)
    console.configure(args.verbosity)
    try:
        if args.list:
            print("\n".join(known_recipes()))
            return 0
        if args.images_per_shard < 1:
            raise CryorayInputError(None, "--images-per-shard", "a positive integer", args.images_per_shard)
        build: Callable[[Path], Path]
        if args.import_relion:
            name = args.name or args.import_relion.stem
            out = args.output or data_root() / name
            build = partial(
                import_relion,
                args.import_relion,
                name=name,
                images_per_shard=args.images_per_shard,
                ground_truth_map=args.ground_truth_map,
                overwrite=args.overwrite,
            )
        elif args.import_tomograms:
            out = args.output or data_root() / load_import_spec(args.import_tomograms).name
            build = partial(import_tomograms, args.import_tomograms, overwrite=args.overwrite)
        elif args.recipe:
            recipe = Path(args.recipe) if args.recipe.endswith(".yaml") else find_recipe(args.recipe)
            if recipe is None or not recipe.is_file():
                raise CryorayInputError(None, "recipe", f"one of {', '.join(known_recipes())}", args.recipe)
            out = args.output or data_root() / recipe.stem
            build = partial(build_recipe, recipe, overwrite=args.overwrite)
        else:
            parser.error("give a recipe name, --import-relion STAR, --import-tomograms SPEC, or --list")
        out = Path(out).expanduser().resolve()
        with removed_on_failure(out):  # a failed build leaves no partial dataset and no folder it created
            build(out)
    except CryorayInputError as exc:
        print(f"datasets/build.py: bad input: {exc}", file=sys.stderr)
        return 2
    print(f"dataset written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
