"""evaluate: which predictions use test-time augmentation, and what the figures rest on."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import boneage.evaluate as ev
from boneage.config import load_params
from boneage.localizer import StagePaths


class _Split(SimpleNamespace):
    def __len__(self) -> int:
        return len(self.ids)


def _peaked(ages: torch.Tensor, k: int = 240) -> torch.Tensor:
    grid = torch.arange(k, dtype=torch.float32)
    return torch.softmax(-((grid[None] - ages[:, None]) ** 2) / 8.0, dim=1)


def _stubbed(tmp_path, monkeypatch, calls: list):
    """evaluate with a stub model whose every estimate is 6 months high; returns the
    model dir (its config.json and model.pt are placeholders)."""
    ages = {"train": [24.0, 60.0, 120.0], "val": [12.0 * i + 6.0 for i in range(12)],
            "test": [48.0, 150.0, 200.0]}  # fmt: skip
    data = {s: _Split(ids=[f"{s}{i}" for i in range(len(a))], age=torch.tensor(a))
            for s, a in ages.items()}  # fmt: skip
    manifest = pd.DataFrame({"id": [i for d in data.values() for i in d.ids],
                             "sex": "F", "boneage_months": 0.0})  # fmt: skip

    def fake_predict(model, d, device, tta_shift=0.0):
        split = d.ids[0].rstrip("0123456789")
        calls.append((split, tta_shift))
        return _peaked(d.age + 6.0)  # every estimate 6 months high

    meta = {"kind": "aggregator", "regions": ["O"], "img_size": 32}
    monkeypatch.setattr(ev, "load_model", lambda *a: (None, meta))
    monkeypatch.setattr(ev, "read_manifest", lambda p: manifest)
    monkeypatch.setattr(ev, "load_region_data", lambda *a: (data, pd.DataFrame(
        columns=["id", "reason"])))  # fmt: skip
    monkeypatch.setattr(ev, "predict", fake_predict)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(meta))
    (model_dir / "model.pt").write_bytes(b"weights")
    return model_dir


def test_tta_applies_to_val_and_test_and_the_training_split_is_one_view(tmp_path, monkeypatch):
    calls = []
    model_dir = _stubbed(tmp_path, monkeypatch, calls)
    params = load_params(overrides={"aggregator": {"tta_shift": 0.02}})
    m = ev.evaluate(params, StagePaths(tmp_path, tmp_path), model_dir, tmp_path / "out")
    assert calls == [("train", 0.0), ("val", 0.02), ("test", 0.02)]
    assert m["tta_shift"] == 0.02 and m["n"] == 3
    assert m["mae"] == pytest.approx(6.0, abs=0.05)
    preds = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert sorted(preds["split"].value_counts().items()) == [("test", 3), ("train", 3), ("val", 12)]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["tta_shift"] == 0.02


def test_a_calibrated_evaluation_can_reuse_an_earlier_one_of_the_same_model(tmp_path, monkeypatch):
    """evaluate --calibration --reuse DIR takes DIR's predictions (no forward pass) and
    gives the figures of predicting again; DIR of other weights or TTA is refused."""
    from boneage.calibration import fit_calibration

    calls = []
    model_dir = _stubbed(tmp_path, monkeypatch, calls)
    params = load_params(overrides={"aggregator": {"tta_shift": 0.02}})
    paths = StagePaths(tmp_path, tmp_path)
    ev.evaluate(params, paths, model_dir, tmp_path / "raw")
    val = pd.read_parquet(tmp_path / "raw" / "predictions.parquet").query("split == 'val'")
    cal = fit_calibration(val["pred_months"], val["sd_months"], val["true_months"])
    fresh = ev.evaluate(params, paths, model_dir, tmp_path / "fresh", calibration=cal)
    n_calls = len(calls)
    reused = ev.evaluate(params, paths, model_dir, tmp_path / "reused", calibration=cal,
                         reuse=tmp_path / "raw")  # fmt: skip
    assert len(calls) == n_calls  # nothing predicted
    assert reused["predictions_from"] == str(tmp_path / "raw")
    for key in ("mae", "rmse", "bias", "coverage", "mae_predict_train_mean"):
        assert reused[key] == pytest.approx(fresh[key])
    assert reused["calibrated"] == fresh["calibrated"]
    a = pd.read_parquet(tmp_path / "fresh" / "predictions.parquet")
    b = pd.read_parquet(tmp_path / "reused" / "predictions.parquet")
    pd.testing.assert_frame_equal(a, b)
    other = load_params(overrides={"aggregator": {"tta_shift": 0.0}})
    with pytest.raises(ValueError, match="tta_shift"):
        ev.evaluate(other, paths, model_dir, tmp_path / "x", calibration=cal,
                    reuse=tmp_path / "raw")  # fmt: skip
    (model_dir / "model.pt").write_bytes(b"other weights")
    with pytest.raises(ValueError, match="model weights"):
        ev.evaluate(params, paths, model_dir, tmp_path / "x", reuse=tmp_path / "raw")
