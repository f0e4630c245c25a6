"""Guards that keep the pieces of a method in step: the registry, ``jobs/<name>.py``, ``methods/<name>/`` and
every shipped ``jobs/configs/*.yaml`` (validated against its method's schema, as a job would).
``tuning/*.yaml`` are validated by tests/test_tune_sweep.py."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from cryoray.config import deep_update, read_yaml_config, validate_job_config
from cryoray.methods import METHODS, load_method
from cryoray.methods.parsers import SUBCOMMANDS, job_parser
from cryoray.train.method import Method

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS_DIR = REPO_ROOT / "platform" / "cryoray" / "methods"


def test_registry_job_scripts_and_method_folders_agree():
    scripts = {p.stem for p in (REPO_ROOT / "jobs").glob("*.py")}
    folders = {p.parent.name for p in METHODS_DIR.glob("*/__init__.py")}
    assert scripts == set(METHODS), "every method has jobs/<name>.py and every job script is registered"
    assert folders == set(METHODS), "every method folder is registered and every method has a folder"
    for name, entry in METHODS.items():
        method = load_method(name)
        assert isinstance(method, Method) and method.name == name, entry
        calls = [
            ast.unparse(n)
            for n in ast.walk(ast.parse((REPO_ROOT / "jobs" / f"{name}.py").read_text()))
            if isinstance(n, ast.Call) and ast.unparse(n.func) == "main"
        ]
        assert calls == [f"main('{name}')"], f"jobs/{name}.py must hand its name to cryoray.commands.main"
        assert not _assignments_to_self(method), f"{name}: run state belongs in TrainState, not on the method"


def test_a_job_scripts_help_lists_its_subcommands_and_each_parser_names_its_command():
    assert set(SUBCOMMANDS) <= set(METHODS)
    for name in METHODS:
        help_text = job_parser(name).format_help()
        for sub, subcommand in SUBCOMMANDS.get(name, {}).items():
            assert f"jobs/{name}.py {sub} --help" in help_text, help_text
            parser = subcommand.parser()
            assert parser.prog == f"jobs/{name}.py {sub}"
            assert all(action.help for action in parser._actions), f"{parser.prog}: every option says what it is for"


def test_help_and_usage_errors_come_before_torch_ray_and_mlflow_are_imported():
    """``--help`` is instant because nothing heavy is imported until the arguments parse (the job and each subcommand)."""
    probe = (
        "import runpy, sys\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as done:\n    code = done.code\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'mlflow', 'pandas', 'scipy') if m in sys.modules)\n"
        "print(code, ','.join(heavy) or 'none')\n"
    )
    commands = [[f"jobs/{name}.py", "--help"] for name in METHODS]
    commands += [[f"jobs/{name}.py", sub, "--help"] for name, subs in SUBCOMMANDS.items() for sub in subs]
    commands += [["jobs/robpicker.py", "--no-such-flag"], ["jobs/robpicker.py", "predict", "--model", "m.safetensors"]]
    for argv in commands:
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
        code, heavy = done.stdout.split()[-2:]
        assert heavy == "none", f"{' '.join(argv)} imported {heavy} before parsing its arguments"
        assert code == ("0" if argv[-1] == "--help" else "2"), (argv, done.stderr[-500:])


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
    raw = deep_update({"dataset": METHODS[name].default_dataset, "output_dir": "unused"}, method.default_preset)
    job, config = validate_job_config(deep_update(raw, read_yaml_config(path)), method.config_schema, path)
    assert job.output_dir == "unused" and isinstance(config, method.config_schema)
