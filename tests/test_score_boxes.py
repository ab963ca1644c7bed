"""The boxes `boneage score` used, in pixels of the input image as given, and calibrated
outputs of a bundle that carries a calibration."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from boneage.bundle import build_bundle, bundle_model_dirs
from boneage.calibration import FORMAT, fit_calibration
from boneage.fingerprint import file_hash
from boneage.score import BOX_COLUMNS
from boneage.score_cohort import score_cohort
from tests.bundle_factory import make_bundle, rsna_cohort, tiny_params

W, H = 1500, 2000  # a non-square "full-resolution" original
HAND = (300, 200, 1200, 1800)  # the bright object's pixels: [x0, x1) x [y0, y1)


def _hand_bundle(tmp_path, geometry="keep_aspect"):
    """Tiny bundle whose hand box is the radiograph's foreground component, no margin
    (image QC off: the test image is a drawn rectangle, which QC rightly calls no hand)."""
    p = tiny_params(attend={"hand": {"cam_size": 128, "crop_size": 96, "margin": 0.0,
                                     "tau": 0.01, "refine": "foreground"}},
                    score={"qc": False}, ingest={"store_geometry": geometry})  # fmt: skip
    return make_bundle(tmp_path, age=120, params=p)


@pytest.mark.parametrize("geometry", ["keep_aspect", "square"])
def test_a_known_hand_box_round_trips_to_input_pixels(tmp_path, geometry):
    img = np.full((H, W), 20, np.uint8)
    x0, y0, x1, y1 = HAND
    img[y0:y1, x0:x1] = 200
    img[y0 + 300 : y0 + 600, x0 + 200 : x0 + 500] = 120  # some structure inside
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    Image.fromarray(img).save(cohort / "p1.png")
    out = tmp_path / "out"
    score_cohort(str(_hand_bundle(tmp_path, geometry)), cohort, out)
    row = pd.read_csv(out / "predictions.csv").iloc[0]
    assert row["status"] == "ok"
    assert (row["image_width"], row["image_height"]) == (W, H)
    found = [row[f"hand_{k}"] for k in ("x0", "y0", "x1", "y1")]
    # one pixel of the 128-px CAM view is 2000/128 = 15.6 input pixels
    assert found == pytest.approx(list(HAND), abs=2 * H / 128)
    # the overlay shows the input at its own aspect ratio (a square store stretched back),
    # the hand box (green) where it lies in the input: right panel, 384 px high, from y 22
    sheet = np.asarray(Image.open(out / "overlays" / "p1.png").convert("RGB")).astype(int)
    right = sheet[22:, 384:]
    f = 384 / H
    green = (right[..., 1] > 200) & (right[..., 0] < 60) & (right[..., 2] < 60)
    ys, xs = np.nonzero(green)
    x_off = (384 - round(W * f)) // 2
    got = [xs.min() - x_off, ys.min(), xs.max() + 1 - x_off, ys.max() + 1]
    assert got == pytest.approx([v * f for v in HAND], abs=2 * 384 / 128 + 3)


def test_real_full_resolution_original_boxes_lie_in_its_pixels(tmp_path, rsna_fullres):
    src = sorted(rsna_fullres.glob("*.png"))[0]
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    shutil.copy(src, cohort / src.name)  # a link out of the cohort would be refused
    out = tmp_path / "out"
    score_cohort(str(make_bundle(tmp_path, age=120)), cohort, out)
    row = pd.read_parquet(out / "predictions.parquet").iloc[0]
    w, h = Image.open(src).size
    assert (row["image_width"], row["image_height"]) == (w, h)
    assert set(BOX_COLUMNS) <= set(row.index)
    for stage in ("hand", "r1", "r2"):
        b = [row[f"{stage}_{k}"] for k in ("x0", "y0", "x1", "y1")]
        if row[f"{stage}_status"] == "fallback_prior":
            assert all(pd.isna(v) for v in b)  # empty where the stage fell back
            continue
        assert 0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h, (stage, b)


def _calibrated_bundle(tmp_path, scale):
    """make_bundle's models rebuilt into a bundle with a calibration whose intervals are
    ±scale·SD (no bias correction), fitted for exactly those aggregator/carpal weights."""
    models = tmp_path / "models-120"
    rng = np.random.default_rng(0)
    pred, sd = rng.uniform(20, 220, 500), np.full(500, 2.0)
    y = pred + rng.normal(0, scale * 2.0, 500)
    doc = {"format": FORMAT, "models": {
        c: fit_calibration(pred, sd, y, source={"model_sha256": file_hash(
            models / c / "model.pt")}) for c in ("aggregator", "carpal")}}  # fmt: skip
    (tmp_path / "cal.json").write_text(json.dumps(doc))
    out = tmp_path / "bundle-cal"
    build_bundle(tiny_params(), bundle_model_dirs(models), out, "boneage", tmp_path / "cal.json")
    return out, doc["models"]["aggregator"]


def test_scoring_applies_the_bundle_calibration_and_says_so(tmp_path, rsna299):
    bundle = make_bundle(tmp_path, age=120)
    d = rsna_cohort(rsna299, tmp_path / "c", 3)
    score_cohort(str(bundle), d, tmp_path / "raw", d / "labels.csv")
    raw = pd.read_csv(tmp_path / "raw" / "predictions.csv")
    assert set(raw["calibration"]) == {"none"}
    html = (tmp_path / "raw" / "report.html").read_text()
    assert "calibration-warning" in html
    cal_bundle, cal = _calibrated_bundle(tmp_path, scale=5.0)
    score_cohort(str(cal_bundle), d, tmp_path / "cal", d / "labels.csv")
    c = pd.read_csv(tmp_path / "cal" / "predictions.csv")
    assert c["calibration"].str.contains(cal["version"]).all()
    # the raw aggregator's SD is ~2 months; calibrated 90 % interval: ±s_0.9 · SD
    s90 = cal["interval"]["scales"]["0.9"]
    half = (c["p95_months"] - c["p05_months"]) / 2
    assert half.to_numpy() == pytest.approx(s90 * raw["sd_months"].to_numpy(), rel=0.01)
    assert c["sd_months"].to_numpy() == pytest.approx(
        cal["sd"]["factor"] * raw["sd_months"].to_numpy(), rel=0.01)  # fmt: skip
    html = (tmp_path / "cal" / "report.html").read_text()
    assert "calibration-warning" not in html and cal["version"] in html
    assert "Reliability of the calibrated intervals" in html


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_boxes_of_a_qc_turned_image_map_back_to_the_input_as_given(turns):
    from boneage.qc import correct
    from boneage.score import box_to_input, qc_turns

    assert qc_turns(f"auto_inverted;auto_rotated_{90 * turns}") == turns
    assert qc_turns("") == 0 and qc_turns(None) == 0
    upright = np.zeros((40, 30), np.uint8)
    upright[5:9, 20:27] = 255  # a box at x 20..27, y 5..9 of the upright image
    given = np.rot90(upright, turns)  # what the user handed in
    corrected = correct(given, turns, False)
    assert np.array_equal(corrected, upright)
    ys, xs = np.nonzero(given)
    expect = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    got = box_to_input((20, 5, 27, 9), 30, 40, turns)
    assert got == pytest.approx(expect)
