"""Shared fixtures.

Real data is found via BONEAGE_DATA_DIR (default: ../shared/data from the repo root).
When it is absent, tests that need it skip with a message, except when
BONEAGE_REQUIRE_DATA=1 (as in CI), where they fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    return Path(os.environ.get("BONEAGE_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def _need(path: Path, what: str) -> Path:
    if path.exists():
        return path
    msg = f"{what} not found at {path} (set BONEAGE_DATA_DIR)"
    if os.environ.get("BONEAGE_REQUIRE_DATA") == "1":
        pytest.fail(msg + "; BONEAGE_REQUIRE_DATA=1 makes this a failure")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(_data_dir(), "real data directory")


@pytest.fixture(scope="session")
def rsna299(data_dir: Path) -> Path:
    """../shared/data/rsna-bone-age-299 (CSV + boneage-training-dataset/{id}.jpg)."""
    return _need(data_dir / "rsna-bone-age-299", "RSNA 299-px training set")


@pytest.fixture(scope="session")
def rsna_fullres(data_dir: Path) -> Path:
    """../shared/data/rsna-bone-age-fullres (labels.csv + {id}.png at full resolution)."""
    return _need(data_dir / "rsna-bone-age-fullres", "RSNA full-resolution images")


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """A temporary Prefect API (prefect_test_harness) with its own PREFECT_HOME."""
    home = tmp_path_factory.mktemp("prefect_home")
    keys = ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED")
    old = {k: os.environ.get(k) for k in keys}
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
