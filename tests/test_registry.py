"""Guards that keep the pieces of a method in step: the registry, ``jobs/<name>.py``, ``methods/<name>/`` and
every shipped ``jobs/configs/*.yaml`` (validated against its method's schema, as a job would).
``tuning/*.yaml`` are validated by tests/test_tune_sweep.py."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from cryoray.cli import build_parser
from cryoray.config import deep_update, read_yaml_config, validate_job_config
from cryoray.methods import METHODS, load_method
from cryoray.train.method import Method

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS_DIR = REPO_ROOT / "platform" / "cryoray" / "methods"


def _job_class(script: Path) -> tuple[str, str]:
    """(module, class) of the method a job script hands to ``run_job``."""
    tree = ast.parse(script.read_text())
    imports = {
        alias.asname or alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "run_job"]
    assert len(calls) == 1, f"{script.name}: expected one run_job(...) call"
    constructed = calls[0].args[0]
    assert isinstance(constructed, ast.Call) and isinstance(constructed.func, ast.Name), script.name
    return imports[constructed.func.id], constructed.func.id


def test_registry_job_scripts_and_method_folders_agree():
    scripts = {p.stem for p in (REPO_ROOT / "jobs").glob("*.py")}
    folders = {p.parent.name for p in METHODS_DIR.glob("*/__init__.py")}
    assert scripts == set(METHODS), "every method has jobs/<name>.py and every job script is registered"
    assert folders == set(METHODS), "every method folder is registered and every method has a folder"
    for name, entry in METHODS.items():
        method = load_method(name)
        assert isinstance(method, Method) and method.name == name, entry
        assert _job_class(REPO_ROOT / "jobs" / f"{name}.py") == tuple(entry.split(":")), name
        assert not _assignments_to_self(method), f"{name}: run state belongs in TrainState, not on the method"


def test_a_job_scripts_help_lists_exactly_the_subcommands_it_dispatches():
    for name in METHODS:
        method = load_method(name)
        script = (REPO_ROOT / "jobs" / f"{name}.py").read_text()
        dispatched = {
            node.comparators[0].elts[0].value
            for node in ast.walk(ast.parse(script))
            if isinstance(node, ast.Compare) and isinstance(node.comparators[0], ast.List) and "sys.argv" in ast.unparse(node)
        }
        assert dispatched == set(method.subcommands), name
        help_text = build_parser(method).format_help()
        assert all(f"jobs/{name}.py {sub} --help" in help_text for sub in dispatched), help_text


def _assignments_to_self(method: Method) -> list[str]:
    """``self.x = …`` anywhere in the method's class body: run state the Method contract keeps off ``self``."""
    tree = ast.parse(Path(inspect.getsourcefile(type(method)) or "").read_text())
    body = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == type(method).__name__)
    targets = [
        t
        for n in ast.walk(body)
        if isinstance(n, ast.Assign | ast.AnnAssign | ast.AugAssign)
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
    ]
    return [ast.unparse(t) for t in targets if isinstance(t, ast.Attribute) and getattr(t.value, "id", None) == "self"]


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_job_config_validates_against_its_method(path: Path):
    name = path.stem.split("-")[0]
    assert name in METHODS, f"{path.name}: configs are named <method>-<variant>.yaml"
    method = load_method(name)
    raw = deep_update({"dataset": method.default_dataset, "output_dir": "unused"}, method.default_preset)
    job, config = validate_job_config(deep_update(raw, read_yaml_config(path)), method.config_schema, path)
    assert job.output_dir == "unused" and isinstance(config, method.config_schema)
