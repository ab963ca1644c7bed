"""Helpers shared by several test modules (test modules never import each other)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def copy_repo(dst: Path) -> None:
    """The git-visible files of the repo (no data/) into `dst`, with empty data folders."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
        text=True, check=True,
    ).stdout.split()  # fmt: skip
    for rel in files:
        src = REPO_ROOT / rel
        if src.is_file() and not rel.startswith("data/"):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    for sub in ("raw", "interim", "processed", "models", "reports"):
        (dst / "data" / sub).mkdir(parents=True, exist_ok=True)


def chromium() -> str:
    """The headless Chromium executable (skip, or fail where CI requires it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    msg = "headless Chromium not installed (make install / .ci/run install Debian `chromium`)"
    if os.environ.get("BONEAGE_REQUIRE_DATA") == "1":
        pytest.fail(msg)
    pytest.skip(msg)
