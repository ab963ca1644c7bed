"""The hand → r1 → r2 localization chain end to end on a small synthetic demo cohort.

Checks that every stage trains, attends over every image of every split, writes
regions/crop stores/E images/overlays with boxes in original coordinates, and that the
boxes are measured against the demo's ground truth (the numbers are printed; this run's
budgets are tiny — the acceptance thresholds are asserted on the committed params by
tests/test_demo_acceptance.py).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from boneage.attend import attend
from boneage.config import load_params
from boneage.demo import make_demo_cohort
from boneage.ingest import ingest
from boneage.localization_eval import evaluate_localization
from boneage.localizer import STAGES, StagePaths, train_localizer
from boneage.store import ImageStore
from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_chain_on_demo_cohort(tmp_path):
    params = load_params(
        REPO_ROOT / "params.yaml",
        {
            "ingest": {"store_long_side": 256, "workers": 1},
            "localizer": {
                "train": {"epochs": 2, "batch_size": 16, "max_train_images": 48},
                "hand": {"img_size": 96, "epochs": 2},
                "r1": {"img_size": 64, "epochs": 2},
                "r2": {"img_size": 64, "epochs": 2},
            },
            "attend": {
                "overlays_per_split": 2,
                "hand": {"cam_size": 128, "crop_size": 128},
                "r1": {"cam_size": 96, "crop_size": 64},
                "r2": {"cam_size": 96, "crop_size": 64},
            },
        },
    )
    demo = tmp_path / "demo"
    make_demo_cohort(demo, n=70, seed=1, size=256)
    ingest(demo / "images", demo / "labels.csv", tmp_path / "ingest", params.ingest,
           progress=False)  # fmt: skip
    paths = StagePaths(tmp_path / "ingest", tmp_path / "attend")
    manifest = pd.read_parquet(paths.manifest)
    for stage in STAGES:
        model_dir = tmp_path / "models" / stage
        metrics = train_localizer(stage, params, paths, model_dir, progress=False)
        assert np.isfinite(metrics["val_mae"]) and metrics["n_train"] == 48
        cfg = json.loads((model_dir / "config.json").read_text())
        assert cfg["stage"] == stage and (model_dir / "model.pt").is_file()
        summary = attend(stage, params, paths, model_dir, paths.attend_dir(stage),
                         tmp_path / "reports" / stage, progress=False)  # fmt: skip
        assert summary["n"] == len(manifest)
        regions = pd.read_parquet(paths.attend_dir(stage) / "regions.parquet")
        # every image of every split has a row; boxes are inside the original image
        assert list(regions["id"]) == list(manifest["id"])
        assert set(regions["split"]) == {"train", "val", "test"}
        ok = regions[regions["status"] != "error"]
        assert len(ok) >= 0.9 * len(regions)
        assert (ok["x0"] >= 0).all() and (ok["x1"] <= ok["orig_width"]).all()
        assert (ok["y0"] >= 0).all() and (ok["y1"] <= ok["orig_height"]).all()
        assert ((ok["x1"] > ok["x0"]) & (ok["y1"] > ok["y0"])).all()
        crops = ImageStore(paths.attend_dir(stage) / "crops")
        assert set(crops.ids) == set(ok["id"])
        assert (
            crops.get(ok["id"].iloc[0]).pixels.shape == (params.attend.stage(stage).crop_size,) * 2
        )
        assert list((tmp_path / "reports" / stage / "overlays").glob("*.png"))
        assert any((paths.attend_dir(stage) / "png").rglob("*.png"))
    erased = ImageStore(paths.attend_dir("r1") / "erased")
    assert len(erased) >= 0.9 * len(manifest)
    result = evaluate_localization(paths.attend_root, demo / "boxes.csv", ("train", "val", "test"))
    print("localization vs ground truth:", json.dumps(result, indent=1))
    for stage in STAGES:
        assert result[stage]["n"] == len(manifest)
