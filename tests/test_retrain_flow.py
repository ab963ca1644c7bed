"""flows/retrain.py end to end on a small synthetic demo cohort inside
prefect_test_harness: it leaves a champion; a second run with nothing changed trains
nothing (every step Cached); a changed params section re-runs only what depends on it."""

from __future__ import annotations

import pytest

SMALL = {
    "demo": {"n": 60, "size": 256},
    "ingest": {"store_long_side": 256},
    "localizer": {"train": {"epochs": 1, "batch_size": 16},
                  "hand": {"img_size": 64, "epochs": 1},
                  "r1": {"img_size": 64, "epochs": 1},
                  "r2": {"img_size": 64, "epochs": 1}},
    "attend": {"device": "cpu", "hand": {"cam_size": 96, "crop_size": 128},
               "r1": {"cam_size": 96, "crop_size": 64},
               "r2": {"cam_size": 96, "crop_size": 64}},
    "aggregator": {"img_size": 64, "train": {"epochs": 1, "batch_size": 16}},
    "carpal": {"img_size": 48, "epochs": 1},
}  # fmt: skip
TRAINING = ("localizer_hand", "localizer_r1", "localizer_r2", "aggregator", "carpal")


@pytest.mark.slow
def test_retrain_flow_promotes_then_reruns_nothing(prefect_harness, tmp_path, monkeypatch):
    import mlflow

    from flows.retrain import retrain_flow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    wd = str(tmp_path / "work")
    first = retrain_flow(wd, overrides=SMALL)
    assert first["promote"]["promoted"] and first["promote"]["reason"] == "no champion yet"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("boneage", "champion").version) == "1"
    mtimes = {k: (tmp_path / "work/models" / k / "model.pt").stat().st_mtime_ns for k in TRAINING}

    second = retrain_flow(wd, overrides=SMALL)  # nothing changed
    for k in TRAINING + ("ingest", "evaluate", "bundle", "register", "promote"):
        assert second[k]["ran_at"] == first[k]["ran_at"], f"{k} ran again"
    for k in TRAINING:
        assert (tmp_path / "work/models" / k / "model.pt").stat().st_mtime_ns == mtimes[k]
    assert len(client.search_model_versions("name='boneage'")) == 1  # no new version

    # a changed carpal budget re-runs the carpal head and what depends on it (its
    # calibration, hence evaluate, bundle, register, promote), nothing else
    changed = {**SMALL, "carpal": {"img_size": 48, "epochs": 2}}
    third = retrain_flow(wd, overrides=changed)
    for k in ("ingest", "localizer_hand", "localizer_r1", "localizer_r2", "aggregator"):
        assert third[k]["ran_at"] == first[k]["ran_at"], f"{k} should be cached"
    for k in ("carpal", "calibrate", "evaluate", "bundle"):
        assert third[k]["ran_at"] > first[k]["ran_at"], f"{k} should run again"
    assert third["register"]["version"] == "2"
    assert third["promote"]["challenger_version"] == "2"
