"""Ingest of DICOM cohorts: a folder with no CSV, mixed CSV+DICOM, and the PHI canary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boneage.config import IngestConfig
from boneage.ingest import ingest
from boneage.rejects import Reason
from boneage.store import ImageStore
from tests.dicom_factory import CANARY_STRINGS, DEFAULT_BIRTH_DATE, make_dicom

CFG = IngestConfig(workers=1, require_labels=False, shard_size=2)


@pytest.fixture()
def real_pixels(rsna299) -> list[np.ndarray]:
    d = rsna299 / "boneage-training-dataset"
    return [np.asarray(Image.open(d / f"{i}.jpg").convert("L")) for i in (1377, 1378, 1380)]


@pytest.fixture()
def dicom_folder(tmp_path, real_pixels) -> Path:
    d = tmp_path / "dicoms"
    a, b, c = real_pixels
    make_dicom(d / "site1" / "img001.dcm", a, sex="F", birth_date="20100101", study_date="20200101")
    # 16-bit MONOCHROME1 with a window, no suffix, age from PatientAge only
    make_dicom(
        d / "site1" / "IMG002",
        (255 - b).astype(np.uint16) * 16,
        bits_allocated=16,
        bits_stored=12,
        photometric="MONOCHROME1",
        window=(2040, 4080),
        sex="M",
        birth_date=None,
        study_date=None,
        patient_age="009Y",
    )
    make_dicom(d / "img003.dcm", c, sex="O")  # no usable sex
    (d / "README.txt").write_text("export log")
    return d


def test_dicom_folder_without_csv(dicom_folder, tmp_path):
    res = ingest(dicom_folder, None, tmp_path / "out", CFG, progress=False)
    m = res.manifest.set_index("id")
    assert sorted(m.index) == ["site1__IMG002", "site1__img001"]
    assert m.loc["site1__img001", "sex"] == "F"
    assert m.loc["site1__img001", "sex_source"] == "dicom"
    assert m.loc["site1__img001", "chronological_age_months"] == pytest.approx(120, abs=0.5)
    assert m.loc["site1__img001", "age_source"] == "dates"
    assert m.loc["site1__IMG002", "chronological_age_months"] == pytest.approx(108)
    assert m.loc["site1__IMG002", "age_source"] == "patient_age"
    assert m["format"].eq("dicom").all() and m["boneage_months"].isna().all()
    rej = res.rejected.set_index("source")
    assert rej.loc["img003.dcm", "reason"] == Reason.UNKNOWN_SEX
    assert rej.loc["README.txt", "reason"] == Reason.NOT_AN_IMAGE


def test_dicom_pixels_match_source(dicom_folder, real_pixels, tmp_path):
    ingest(dicom_folder, None, tmp_path / "out", CFG, progress=False)
    store = ImageStore(tmp_path / "out" / "store")
    np.testing.assert_array_equal(store.get("site1__img001").pixels, real_pixels[0])
    # 12-bit MONOCHROME1 windowed back to the source range: within 1 grey level
    diff = store.get("site1__IMG002").pixels.astype(int) - real_pixels[1].astype(int)
    assert np.abs(diff).max() <= 1


def test_unknown_sex_allowed_for_scoring(dicom_folder, tmp_path):
    cfg = CFG.model_copy(update={"allow_unknown_sex": True})
    res = ingest(dicom_folder, None, tmp_path / "out", cfg, progress=False)
    m = res.manifest.set_index("id")
    assert m.loc["img003", "sex"] == "U" and m.loc["img003", "sex_source"] == "missing"


def test_csv_with_dicom_paths_and_sex_fallback(dicom_folder, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "id,sex,path,boneage_months\n"
        "p1,,site1/img001.dcm,100\n"  # sex left empty: taken from the DICOM header
        "p2,M,site1/IMG002,90\n"
    )
    cfg = CFG.model_copy(update={"require_labels": True})
    res = ingest(dicom_folder, labels, tmp_path / "out", cfg, progress=False)
    m = res.manifest.set_index("id")
    assert m.loc["p1", "sex"] == "F" and m.loc["p1", "sex_source"] == "dicom"
    assert m.loc["p2", "sex"] == "M" and m.loc["p2", "sex_source"] == "csv"
    assert set(res.rejected["reason"]) == {Reason.NO_LABEL_ROW, Reason.NOT_AN_IMAGE}


def test_no_phi_in_any_output(dicom_folder, tmp_path):
    """Canary PatientName/PatientID/... planted in every file never reach any output."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "boneage.cli", "ingest", "--cohort", str(dicom_folder),
         "--out", str(out), "--summary", str(tmp_path / "summary.json"), "--no-progress",
         "--params", str(tmp_path / "params.yaml")],
        capture_output=True, text=True,
        input=None,
    )  # fmt: skip
    # default params require labels; with a params file allowing none, it ingests
    assert proc.returncode == 2 and "labels" in proc.stderr
    (tmp_path / "params.yaml").write_text("ingest:\n  require_labels: false\n")
    proc = subprocess.run(
        [sys.executable, "-m", "boneage.cli", "ingest", "--cohort", str(dicom_folder),
         "--out", str(out), "--summary", str(tmp_path / "summary.json"), "--no-progress",
         "--params", str(tmp_path / "params.yaml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    files = [p for p in out.rglob("*") if p.is_file()] + [tmp_path / "summary.json"]
    assert len(files) >= 5
    canaries = [c.encode() for c in CANARY_STRINGS] + [DEFAULT_BIRTH_DATE.encode()]
    for f in files:
        data = f.read_bytes()
        for c in canaries:
            assert c not in data, f"{c!r} leaked into {f}"
    for c in CANARY_STRINGS + [DEFAULT_BIRTH_DATE]:
        assert c not in proc.stdout and c not in proc.stderr
