"""Shared fixtures: the location of ../shared/data and the rule for tests that need it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    return Path(os.environ.get("CRYORAY_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; skipped when absent, a failure when CRYORAY_REQUIRE_SHARED_DATA=1."""
    path = _shared_data_dir()
    if not path.is_dir():
        reason = f"shared data folder {path} is absent (set CRYORAY_SHARED_DATA to point at it)"
        if os.environ.get("CRYORAY_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session", autouse=True)
def isolated_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Datasets built by tests go to a session temp dir, never to the user's cache."""
    path = tmp_path_factory.mktemp("cryoray_datasets")
    os.environ["CRYORAY_DATA_DIR"] = str(path)
    return path
