"""The package's import graph: modules import only from their own layer or below, without cycles, and
importing any of them leaves the process environment as it was.

Every import statement counts wherever it sits: at module level, inside a function (a lazy import still
needs the module, and is the usual way to hide a cycle) and under ``if TYPE_CHECKING:`` (a type from a higher
layer still ties the lower one to it). Imports by string (``importlib.import_module`` in the method registry,
``cryoray.methods.METHODS``) are not statements and are not seen.
"""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "platform" / "cryoray"

# Low to high, by the name just below ``cryoray`` ("__init__": the package root, which holds only __version__).
# physics (pure torch, no cryoray imports) sits below io, whose STAR reader checks CTF parameters with it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "errors", "console", "formats"),
    ("config",),
    ("physics",),
    ("io",),
    ("simulate",),
    ("nn",),
    ("picking",),
    ("data",),
    ("tracking",),
    ("train",),
    ("session",),
    ("methods",),
    ("tune",),
    ("cli",),
    ("commands",),
)
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}

# Runs in a fresh interpreter: imports the third-party modules first (MLflow and Ray set variables of their
# own when imported), then every cryoray module, and names the variables each cryoray module changed.
ENVIRONMENT_PROBE = """
import importlib, json, os, sys
third_party, modules = json.loads(sys.argv[1])
for name in third_party:
    try:
        importlib.import_module(name)
    except ImportError:  # "from package import attribute" lists the attribute too, in case it is a module
        pass
changed = {}
for name in modules:
    before = dict(os.environ)
    importlib.import_module(name)
    after = dict(os.environ)
    keys = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
    if keys:
        changed[name] = keys
print(json.dumps(changed))
"""


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, not ``.__init__``)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = ("cryoray", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


class ImportCollector(ast.NodeVisitor):
    """The absolute names one module's import statements name: ``[name]`` for ``import name``, and
    ``[module, module.attribute, ...]`` for ``from module import attribute, ...`` (an attribute may be a module)."""

    def __init__(self, package: str, inside_functions: bool) -> None:
        self.package = package
        self.inside_functions = inside_functions
        self.statements: list[list[str]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if self.inside_functions:
            self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        self.statements.extend([alias.name] for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: the package of this module, minus one level per extra dot
            anchor = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        self.statements.append([base, *(f"{base}.{alias.name}" for alias in node.names)])


def import_statements(module: str, path: Path, inside_functions: bool = True) -> list[list[str]]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    collector = ImportCollector(package, inside_functions)
    collector.visit(ast.parse(path.read_text(), filename=str(path)))
    return collector.statements


def owning_module(name: str, modules: dict[str, Path]) -> str | None:
    """The cryoray module a dotted name lives in, or None for a name outside the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the cryoray modules it imports (``from package import module`` is an edge to that module)."""
    modules = package_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for base, *attributes in import_statements(module, path):
            named = [a for a in attributes if a in modules] or [base]
            targets.update(owning_module(name, modules) for name in named)
        graph[module] = {target for target in targets if target is not None and target != module}
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYER_OF[parts[1] if len(parts) > 1 else "__init__"]


def upward_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(source, target) for source, targets in graph.items() for target in targets if layer(target) > layer(source)}


def test_every_module_has_a_layer():
    names = {module.split(".")[1] if "." in module else "__init__" for module in package_modules()}
    assert names - set(LAYER_OF) == set(), "place each new top-level module in LAYERS"


def test_no_import_cycle():
    try:
        tuple(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_imports_go_only_down_the_layers():
    upward = upward_edges(import_graph())
    assert upward == set(), "a module imports from a higher layer (see LAYERS)"


def test_collector_sees_relative_type_checking_and_lazy_imports():
    source = textwrap.dedent(
        """
        from typing import TYPE_CHECKING
        from . import shards
        from ..io.mrc import read_mrc
        if TYPE_CHECKING:
            from cryoray.methods.base import Method
        def build():
            import cryoray.train.runner
        """
    )
    everywhere, module_scope = ImportCollector("cryoray.data", True), ImportCollector("cryoray.data", False)
    everywhere.visit(ast.parse(source))
    module_scope.visit(ast.parse(source))
    assert everywhere.statements == [
        ["typing", "typing.TYPE_CHECKING"],
        ["cryoray.data", "cryoray.data.shards"],
        ["cryoray.io.mrc", "cryoray.io.mrc.read_mrc"],
        ["cryoray.methods.base", "cryoray.methods.base.Method"],
        ["cryoray.train.runner"],
    ]
    assert module_scope.statements == everywhere.statements[:-1]


def test_from_package_import_module_is_an_edge_to_the_module():
    graph = import_graph()
    assert "cryoray.methods.betagan.losses" in graph["cryoray.methods.betagan"]
    assert "cryoray.physics.projection" in graph["cryoray.physics.alignment"]  # a relative import


def test_importing_any_module_leaves_the_environment_unchanged():
    modules = package_modules()
    third_party = sorted(
        {
            name
            for module, path in modules.items()
            for statement in import_statements(module, path, inside_functions=False)
            for name in statement
            if name and owning_module(name, modules) is None
        }
    )
    probe = subprocess.run(
        [sys.executable, "-c", ENVIRONMENT_PROBE, json.dumps([third_party, sorted(modules)])],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert json.loads(probe.stdout.splitlines()[-1]) == {}, "a module sets environment variables when imported"
