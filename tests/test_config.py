"""params.yaml loading: defaults, validation, unknown keys are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from boneage.config import ConfigError, load_params
from tests.conftest import REPO_ROOT


def test_repo_params_load():
    p = load_params(REPO_ROOT / "params.yaml")
    assert p.ingest.store_long_side == 1024
    assert p.validate_.max_rejected_fraction == 0.01
    assert p.ingest.split.train + p.ingest.split.val + p.ingest.split.test == pytest.approx(1)


def test_missing_file_gives_defaults(tmp_path: Path):
    assert load_params(tmp_path / "none.yaml").ingest.workers == 0


def test_unknown_key_is_an_error(tmp_path: Path):
    f = tmp_path / "p.yaml"
    f.write_text("ingest:\n  store_long_sid: 512\n")
    with pytest.raises(ConfigError, match="ingest.store_long_sid"):
        load_params(f)


def test_bad_value_is_an_error(tmp_path: Path):
    f = tmp_path / "p.yaml"
    f.write_text("ingest:\n  split: {train: 0.5, val: 0.1, test: 0.1}\n")
    with pytest.raises(ConfigError, match="sum to 1"):
        load_params(f)


def test_overrides(tmp_path: Path):
    p = load_params(tmp_path / "none.yaml", {"ingest": {"workers": 3}})
    assert p.ingest.workers == 3 and p.ingest.store_long_side == 1024
