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


def test_tta_applies_to_val_and_test_and_the_training_split_is_one_view(tmp_path, monkeypatch):
    ages = {"train": [24.0, 60.0, 120.0], "val": [36.0, 100.0], "test": [48.0, 150.0, 200.0]}
    data = {s: _Split(ids=[f"{s}{i}" for i in range(len(a))], age=torch.tensor(a))
            for s, a in ages.items()}  # fmt: skip
    manifest = pd.DataFrame({"id": [i for d in data.values() for i in d.ids],
                             "sex": "F", "boneage_months": 0.0})  # fmt: skip
    calls = []

    def fake_predict(model, d, device, tta_shift=0.0):
        split = d.ids[0].rstrip("0123456789")
        calls.append((split, tta_shift))
        return _peaked(d.age + 6.0)  # every estimate 6 months high

    monkeypatch.setattr(
        ev,
        "load_model",
        lambda *a: (None, {"kind": "aggregator", "regions": ["O"], "img_size": 32}),
    )
    monkeypatch.setattr(ev, "read_manifest", lambda p: manifest)
    monkeypatch.setattr(ev, "load_region_data", lambda *a: (data, pd.DataFrame(
        columns=["id", "reason"])))  # fmt: skip
    monkeypatch.setattr(ev, "predict", fake_predict)
    params = load_params(overrides={"aggregator": {"tta_shift": 0.02}})
    m = ev.evaluate(params, StagePaths(tmp_path, tmp_path), tmp_path, tmp_path / "out")
    assert calls == [("train", 0.0), ("val", 0.02), ("test", 0.02)]
    assert m["tta_shift"] == 0.02 and m["n"] == 3
    assert m["mae"] == pytest.approx(6.0, abs=0.05)
    preds = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert sorted(preds["split"].value_counts().items()) == [("test", 3), ("train", 3), ("val", 2)]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["tta_shift"] == 0.02
