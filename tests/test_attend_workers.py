"""attend.workers: the per-image work after the CAM pass in a process pool gives exactly
what the in-process loop gives (regions, crop store, r1's erased store), in order."""

from __future__ import annotations

import pandas as pd

from boneage import attend as attend_mod
from boneage.attend import attend
from boneage.config import load_params
from boneage.demo import make_demo_cohort
from boneage.ingest import ingest
from boneage.localizer import StagePaths, train_localizer
from tests.conftest import REPO_ROOT


def _tables(store_dir) -> list[pd.DataFrame]:
    return [pd.read_parquet(f) for f in sorted(store_dir.glob("*.parquet"))]


def test_attend_in_a_process_pool_equals_attend_in_process(tmp_path, monkeypatch):
    monkeypatch.setattr(attend_mod, "POOL_MIN_IMAGES", 1)
    small = {"img_size": 32, "epochs": 1}
    base = {
        "ingest": {"store_long_side": 128, "workers": 1},
        "localizer": {
            "model": {"pretrained": "none"},
            "train": {"epochs": 1, "batch_size": 8, "max_train_images": 8, "max_val_images": 8},
            "hand": small, "r1": small, "r2": small,
        },
        "attend": {"overlays_per_split": 1, "device": "cpu",
                   "hand": {"cam_size": 64, "crop_size": 64},
                   "r1": {"cam_size": 48, "crop_size": 32, "erase": "noise"}},
    }  # fmt: skip
    demo = tmp_path / "demo"
    make_demo_cohort(demo, n=24, seed=3, size=128)
    params = load_params(REPO_ROOT / "params.yaml", base)
    ingest(demo / "images", demo / "labels.csv", tmp_path / "ingest", params.ingest,
           progress=False)  # fmt: skip
    serial = StagePaths(tmp_path / "ingest", tmp_path / "serial")
    pooled = StagePaths(tmp_path / "ingest", tmp_path / "pooled")
    for stage in ("hand", "r1"):
        model = tmp_path / "models" / stage
        train_localizer(stage, params, serial, model, progress=False)  # trained on serial's
        for paths, workers in ((serial, 1), (pooled, 2)):
            over = {**base, "attend": {**base["attend"], "workers": workers}}
            p = load_params(REPO_ROOT / "params.yaml", over)
            attend(stage, p, paths, model, paths.attend_dir(stage), tmp_path / f"rep{workers}",
                   progress=False)  # fmt: skip
        a = pd.read_parquet(serial.attend_dir(stage) / "regions.parquet")
        b = pd.read_parquet(pooled.attend_dir(stage) / "regions.parquet")
        pd.testing.assert_frame_equal(a, b)
        assert (a["status"] != "error").all()
        subs = ("crops", "erased") if stage == "r1" else ("crops",)
        for sub in subs:
            ta, tb = (
                _tables(serial.attend_dir(stage) / sub),
                _tables(pooled.attend_dir(stage) / sub),
            )
            assert len(ta) == len(tb) >= 1
            for x, y in zip(ta, tb, strict=True):
                if sub == "erased":  # erase: noise draws per image in the pool: same ids/order
                    assert list(x["id"]) == list(y["id"])
                else:
                    pd.testing.assert_frame_equal(x, y)


def test_pool_only_for_several_workers_and_enough_images(monkeypatch):
    monkeypatch.setattr(attend_mod.os, "cpu_count", lambda: 16)
    n = attend_mod.POOL_MIN_IMAGES
    assert attend_mod.pool_size(1, 10 * n) == 0  # the default: in-process
    assert attend_mod.pool_size(2, n - 1) == 0  # scoring's shards of 32 stay in-process
    assert attend_mod.pool_size(2, n) == 2
    assert attend_mod.pool_size(0, 10 * n) == 16  # 0: one per core
