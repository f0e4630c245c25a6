"""The source layout keeps the standard library's `platform` importable and `cryoray` where it belongs."""

import platform
from pathlib import Path

import cryoray

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_stdlib_platform_is_not_shadowed():
    assert hasattr(platform, "system") and platform.system()


def test_cryoray_comes_from_platform_source_root():
    assert Path(cryoray.__file__).resolve().parent == REPO_ROOT / "platform" / "cryoray"


def test_top_level_folders_are_not_packages():
    for folder in ("platform", "datasets", "jobs", "tuning", "tests"):
        assert not (REPO_ROOT / folder / "__init__.py").exists(), folder
    assert sorted(
        p.name for p in (REPO_ROOT / "platform").iterdir() if not p.name.startswith(".") and not p.name.endswith(".egg-info")
    ) == ["cryoray"]


def test_every_method_job_is_a_thin_entry_point():
    for job in (REPO_ROOT / "jobs").glob("*.py"):
        text = job.read_text()
        assert f'main("{job.stem}")' in text and len(text.splitlines()) < 40, job
