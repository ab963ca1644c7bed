"""Scoring cohorts end to end (boneage.score, `boneage score`): one row per input, errors
as rows, resumability after a kill, clinical columns, no PHI, and the HTML report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from boneage.bundle import ScoreError
from boneage.reference import REFERENCE_ID, bone_age_sds, reference_sd
from boneage.registry import open_model
from boneage.score import PREDICTION_COLUMNS
from boneage.score_cohort import score_cohort
from tests.bundle_factory import make_bundle, rsna_cohort
from tests.dicom_factory import CANARY_STRINGS, DEFAULT_BIRTH_DATE, make_dicom
from tests.helpers import chromium


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"), age=120)


@pytest.fixture()
def cohort(rsna299, tmp_path) -> Path:
    """6 real RSNA images + one corrupt file listed in the CSV + chronological ages."""
    d = rsna_cohort(rsna299, tmp_path / "cohort", 6)
    (d / "9999.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    lab = pd.read_csv(d / "labels.csv")
    lab = pd.concat([lab, pd.DataFrame({"id": [9999], "boneage": [100], "male": [True]})])
    # generic layout with a chronological age: sex M/F, boneage_months as the reference
    g = pd.DataFrame({
        "id": lab["id"].astype(str), "sex": np.where(lab["male"], "M", "F"),
        "boneage_months": lab["boneage"], "chronological_age_months": 118.0,
    })  # fmt: skip
    g.to_csv(d / "labels.csv", index=False)
    return d


def test_reference_sd_and_sds_known_values():
    assert reference_sd(120, "M") == pytest.approx(9.79)
    assert reference_sd(126, "M") == pytest.approx((9.79 + 10.09) / 2)
    assert reference_sd(60, "F") == pytest.approx(11.65)
    assert reference_sd(2, "M") is None and reference_sd(200, "F") is None  # outside table
    assert reference_sd(120, "U") is None
    assert bone_age_sds(140, 120, "M") == pytest.approx(20 / 9.79)
    assert bone_age_sds(140, None, "M") is None


def test_score_cohort_one_row_per_input_with_clinical_columns(bundle, cohort, tmp_path):
    out = tmp_path / "out"
    s = score_cohort(str(bundle), cohort, out, cohort / "labels.csv")
    df = pd.read_parquet(out / "predictions.parquet")
    assert list(df.columns) == PREDICTION_COLUMNS
    assert sorted(df["id"]) == sorted(pd.read_csv(cohort / "labels.csv")["id"].astype(str))
    assert s["n"] == 7 and s["n_ok"] == 6 and s["n_error"] == 1
    bad = df.set_index("id").loc["9999"]
    assert bad["status"] == "error" and bad["error"].startswith("not_an_image: ")
    assert "qc_reject" in bad["flags"] and pd.isna(bad["boneage_months"])
    ok = df[df["status"] == "ok"]
    # the peaked test aggregator predicts 120 months, the carpal head 100
    assert np.allclose(ok["boneage_months"], 120, atol=0.5)
    assert np.allclose(ok["boneage_years"], ok["boneage_months"] / 12)
    assert np.allclose(ok["carpal_boneage_months"], 100, atol=0.5)
    assert (ok["p05_months"] < ok["boneage_months"]).all()
    assert (ok["p95_months"] > ok["boneage_months"]).all()
    assert np.allclose(ok["ba_minus_ca_months"], 2.0, atol=0.5)
    for r in ok.itertuples():
        assert r.sds == pytest.approx(bone_age_sds(r.boneage_months, 118.0, r.sex_used))
    assert (ok["sds_reference"] == REFERENCE_ID).all()
    assert (ok["sex_source"] == "csv").all() and (ok["chronological_age_source"] == "csv").all()
    assert set(ok["model_name"]) == {"boneage"}
    assert ok["model_version"].str.startswith("local-").all()
    csv = pd.read_csv(out / "predictions.csv", dtype={"id": str})
    assert len(csv) == 7 and list(csv.columns) == PREDICTION_COLUMNS
    for i in ok["id"]:
        assert Image.open(out / "overlays" / f"{i}.png").size[0] > 100
    assert (out / "report.html").is_file()


def test_low_confidence_and_training_range_flags(tmp_path, rsna299):
    from tests.bundle_factory import tiny_params

    # SD 2 months > threshold 1 → low_confidence; 230 months > training max 228
    p = tiny_params(score={"shard_size": 3, "low_confidence_sd_months": 1.0})
    b = make_bundle(tmp_path, age=230, params=p)
    d = rsna_cohort(rsna299, tmp_path / "c", 2)
    score_cohort(str(b), d, tmp_path / "o", d / "labels.csv")
    df = pd.read_parquet(tmp_path / "o" / "predictions.parquet")
    for f in df["flags"]:
        assert "low_confidence" in f and "outside_training_range" in f


def test_dicom_cohort_sex_and_age_from_headers_and_no_phi(bundle, rsna299, tmp_path):
    d = tmp_path / "dicoms"
    px = np.asarray(Image.open(rsna299 / "boneage-training-dataset" / "1377.jpg").convert("L"))
    make_dicom(d / "a.dcm", px, sex="F", birth_date=DEFAULT_BIRTH_DATE, study_date="20200101")
    make_dicom(d / "b.dcm", px, sex=None, birth_date=None, study_date=None)  # nothing known
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "boneage.cli", "score", "--model", str(bundle), "--cohort", str(d),
         "--out", str(out)], capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    df = pd.read_parquet(out / "predictions.parquet").set_index("id")
    a, b = df.loc["a"], df.loc["b"]
    assert a["sex_used"] == "F" and a["sex_source"] == "dicom"
    assert a["chronological_age_months"] == pytest.approx(120, abs=0.5)
    assert a["chronological_age_source"] == "dates" and pd.notna(a["sds"])
    assert b["sex_used"] == "U" and b["sex_source"] == "missing"
    assert "sex_unknown" in b["flags"] and pd.isna(b["sds"]) and b["status"] == "ok"
    canaries = [c.encode() for c in CANARY_STRINGS] + [DEFAULT_BIRTH_DATE.encode()]
    for f in [p for p in out.rglob("*") if p.is_file()]:
        data = f.read_bytes()
        for c in canaries:
            assert c not in data, f"{c!r} leaked into {f}"
    for c in CANARY_STRINGS + [DEFAULT_BIRTH_DATE]:
        assert c not in proc.stdout and c not in proc.stderr


def test_killed_run_resumes_to_the_same_rows(bundle, rsna299, tmp_path):
    d = rsna_cohort(rsna299, tmp_path / "c", 8)
    cmd = [sys.executable, "-m", "boneage.cli", "score", "--model", str(bundle), "--cohort",
           str(d), "--labels", str(d / "labels.csv"), "--shard-size", "2"]  # fmt: skip
    ref = subprocess.run(cmd + ["--out", str(tmp_path / "ref")], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    first = out / "shards" / "shard-00000.parquet"
    t0 = time.time()
    while not first.is_file() and time.time() - t0 < 120:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # in the middle: later shards not written
    proc.wait()
    assert first.is_file()
    assert not (out / "shards" / "shard-00003.parquet").is_file()
    assert not (out / "predictions.parquet").is_file()
    again = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    a = pd.read_parquet(out / "predictions.parquet")
    b = pd.read_parquet(tmp_path / "ref" / "predictions.parquet")
    assert len(a) == 8 and a["id"].is_unique
    pd.testing.assert_frame_equal(a, b)
    assert not list((out / "shards").glob(".*.tmp"))


def test_rerun_with_another_cohort_in_the_same_out_is_refused(bundle, rsna299, tmp_path):
    d1 = rsna_cohort(rsna299, tmp_path / "c1", 2)
    d2 = rsna_cohort(rsna299, tmp_path / "c2", 2, start=5)
    score_cohort(str(bundle), d1, tmp_path / "o", d1 / "labels.csv")
    with pytest.raises(ScoreError, match="different cohort"):
        score_cohort(str(bundle), d2, tmp_path / "o", d2 / "labels.csv")


def test_unopenable_model_or_cohort_is_exit_2_and_all_failed_is_exit_1(bundle, tmp_path):
    with pytest.raises(ScoreError, match="bundle"):
        open_model(tmp_path)
    run = [sys.executable, "-m", "boneage.cli", "score", "--out", str(tmp_path / "o")]
    p = subprocess.run(run + ["--model", str(bundle), "--cohort", str(tmp_path / "none")],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 2 and "none" in p.stderr
    junk = tmp_path / "junk"
    junk.mkdir()
    Image.new("L", (128, 128), 0).save(junk / "blank.png")  # blank: QC reject
    p = subprocess.run(run + ["--model", str(bundle), "--cohort", str(junk)],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 1, p.stderr
    df = pd.read_csv(tmp_path / "o" / "predictions.csv")
    assert list(df["status"]) == ["error"] and "blank" in df["error"][0]


def test_report_renders_in_headless_chromium(bundle, cohort, tmp_path):
    exe = chromium()
    out = tmp_path / "out"
    score_cohort(str(bundle), cohort, out, cohort / "labels.csv")
    url = (out / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    shot = tmp_path / "shot.png"
    r = subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1280,1600", url],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shot.is_file(), r.stderr
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.std() > 20  # not a blank page: text, table rules, plots, overlays
    assert (img < 128).mean() > 0.02
    dom = subprocess.run([exe, *flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120).stdout  # fmt: skip
    assert "<title>Bone age report — boneage local-" in dom
    body = dom.split('<tbody id="prediction-rows">', 1)[1].split("</tbody>", 1)[0]
    assert body.count("<tr") == 7  # every input row rendered
    assert "not_an_image" in body and "data:image/" in dom and "http" not in body
