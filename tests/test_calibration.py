"""Calibration: bias correction, conformal intervals, calibrated SD, validation-only fit."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from boneage import calibration as cal_mod
from boneage.aggregator import load_region_data
from boneage.calibration import apply, conformal_quantile, fit_calibration, interval
from boneage.config import ModelConfig, load_params
from boneage.imageio import encode_png
from boneage.localizer import StagePaths
from boneage.models import AgeNet
from boneage.store import StoreWriter
from boneage.training import save_model


def _synthetic(n, seed, scale=2.0, bias=(0.0, 1.0)):
    """Raw predictions whose true errors are N(0, (scale · sd)²) around a + b · pred."""
    rng = np.random.default_rng(seed)
    pred = rng.uniform(20, 220, n)
    sd = rng.uniform(3, 15, n)
    y = bias[0] + bias[1] * pred + rng.normal(0, scale * sd)
    return pred, sd, y


def test_conformal_quantile_is_the_finite_sample_order_statistic():
    s = np.arange(1, 11, dtype=float)  # 1..10
    assert conformal_quantile(s, 0.5) == 6.0  # ceil(11 * 0.5) = 6th smallest
    assert conformal_quantile(s, 0.9) == 10.0  # ceil(9.9) = 10th
    assert conformal_quantile(s, 0.99) == 10.0  # capped at n
    with pytest.raises(ValueError):
        conformal_quantile(np.array([]), 0.5)


def test_fit_recovers_a_known_error_scale():
    pred, sd, y = _synthetic(4000, 0, scale=2.0)
    cal = fit_calibration(pred, sd, y)
    assert cal["interval"]["method"] == "sd_scaled"  # the SD is informative here
    # |N(0, (2 sd)^2)| / sd: quantile q is 2 * z_{(1+q)/2}
    for q, z in (("0.5", 0.6745), ("0.9", 1.6449), ("0.95", 1.96)):
        assert cal["interval"]["scales"][q] == pytest.approx(2 * z, rel=0.08)
    assert cal["sd"]["factor"] == pytest.approx(2.0, rel=0.08)
    assert cal["bias"]["kind"] == "none"  # unbiased: the correction does not pay off in CV
    # fresh data from the same process: nominal coverage
    pred2, sd2, y2 = _synthetic(4000, 1, scale=2.0)
    out = apply(cal, pred2, sd2)
    for q in ("0.5", "0.8", "0.9", "0.95"):
        cov = np.mean((y2 >= out[f"lo_{q}"]) & (y2 <= out[f"hi_{q}"]))
        assert abs(cov - float(q)) < 0.025, (q, cov)


def test_linear_bias_is_corrected_and_kept_only_when_it_helps():
    pred, sd, y = _synthetic(3000, 2, scale=0.5, bias=(8.0, 0.9))
    cal = fit_calibration(pred, sd, y)
    assert cal["bias"]["kind"] == "linear"
    assert cal["bias"]["a"] == pytest.approx(8.0, abs=1.0)
    assert cal["bias"]["b"] == pytest.approx(0.9, abs=0.01)
    assert cal["bias"]["cv_mae_linear"] < cal["bias"]["cv_mae_identity"]
    est = apply(cal, pred, sd)["estimate"]
    assert abs(np.mean(est - y)) < 0.2


def test_no_bias_correction_from_too_few_validation_images():
    pred, sd, y = _synthetic(3000, 2, scale=0.5, bias=(8.0, 0.9))
    few = fit_calibration(pred[:60], sd[:60], y[:60], bias_min_n=100)
    assert few["bias"]["kind"] == "none" and (few["bias"]["a"], few["bias"]["b"]) == (0.0, 1.0)
    assert "60 validation images < bias_min_n 100" in few["bias"]["why"]
    assert fit_calibration(pred[:60], sd[:60], y[:60], bias_min_n=50)["bias"]["kind"] == "linear"


def test_constant_width_wins_when_the_sd_says_nothing():
    rng = np.random.default_rng(3)
    pred, sd = rng.uniform(20, 220, 3000), rng.uniform(3, 15, 3000)
    y = pred + rng.normal(0, 10, 3000)  # error independent of sd
    cal = fit_calibration(pred, sd, y)
    assert cal["interval"]["method"] == "constant"
    lo, hi = interval(cal, 0.9, pred[:5], sd[:5])
    assert np.allclose(hi - lo, hi[0] - lo[0])  # same width for every image
    assert (hi - lo)[0] / 2 == pytest.approx(1.6449 * 10, rel=0.08)


def test_low_confidence_flags_the_widest_share_and_they_err_more():
    pred, sd, y = _synthetic(3000, 4, scale=1.5)
    cal = fit_calibration(pred, sd, y, low_confidence_quantile=0.8)
    out = apply(cal, pred, sd)
    assert out["low_confidence"].mean() == pytest.approx(0.2, abs=0.01)
    lc = cal["low_confidence"]
    assert lc["val_mae_flagged"] > 1.5 * lc["val_mae_unflagged"]


def test_version_is_derived_from_content_and_edits_are_refused():
    pred, sd, y = _synthetic(200, 5)
    cal = fit_calibration(pred, sd, y)
    assert cal["version"] == cal_mod.version_of(cal)
    edited = json.loads(json.dumps(cal))
    edited["interval"]["scales"]["0.9"] = 0.1
    with pytest.raises(ValueError, match="does not match"):
        apply(edited, pred, sd)
    with pytest.raises(ValueError, match="at least 10"):
        fit_calibration(pred[:9], sd[:9], y[:9])


# ---------------------------------------------------------------- validation-only fit


def _pipeline(tmp_path, test_label, test_value):
    """An ingest (manifest + store, region O) of 40 val, 20 train and 20 test images."""
    rng = np.random.default_rng(0)
    paths = StagePaths(tmp_path / "ingest", tmp_path / "attend")
    paths.ingest.mkdir(parents=True, exist_ok=True)
    ids = [f"i{k}" for k in range(80)]
    split = ["train"] * 20 + ["val"] * 40 + ["test"] * 20
    ages = rng.uniform(10, 200, 80)
    ages[60:] = test_label
    pd.DataFrame({"id": ids, "sex": ["M", "F"] * 40, "boneage_months": ages,
                  "split": split}).to_parquet(paths.manifest)  # fmt: skip
    with StoreWriter(paths.store, shard_size=16) as w:
        for k, i in enumerate(ids):
            img = rng.integers(0, 255, (24, 24), dtype=np.uint8)
            if split[k] == "test":
                img[:] = test_value
            w.add({"id": i, "png": encode_png(img), "height": 24, "width": 24,
                   "orig_height": 24, "orig_width": 24, "scale": 1.0,
                   "sha256": "0" * 64})  # fmt: skip
    return paths


def test_test_split_never_reaches_the_fit(tmp_path, monkeypatch):
    params = load_params(overrides={"calibrate": {"folds": 3}})
    cfg = ModelConfig(backbone="resnet18", pretrained="none", sex_dim=4)
    torch.manual_seed(0)
    model_dir = tmp_path / "agg"
    save_model(AgeNet(cfg, in_channels=1), model_dir,
               {"kind": "aggregator", "regions": ["O"], "img_size": 16})  # fmt: skip
    seen: list[set] = []

    def spy(paths, manifest, regions, size, workers=0):
        seen.append(set(manifest["split"]))
        return load_region_data(paths, manifest, regions, size, workers)

    monkeypatch.setattr("boneage.aggregator.load_region_data", spy)
    docs = []
    for label, value in ((100.0, 0), (5.0, 255)):  # test labels and pixels changed wholesale
        paths = _pipeline(tmp_path / f"run{label}", label, value)
        docs.append(cal_mod.calibrate_models(params, paths, {"aggregator": model_dir},
                                             tmp_path / f"out{label}"))  # fmt: skip
    assert seen and all(s == {"val"} for s in seen)
    assert docs[0]["models"]["aggregator"]["fitted_on"]["n"] == 40
    a, b = (d["models"]["aggregator"] for d in docs)
    assert a["version"] == b["version"] and a == b
