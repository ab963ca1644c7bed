"""Tests for boneage.validate: the Great Expectations suite on the ingest manifest."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from boneage.config import ValidateConfig
from boneage.validate import (
    ValidationFailed,
    ValidationReport,
    raise_if_failed,
    validate_files,
    validate_manifest,
)
from boneage.validate_suite import MANIFEST_COLUMNS

CFG = ValidateConfig()
N = 30  # 10 rows per split


def make_manifest(n: int = N) -> pd.DataFrame:
    """A small manifest shaped like ingest's output (pandas 3 dtypes: str, float, int)."""
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "id": [f"img{i:03d}" for i in range(n)],
            "sex": ["M", "F"] * (n // 2),
            "boneage_months": rng.uniform(1, 230, n),
            "chronological_age_months": [np.nan if i % 3 else 100.0 + i for i in range(n)],
            "split": (["train", "val", "test"] * n)[:n],
            "source": [f"imgs/{i}.png" for i in range(n)],
            "format": "png",
            "sha256": [f"{i:064x}" for i in range(n)],
            "orig_height": np.full(n, 2000, dtype="int64"),
            "orig_width": np.full(n, 1600, dtype="int64"),
            "store_height": np.full(n, 1024, dtype="int64"),
            "store_width": np.full(n, 819, dtype="int64"),
            "scale": 0.512,
            "shard": "shard-00000.parquet",
            "sex_source": "labels",
            "label_row": pd.array(range(n), dtype="Int64"),
        }
    )


def make_rejected(n: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.array([f"bad{i}" for i in range(n)], dtype="str"),
            "source": pd.array([f"imgs/bad{i}.png" for i in range(n)], dtype="str"),
            "row": pd.array(range(n), dtype="Int64"),
            "reason": ["unreadable_image"] * n,
            "detail": ["truncated"] * n,
        }
    )


def failed_keys(report: ValidationReport) -> set[tuple[str, str | None]]:
    return {(o.name, o.column) for o in report.failed()}


def load_json(out: Path) -> dict:
    return json.loads((out / "validation.json").read_text())


def test_good_manifest_passes_and_writes_outputs(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # GE must not drop a gx/ folder (or anything) into the CWD
    out = tmp_path / "out"

    t0 = time.perf_counter()
    report = validate_manifest(make_manifest(), make_rejected(0), CFG, out)
    elapsed = time.perf_counter() - t0
    print(f"validate_manifest on {N} rows: {elapsed:.2f}s")

    assert report.success, report.summary()
    assert report.failed() == []
    assert report.n_rows == N and report.n_rejected == 0 and report.rejected_fraction == 0.0
    assert report.data_docs == out / "data_docs" / "index.html"
    assert report.data_docs.is_file()
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == ["data_docs", "validation.json"]

    doc = load_json(out)
    assert doc["success"] is True
    assert doc["n_rows"] == N and doc["n_rejected"] == 0 and doc["n_failed"] == 0
    assert doc["data_docs"] == "data_docs/index.html"
    assert doc["config"] == CFG.model_dump()
    names = {(e["name"], e["column"]) for e in doc["expectations"]}
    for key in [
        ("expect_column_values_to_be_unique", "id"),
        ("expect_column_values_to_not_be_null", "sex"),
        ("expect_column_values_to_not_be_null", "boneage_months"),
        ("expect_column_values_to_be_between", "boneage_months"),
        ("expect_column_values_to_be_between", "chronological_age_months"),
        ("expect_column_values_to_be_in_set", "sex"),
        ("expect_column_distinct_values_to_contain_set", "split"),
        ("expect_column_values_to_be_between", "orig_height"),
        ("expect_column_values_to_be_between", "store_width"),
        ("expect_column_values_to_match_regex", "sha256"),
        ("expect_column_max_to_be_between", "rejected_fraction"),
    ]:
        assert key in names
    for e in doc["expectations"]:
        assert set(e) == {"name", "column", "kwargs", "success", "observed_value", "details"}
        assert e["success"] is True
        assert "\n" not in e["details"]
    regex = next(e for e in doc["expectations"] if e["name"].endswith("match_regex"))
    assert regex["kwargs"] == {"column": "sha256", "regex": "^[0-9a-f]{64}$"}
    # the data docs show both GE validation runs
    html = (out / "data_docs" / "index.html").read_text()
    assert "manifest" in html and "rejected_summary" in html


def _assert_only_failure(report, out, name, column):
    assert not report.success
    assert failed_keys(report) == {(name, column)}, report.summary()
    assert f"FAIL {name} [{column}]" in report.summary()
    doc = load_json(out)
    assert doc["success"] is False
    assert doc["n_failed"] == 1
    assert doc["failed"][0]["name"] == name and doc["failed"][0]["column"] == column
    failing = [e for e in doc["expectations"] if not e["success"]]
    assert len(failing) == 1 and failing[0]["name"] == name and failing[0]["column"] == column
    return failing[0]


def test_duplicate_id(tmp_path):
    m = make_manifest()
    m.loc[5, "id"] = m.loc[4, "id"]
    report = validate_manifest(m, None, CFG, tmp_path)
    e = _assert_only_failure(report, tmp_path, "expect_column_values_to_be_unique", "id")
    assert e["observed_value"]["unexpected_count"] == 2
    assert e["observed_value"]["partial_unexpected_list"] == ["img004", "img004"]
    assert "2 of 30 values are duplicated" in e["details"]


def test_age_out_of_range(tmp_path):
    m = make_manifest()
    m.loc[7, "boneage_months"] = 250.0
    report = validate_manifest(m, None, CFG, tmp_path)
    e = _assert_only_failure(
        report, tmp_path, "expect_column_values_to_be_between", "boneage_months"
    )
    assert e["observed_value"]["partial_unexpected_list"] == [250.0]
    assert e["kwargs"]["min_value"] == 0 and e["kwargs"]["max_value"] == 240


def test_chronological_age_out_of_range(tmp_path):
    m = make_manifest()
    m.loc[0, "chronological_age_months"] = -1.0
    report = validate_manifest(m, None, CFG, tmp_path)
    _assert_only_failure(
        report, tmp_path, "expect_column_values_to_be_between", "chronological_age_months"
    )


def test_unknown_sex_code(tmp_path):
    m = make_manifest()
    m.loc[3, "sex"] = "X"
    report = validate_manifest(m, None, CFG, tmp_path)
    e = _assert_only_failure(report, tmp_path, "expect_column_values_to_be_in_set", "sex")
    assert e["observed_value"]["partial_unexpected_list"] == ["X"]
    assert e["kwargs"]["value_set"] == ["F", "M"]


def test_allowed_sex_is_a_parameter(tmp_path):
    m = make_manifest()
    m.loc[3, "sex"] = "U"
    assert not validate_manifest(m, None, CFG, tmp_path / "a").success
    report = validate_manifest(m, None, CFG, tmp_path / "b", allowed_sex={"M", "F", "U"})
    assert report.success, report.summary()


def test_empty_test_split(tmp_path):
    m = make_manifest()
    m.loc[m["split"] == "test", "split"] = "val"
    report = validate_manifest(m, None, CFG, tmp_path)
    e = _assert_only_failure(
        report, tmp_path, "expect_column_distinct_values_to_contain_set", "split"
    )
    assert e["observed_value"] == {"missing_from_column": ["test"]}
    assert '"test"' in e["details"]


def test_null_sex(tmp_path):
    m = make_manifest()
    m.loc[2, "sex"] = None
    report = validate_manifest(m, None, CFG, tmp_path)
    e = _assert_only_failure(report, tmp_path, "expect_column_values_to_not_be_null", "sex")
    assert e["observed_value"]["unexpected_count"] == 1
    assert e["details"] == "1 of 30 values are null"


def test_nullable_string_dtype_and_extra_columns(tmp_path):
    """ingest casts text columns to pandas' "string" dtype (pd.NA nulls) and may add columns."""
    m = make_manifest()
    for col in m.columns:
        if m[col].dtype == "str":
            m[col] = m[col].astype("string")
    m["age_source"] = pd.array(["labels"] * N, dtype="string")
    assert validate_manifest(m, None, CFG, tmp_path / "a").success
    m.loc[2, "sex"] = pd.NA
    report = validate_manifest(m, None, CFG, tmp_path / "b")
    assert failed_keys(report) == {("expect_column_values_to_not_be_null", "sex")}


def test_huge_image(tmp_path):
    m = make_manifest()
    m.loc[9, "orig_height"] = 30_000
    report = validate_manifest(m, None, CFG, tmp_path)
    e = _assert_only_failure(report, tmp_path, "expect_column_values_to_be_between", "orig_height")
    assert e["observed_value"]["partial_unexpected_list"] == [30_000]
    assert e["kwargs"]["max_value"] == CFG.max_image_side


def test_tiny_image_uses_config(tmp_path):
    m = make_manifest()
    m.loc[1, "orig_width"] = 50
    assert not validate_manifest(m, None, CFG, tmp_path / "a").success
    cfg = ValidateConfig(min_image_side=32)
    assert validate_manifest(m, None, cfg, tmp_path / "b").success


def test_bad_sha256(tmp_path):
    m = make_manifest()
    m.loc[0, "sha256"] = "ABC"
    report = validate_manifest(m, None, CFG, tmp_path)
    _assert_only_failure(report, tmp_path, "expect_column_values_to_match_regex", "sha256")


def test_too_many_rejected(tmp_path):
    report = validate_manifest(make_manifest(), make_rejected(1), CFG, tmp_path)
    e = _assert_only_failure(
        report, tmp_path, "expect_column_max_to_be_between", "rejected_fraction"
    )
    assert report.n_rejected == 1
    assert report.rejected_fraction == pytest.approx(1 / 31)
    assert e["observed_value"] == pytest.approx(1 / 31)
    assert e["kwargs"]["max_value"] == CFG.max_rejected_fraction
    doc = load_json(tmp_path)
    assert doc["rejected_fraction"] == pytest.approx(1 / 31)
    assert doc["rejected_reasons"] == {"unreadable_image": 1}
    # the same share is fine under a looser limit
    loose = ValidateConfig(max_rejected_fraction=0.05)
    assert validate_manifest(make_manifest(), make_rejected(1), loose, tmp_path / "b").success


def test_missing_label_only_fails_when_required(tmp_path):
    m = make_manifest()
    m.loc[4, "boneage_months"] = np.nan
    report = validate_manifest(m, None, CFG, tmp_path / "a")
    assert failed_keys(report) == {("expect_column_values_to_not_be_null", "boneage_months")}
    unlabeled = ValidateConfig(require_labels=False)
    assert validate_manifest(m, None, unlabeled, tmp_path / "b").success


def test_empty_manifest_gives_failed_report(tmp_path):
    m = make_manifest().iloc[:0]
    report = validate_manifest(m, make_rejected(0), CFG, tmp_path)
    assert not report.success and report.n_rows == 0 and report.rejected_fraction == 0.0
    assert failed_keys(report) == {
        ("expect_table_row_count_to_be_between", None),
        ("expect_column_distinct_values_to_contain_set", "split"),
    }
    assert load_json(tmp_path)["success"] is False
    assert (tmp_path / "data_docs" / "index.html").is_file()


def test_manifest_without_columns_gives_failed_report(tmp_path):
    report = validate_manifest(pd.DataFrame(), None, CFG, tmp_path)
    assert not report.success
    cols = next(o for o in report.failed() if o.name == "expect_table_columns_to_match_set")
    assert "missing columns" in cols.details and '"sha256"' in cols.details
    unique = next(o for o in report.failed() if o.name == "expect_column_values_to_be_unique")
    assert unique.details.startswith("error:") and "id" in unique.details
    doc = load_json(tmp_path)
    assert doc["n_failed"] == len(report.failed())


def test_missing_column_is_reported(tmp_path):
    m = make_manifest().drop(columns=["shard"])
    report = validate_manifest(m, None, CFG, tmp_path)
    assert failed_keys(report) == {("expect_table_columns_to_match_set", None)}
    assert report.failed()[0].details == 'missing columns: ["shard"]'
    assert set(MANIFEST_COLUMNS) - set(m.columns) == {"shard"}


def test_validate_files_parquet_and_csv(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    make_manifest().to_parquet(data / "manifest.parquet", index=False)
    make_rejected(1).to_parquet(data / "rejected.parquet", index=False)
    make_rejected(1).to_csv(data / "rejected.csv", index=False)
    loose = ValidateConfig(max_rejected_fraction=0.05)

    r1 = validate_files(data / "manifest.parquet", data / "rejected.parquet", loose, tmp_path / "a")
    r2 = validate_files(data / "manifest.parquet", data / "rejected.csv", loose, tmp_path / "b")
    r3 = validate_files(data / "manifest.parquet", None, loose, tmp_path / "c")
    assert r1.success and r2.success and r3.success
    assert r1.n_rejected == r2.n_rejected == 1 and r3.n_rejected == 0
    assert (tmp_path / "a" / "validation.json").is_file()


def test_rerun_replaces_stale_data_docs(tmp_path):
    stale = tmp_path / "data_docs" / "validations" / "old.html"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    validate_manifest(make_manifest(), None, CFG, tmp_path)
    assert not stale.exists()
    assert (tmp_path / "data_docs" / "index.html").is_file()


def test_json_is_plain_and_summary_readable(tmp_path):
    m = make_manifest()
    m.loc[5, "id"] = m.loc[4, "id"]
    report = validate_manifest(m, make_rejected(3), CFG, tmp_path)
    text = (tmp_path / "validation.json").read_text()
    assert "NaN" not in text  # strict JSON
    doc = json.loads(text)
    assert doc == json.loads(json.dumps(report.to_dict()))
    assert doc["great_expectations_version"].startswith("1.")
    lines = report.summary().splitlines()
    assert lines[0].startswith("validation FAILED")
    assert len(lines) == 1 + len(report.failed())
    with pytest.raises(ValidationFailed, match="expect_column_values_to_be_unique"):
        raise_if_failed(report)


def test_great_expectations_only_imported_in_validate_suite():
    pkg = Path(__file__).resolve().parents[1] / "boneage"
    pattern = re.compile(r"^\s*(import|from)\s+great_expectations", re.M)
    offenders = [
        p.name
        for p in pkg.rglob("*.py")
        if p.name != "validate_suite.py" and pattern.search(p.read_text())
    ]
    assert offenders == []
