"""Tiny, fast model bundles for scoring/registry tests (random ResNet-18 localizers; an
aggregator whose head is set to predict a chosen age, so that "better" and "worse" models
are known exactly), and small real-data cohorts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import torch

from boneage.bundle import build_bundle
from boneage.config import ModelConfig, load_params
from boneage.models import AgeNet
from boneage.training import save_model

REPO = Path(__file__).resolve().parents[1]
TINY = ModelConfig(backbone="resnet18", pretrained="none", output_stride=32, k=240)


def tiny_params(**overrides):
    small = {
        "ingest": {"store_long_side": 256, "workers": 1},
        "attend": {"batch_size": 8, "device": "cpu",
                   "hand": {"cam_size": 64, "crop_size": 96},
                   "r1": {"cam_size": 64, "crop_size": 64},
                   "r2": {"cam_size": 64, "crop_size": 64}},
        "score": {"shard_size": 3},
    }  # fmt: skip
    for k, v in overrides.items():
        small.setdefault(k, {}).update(v)
    return load_params(REPO / "params.yaml", small)


def _peaked(model: AgeNet, age: int) -> AgeNet:
    """The head ignores the image: a distribution peaked at `age` months (SD ~2)."""
    with torch.no_grad():
        model.head.weight.zero_()
        k = torch.arange(model.cfg.k, dtype=torch.float32)
        model.head.bias.copy_(-((k - age) ** 2) / (2 * 2.0**2))
    return model


def make_bundle(root: Path, age: int = 120, name: str = "boneage", params=None) -> Path:
    """A complete bundle at root/bundle-AGE whose aggregator predicts `age` months."""
    torch.manual_seed(0)
    params = params or tiny_params()
    dirs = {}
    for stage in ("hand", "r1", "r2"):
        d = root / f"models-{age}" / f"localizer_{stage}"
        save_model(AgeNet(TINY), d, {"stage": stage, "img_size": 48, "cam_window": None,
                                     "kind": "localizer"})  # fmt: skip
        dirs[f"localizer_{stage}"] = d
    agg_cfg = TINY.model_copy(update={"sex_dim": 4})
    for comp, regions in (("aggregator", ["H", "R1", "R2"]), ("carpal", ["R1"])):
        d = root / f"models-{age}" / comp
        m = _peaked(AgeNet(agg_cfg, in_channels=len(regions)), age if comp == "aggregator" else 100)
        save_model(m, d, {"kind": "aggregator", "regions": regions, "img_size": 48,
                          "metrics": {"train_age_range": [1.0, 228.0]}})  # fmt: skip
        dirs[comp] = d
    out = root / f"bundle-{age}"
    build_bundle(params, dirs, out, name)
    return out


def rsna_cohort(rsna299: Path, dest: Path, n: int, start: int = 0) -> Path:
    """dest/ with n RSNA images (copied into a temp dir, never the repo) + labels.csv."""
    labels = pd.read_csv(rsna299 / "boneage-training-dataset.csv").iloc[start : start + n]
    dest.mkdir(parents=True, exist_ok=True)
    for i in labels["id"]:
        shutil.copy(rsna299 / "boneage-training-dataset" / f"{i}.jpg", dest / f"{i}.jpg")
    labels.to_csv(dest / "labels.csv", index=False)
    return dest
