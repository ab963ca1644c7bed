"""Aggregator: region stacking, N-channel backbones, evaluation metrics on known inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from boneage.ablation import ablation_markdown
from boneage.aggregator import carpal_params, load_region_data, region_store
from boneage.config import ConfigError, EvaluateConfig, ModelConfig, load_params
from boneage.evaluate import compute_metrics, predictions_frame
from boneage.imageio import encode_png
from boneage.localizer import StagePaths
from boneage.models import AgeNet
from boneage.store import StoreWriter

REGION_VALUE = {"O": 10, "H": 60, "R1": 120, "R2": 180, "E": 240}


def _store(path, ids, value, shape=(40, 30)):
    with StoreWriter(path, shard_size=3) as w:
        for i in ids:
            img = np.full(shape, value, np.uint8)
            img[0, 0] = 0  # keep it from being a flat image for any consumer
            w.add({"id": i, "png": encode_png(img), "height": shape[0], "width": shape[1],
                   "orig_height": shape[0], "orig_width": shape[1], "scale": 1.0,
                   "sha256": "0" * 64})  # fmt: skip
    meta = path / "store.json"
    if not meta.is_file():
        meta.write_text(json.dumps({"long_side": None}))


def _fake_pipeline(tmp_path, missing_r1=("c",)):
    paths = StagePaths(tmp_path / "ingest", tmp_path / "attend")
    ids = ["a", "b", "c", "d", "e", "f"]
    manifest = pd.DataFrame({
        "id": ids,
        "sex": ["M", "F", "M", "F", "M", "F"],
        "boneage_months": [10.0, 50.0, 90.0, 130.0, 170.0, np.nan],
        "split": ["train", "train", "val", "test", "test", "test"],
    })  # fmt: skip
    paths.ingest.mkdir(parents=True)
    manifest.to_parquet(paths.manifest)
    for region, value in REGION_VALUE.items():
        have = [i for i in ids if not (region == "R1" and i in missing_r1)]
        _store(region_store(paths, region), have, value, (40, 30) if region == "O" else (32, 32))
    return paths, manifest


def test_regions_are_stacked_as_channels_in_the_order_given(tmp_path):
    paths, manifest = _fake_pipeline(tmp_path)
    data, excluded = load_region_data(paths, manifest, ("R2", "O", "H"), 16, workers=1)
    x = data["train"].x
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.uint8
    # channel i holds region i: compare the centre pixel (letterbox padding is at the sides)
    assert x[:, :, 8, 8].tolist() == [[180, 10, 60]] * 2
    assert data["train"].ids == ["a", "b"]
    assert data["train"].sex.tolist() == [1.0, 0.0]
    assert data["test"].age.tolist() == [130.0, 170.0]
    # unlabelled 'f' is not used; 'c' lacks no region in this set
    assert excluded.empty and data["val"].ids == ["c"]


def test_an_image_missing_a_region_is_excluded_with_its_reason(tmp_path):
    paths, manifest = _fake_pipeline(tmp_path, missing_r1=("c", "d"))
    data, excluded = load_region_data(paths, manifest, ("H", "R1"), 16, workers=1)
    assert excluded["id"].tolist() == ["c", "d"]
    assert excluded["split"].tolist() == ["val", "test"]
    assert all("no R1 crop" in r for r in excluded["reason"])
    assert data["val"].ids == [] and data["test"].ids == ["e"]
    # every labelled row is either in a split or excluded
    used = sum(len(d) for d in data.values()) + len(excluded)
    assert used == manifest["boneage_months"].notna().sum()


def test_missing_region_store_is_a_clear_error(tmp_path):
    paths, manifest = _fake_pipeline(tmp_path)
    import shutil

    shutil.rmtree(region_store(paths, "R2"))
    with pytest.raises(FileNotFoundError, match="region R2 missing"):
        load_region_data(paths, manifest, ("H", "R2"), 16, workers=1)


def test_params_reject_unknown_or_repeated_regions():
    with pytest.raises(ConfigError, match="regions"):
        load_params("params.yaml", {"aggregator": {"regions": ["H", "X"]}})
    with pytest.raises(ConfigError, match="twice"):
        load_params("params.yaml", {"aggregator": {"regions": ["H", "H"]}})


@pytest.mark.parametrize("channels", [2, 4, 5])
def test_n_channel_stem_matches_the_grayscale_network_on_identical_channels(channels):
    cfg = ModelConfig(backbone="tf_efficientnet_lite0", pretrained="offline-imagenet",
                      sex_dim=32, output_stride=32)  # fmt: skip
    gray, multi = AgeNet(cfg, 1).eval(), AgeNet(cfg, channels).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        a = gray.feature_maps(x)
        b = multi.feature_maps(x.expand(-1, channels, -1, -1))
        logits = multi(x.expand(-1, channels, -1, -1), torch.tensor([0.0, 1.0]))
    assert torch.allclose(a, b, atol=1e-4)
    assert logits.shape == (2, 240)


def test_metrics_on_known_inputs():
    df = pd.DataFrame({
        "true_months": [24.0, 72.0, 132.0, 200.0],
        "pred_months": [30.0, 70.0, 120.0, 200.0],
        "lo_months": [20.0, 60.0, 125.0, 190.0],
        "hi_months": [40.0, 80.0, 140.0, 210.0],
        "sd_months": [5.0, 5.0, 5.0, 5.0],
        "sex": ["M", "F", "M", "F"],
    })  # fmt: skip
    m = compute_metrics(df, EvaluateConfig())
    # errors: +6, -2, -12, 0
    assert m["n"] == 4
    assert m["mae"] == pytest.approx(5.0)
    assert m["rmse"] == pytest.approx(math.sqrt((36 + 4 + 144 + 0) / 4))
    assert m["median_ae"] == pytest.approx(4.0)
    assert m["bias"] == pytest.approx(-2.0)
    assert m["coverage"] == pytest.approx(1.0)  # every true age inside its interval
    assert m["mae_by_sex"] == {"F": {"n": 2, "mae": 1.0}, "M": {"n": 2, "mae": 9.0}}
    assert m["mae_by_age_band"] == {
        "0-5y": {"n": 1, "mae": 6.0},
        "5-10y": {"n": 1, "mae": 2.0},
        "10-15y": {"n": 1, "mae": 12.0},
        "15-20y": {"n": 1, "mae": 0.0},
    }


def test_age_bands_and_coverage_exact():
    df = pd.DataFrame({
        "true_months": [0.0, 59.9, 60.0, 119.0, 180.0, 240.0],
        "pred_months": [1.0, 61.9, 63.0, 123.0, 185.0, 234.0],
        "lo_months": [0.0, 50.0, 64.0, 100.0, 170.0, 235.0],
        "hi_months": [5.0, 70.0, 70.0, 130.0, 190.0, 239.0],
        "sd_months": [1.0] * 6,
        "sex": ["M"] * 6,
    })  # fmt: skip
    m = compute_metrics(df, EvaluateConfig())
    b = m["mae_by_age_band"]
    assert b["0-5y"] == {"n": 2, "mae": pytest.approx(1.5)}
    assert b["5-10y"] == {"n": 2, "mae": pytest.approx(3.5)}
    assert b["10-15y"] == {"n": 0, "mae": None}
    assert b["15-20y"] == {"n": 2, "mae": pytest.approx(5.5)}  # 240 = 20 y is in the last band
    # inside: 0∈[0,5], 59.9∈[50,70], 60∉[64,70], 119∈[100,130], 180∈[170,190], 240∉[235,239]
    assert m["coverage"] == pytest.approx(4 / 6)


def test_predictions_frame_interval_comes_from_the_distribution():
    p = torch.zeros(2, 240)
    p[0, 100] = 1.0  # a point mass: expectation 100, sd 0
    p[1, 50:150] = 0.01  # uniform over 50..149
    df = predictions_frame(["a", "b"], ["test"] * 2, ["M", "F"], np.array([100.0, 99.0]), p, 0.9)
    assert df.loc[0, "pred_months"] == pytest.approx(100.0)
    assert df.loc[0, "sd_months"] == pytest.approx(0.0, abs=1e-6)
    assert df.loc[1, "pred_months"] == pytest.approx(99.5)
    # the central 90% of a uniform density over [49.5, 149.5] is [54.5, 144.5]
    assert df.loc[1, "lo_months"] == pytest.approx(54.5, abs=0.6)
    assert df.loc[1, "hi_months"] == pytest.approx(144.5, abs=0.6)
    assert df["status"].tolist() == ["ok", "ok"]


def test_ablation_markdown_lists_every_row_and_the_paper_column():
    rows = [
        {"regions": "O", "test_mae": 20.0, "test_rmse": 25.0, "test_bias": 1.0, "coverage": 0.9,
         "val_mae": 21.0, "epochs_run": 3, "best_epoch": 3, "n_train": 10, "n_test": 5,
         "mae_predict_train_mean": 40.0, "paper_mae": 7.3},
        {"regions": "H+R1", "test_mae": 18.0, "test_rmse": 22.0, "test_bias": -1.0,
         "coverage": 0.8, "val_mae": 19.0, "epochs_run": 3, "best_epoch": 2, "n_train": 10,
         "n_test": 5, "mae_predict_train_mean": 40.0, "paper_mae": None},
    ]  # fmt: skip
    md = ablation_markdown(rows, {"img_size": 64})
    assert "| O | 20.00 |" in md and "| 7.3 |" in md
    assert "| H+R1 | 18.00 |" in md and "| — |" in md
    assert "img_size=64" in md and "40.00" in md


def test_ablation_resume_reuses_only_runs_with_the_same_budget(tmp_path):
    from boneage.ablation import _finished

    params = load_params("params.yaml")
    a = params.aggregator
    model_dir, eval_dir = tmp_path / "m", tmp_path / "e"
    assert _finished(model_dir, eval_dir, params) is None  # nothing there yet
    model_dir.mkdir()
    eval_dir.mkdir()
    (model_dir / "metrics.json").write_text(json.dumps({"val_mae": 1.0}))
    (eval_dir / "metrics.json").write_text(json.dumps({"mae": 2.0}))
    cfg = {"img_size": a.img_size, "train": json.loads(a.train.model_dump_json()),
           "model": json.loads(a.model.model_dump_json())}  # fmt: skip
    (model_dir / "config.json").write_text(json.dumps(cfg))
    assert _finished(model_dir, eval_dir, params) == ({"val_mae": 1.0}, {"mae": 2.0})
    other = load_params("params.yaml", {"aggregator": {"train": {"epochs": 99}}})
    assert _finished(model_dir, eval_dir, other) is None
    # a per-region-backbone run is a different model: never reused for the stacked row
    from boneage.ablation import _with_fusion

    assert _finished(model_dir, eval_dir, _with_fusion(params, "per_region")) is None


def test_ablation_per_region_sets_need_two_known_regions():
    with pytest.raises(ValueError, match="one region"):
        load_params("params.yaml", {"ablation": {"per_region": [["H"]]}})
    with pytest.raises(ValueError, match="bad region set"):
        load_params("params.yaml", {"ablation": {"configs": [["H", "X"]]}})
    p = load_params("params.yaml", {"ablation": {"per_region": [["H", "R1", "R2"]]}})
    assert p.ablation.per_region == (("H", "R1", "R2"),)


def test_ablation_resume_accepts_a_run_saved_before_a_defaulted_field_existed(tmp_path):
    from boneage.ablation import _finished

    params = load_params("params.yaml")
    a = params.aggregator
    (tmp_path / "m").mkdir()
    (tmp_path / "e").mkdir()
    (tmp_path / "m" / "metrics.json").write_text("{}")
    (tmp_path / "e" / "metrics.json").write_text("{}")
    model = json.loads(a.model.model_dump_json())
    del model["fusion"]  # saved by a version without the field: default "stack"
    cfg = {"img_size": a.img_size, "train": json.loads(a.train.model_dump_json()), "model": model}
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    assert _finished(tmp_path / "m", tmp_path / "e", params) == ({}, {})


def test_the_carpal_head_trains_at_its_own_size_without_progressive_resizing():
    p = load_params(overrides={"aggregator": {"train": {"low_res_size": 160, "low_res_epochs": 8}},
                               "carpal": {"img_size": 112, "epochs": 2}})  # fmt: skip
    c = carpal_params(p).aggregator
    assert c.regions == ("R1",) and c.img_size == 112 and c.train.epochs == 2
    assert c.train.low_res_size is None and c.train.low_res_epochs == 0
    assert c.train.lr == p.aggregator.train.lr
