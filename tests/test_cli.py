"""The `boneage` CLI: thin commands, clear errors, exit codes."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from boneage.cli import app

runner = CliRunner()


def test_demo_cohort_command(tmp_path):
    res = runner.invoke(app, ["demo-cohort", str(tmp_path / "d"), "--n", "3", "--size", "128"])
    assert res.exit_code == 0, res.output
    labels = pd.read_csv(tmp_path / "d" / "labels.csv")
    assert list(labels.columns) == ["id", "boneage", "male"] and len(labels) == 3
    assert (tmp_path / "d" / "boxes.csv").is_file()


def test_ingest_then_validate_fails_naming_the_expectation(tmp_path):
    runner.invoke(app, ["demo-cohort", str(tmp_path / "d"), "--n", "4", "--size", "128"])
    res = runner.invoke(
        app,
        ["ingest", "--cohort", str(tmp_path / "d" / "images"), "--labels",
         str(tmp_path / "d" / "labels.csv"), "--out", str(tmp_path / "o"), "--no-progress"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "ingested 4 of 4" in res.output
    # 4 images cannot fill train, val and test: the split expectation fails, exit 1
    res = runner.invoke(
        app,
        ["validate", "--manifest", str(tmp_path / "o" / "manifest.parquet"), "--rejected",
         str(tmp_path / "o" / "rejected.parquet"), "--out", str(tmp_path / "v")],
    )  # fmt: skip
    assert res.exit_code == 1
    assert "FAILED expect_column_distinct_values_to_contain_set(split)" in res.output
    assert (tmp_path / "v" / "validation.json").is_file()


def test_bad_params_file_is_exit_2(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("ingest:\n  nonsense: 1\n")
    res = runner.invoke(
        app, ["ingest", "--cohort", str(tmp_path), "--out", str(tmp_path / "o"), "--params", str(p)]
    )
    assert res.exit_code == 2
    assert "ingest.nonsense" in res.output


def test_missing_manifest_is_exit_2(tmp_path):
    res = runner.invoke(app, ["validate", "--manifest", str(tmp_path / "m.parquet"), "--out", "x"])
    assert res.exit_code == 2 and "manifest not found" in res.output
