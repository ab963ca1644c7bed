"""`dvc repro` of the demo → ingest → validate stages in a temporary copy of the repo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers import copy_repo


@pytest.mark.slow
def test_dvc_repro_on_demo_cohort(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["demo"]["n"] = 60
    params["demo"]["size"] = 256
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / "dvc.lock").unlink(missing_ok=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    proc = subprocess.run(
        ["dvc", "repro", "validate"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = pd.read_parquet(repo / "data/interim/ingest/manifest.parquet")
    assert len(manifest) == 60
    summary = json.loads((repo / "data/reports/ingest_summary.json").read_text())
    assert summary["n_ingested"] == 60 and summary["n_rejected"] == 0
    validation = json.loads((repo / "data/reports/validation/validation.json").read_text())
    assert validation["success"] is True
    assert (repo / "data/reports/validation/data_docs/index.html").is_file()
    # nothing changed → nothing re-runs
    again = subprocess.run(
        ["dvc", "repro", "validate"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert again.returncode == 0
    assert "didn't change, skipping" in again.stdout
    assert "Running stage" not in again.stdout
    # a params change of the ingest section re-runs ingest and validate, not demo
    params["ingest"]["store_long_side"] = 128
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = subprocess.run(
        ["dvc", "repro", "validate"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert third.returncode == 0, third.stdout[-2000:]
    assert "Running stage 'ingest'" in third.stdout
    assert "Running stage 'demo'" not in third.stdout
    m2 = pd.read_parquet(repo / "data/interim/ingest/manifest.parquet")
    assert m2[["store_height", "store_width"]].max(axis=1).max() == 128
