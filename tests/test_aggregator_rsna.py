"""The whole chain on a CPU-sized subset of the real RSNA 299-px training set: ingest →
hand/r1/r2 localizers → attend → aggregator (H+R1+R2 + sex) → evaluate. The aggregator's
test MAE must be at least 30 % below predicting the training mean (issue acceptance)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from boneage.aggregator import train_aggregator
from boneage.attend import attend
from boneage.config import load_params
from boneage.evaluate import evaluate
from boneage.ingest import ingest
from boneage.localizer import STAGES, StagePaths, train_localizer
from tests.conftest import REPO_ROOT

N_IMAGES = 900


@pytest.mark.slow
def test_aggregator_on_real_rsna_subset_beats_the_mean_by_30_percent(tmp_path, rsna299):
    labels = pd.read_csv(rsna299 / "boneage-training-dataset.csv").head(N_IMAGES)
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for i in labels["id"]:  # links, not copies: the real images stay in ../shared
        (cohort / f"{i}.jpg").symlink_to(rsna299 / "boneage-training-dataset" / f"{i}.jpg")
    # (links resolve outside the cohort dir: accepted with ingest.allow_external_links)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    params = load_params(
        REPO_ROOT / "params.yaml",
        {
            "ingest": {"allow_external_links": True},
            "localizer": {
                "train": {"epochs": 2, "max_train_images": 256, "batch_size": 32},
                "hand": {"img_size": 96, "epochs": 2},
                "r1": {"img_size": 96, "epochs": 2},
                "r2": {"img_size": 96, "epochs": 2},
            },
            "attend": {
                "overlays_per_split": 1,
                "png_store": False,
                "hand": {"cam_size": 128, "crop_size": 192},
                "r1": {"cam_size": 128, "crop_size": 128},
                "r2": {"cam_size": 128, "crop_size": 128},
            },
            "aggregator": {
                "regions": ["H", "R1", "R2"],
                "img_size": 112,
                "train": {"epochs": 6, "patience": 6, "batch_size": 32},
            },
        },
    )
    result = ingest(cohort, tmp_path / "labels.csv", tmp_path / "ingest", params.ingest,
                    progress=False)  # fmt: skip
    paths = StagePaths(tmp_path / "ingest", tmp_path / "attend")
    manifest = pd.read_parquet(paths.manifest)
    assert len(manifest) == N_IMAGES, result
    for stage in STAGES:
        train_localizer(stage, params, paths, tmp_path / "models" / stage, progress=False)
        attend(stage, params, paths, tmp_path / "models" / stage, paths.attend_dir(stage),
               tmp_path / "reports" / stage, progress=False)  # fmt: skip
    agg = train_aggregator(params, paths, tmp_path / "models" / "aggregator", progress=False)
    metrics = evaluate(params, paths, tmp_path / "models" / "aggregator", tmp_path / "eval")
    print("aggregator:", json.dumps(agg, indent=1))
    print("evaluate:", json.dumps(metrics, indent=1))
    preds = pd.read_parquet(tmp_path / "eval" / "predictions.parquet")
    assert len(preds) == N_IMAGES  # every labelled image: a prediction or status=excluded
    assert metrics["n"] + metrics["n_test_excluded"] == (manifest["split"] == "test").sum()
    assert metrics["mae"] <= 0.7 * metrics["mae_predict_train_mean"], metrics
    assert 0.5 <= metrics["coverage"] <= 1.0
