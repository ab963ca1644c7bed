"""Registry and promotion gate: register → challenger; promote only a better model
(or the first); load by alias and score."""

from __future__ import annotations

import pandas as pd
import pytest

from boneage.registry import decide, promote, register_bundle
from boneage.score_cohort import score_cohort
from tests.bundle_factory import make_bundle, rsna_cohort, tiny_params


def test_gate_decisions():
    assert decide(30.0, None, 0.5) == (True, "no champion yet")
    ok, why = decide(20.0, 21.0, 0.5)
    assert ok and "improved by 1.00" in why
    ok, why = decide(20.8, 21.0, 0.5)  # better, but by less than the margin
    assert not ok and "below the margin" in why
    assert not decide(25.0, 21.0, 0.5)[0]  # worse: never promoted
    assert not decide(float("nan"), 21.0, 0.5)[0]
    ok, why = decide(10.0, 21.0, 0.5, challenger_errors=2, champion_errors=0)
    assert not ok and "failed on 2" in why


def test_register_promote_gate_and_score_by_alias(rsna299, tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cohort = rsna_cohort(rsna299, tmp_path / "eval", 4)  # bone ages 180, 12, 94, 120
    params = tiny_params(registry={"eval_cohort": str(cohort),
                                   "eval_labels": str(cohort / "labels.csv"),
                                   "eval_split": "all", "margin_months": 0.5})  # fmt: skip
    # constant predictors: MAE 54.0 (131 months), 69.0 (161), 48.5 (101)
    first, worse, better = (make_bundle(tmp_path, a, params=params) for a in (131, 161, 101))

    v1 = register_bundle(first, params, uri)
    assert v1["version"] == "1" and v1["alias"] == "challenger"
    r = promote(params, uri)
    assert r["promoted"] and r["reason"] == "no champion yet"
    assert r["challenger_mae"] == pytest.approx(54.0, abs=0.1)

    register_bundle(worse, params, uri)
    r = promote(params, uri)
    assert not r["promoted"] and r["champion_version"] == "1"
    assert r["challenger_mae"] == pytest.approx(69.0, abs=0.1)
    assert r["champion_mae"] == pytest.approx(54.0, abs=0.1)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("boneage", "champion").version) == "1"
    tags = client.get_model_version("boneage", "2").tags
    assert tags["promotion_decision"] == "rejected"
    assert tags["promotion_eval_set"].startswith(str(cohort / "labels.csv"))
    assert float(tags["promotion_challenger_mae"]) == pytest.approx(69.0, abs=0.1)

    register_bundle(better, params, uri)
    r = promote(params, uri)
    assert r["promoted"] and r["champion_version"] == "1"
    mv = client.get_model_version_by_alias("boneage", "champion")
    assert str(mv.version) == "3" and mv.tags["promotion_decision"] == "promoted"
    for key in ("git_commit", "params_sha256", "regions", "sds_reference"):
        assert mv.tags[key]
    # a pyfunc with a signature and an input example
    info = mlflow.models.get_model_info("models:/boneage/3")
    assert [c.name for c in info.signature.inputs.inputs][:1] == ["path"]
    assert info.saved_input_example_info is not None

    s = score_cohort("models:/boneage@champion", cohort, tmp_path / "scored", cohort / "labels.csv")
    df = pd.read_parquet(tmp_path / "scored" / "predictions.parquet")
    assert s["model_version"] == "3" and set(df["model_version"]) == {"3"}
    assert (df["boneage_months"] - 101).abs().max() < 0.5
    # the pyfunc's own predict on a DataFrame of paths gives the same ages
    model = mlflow.pyfunc.load_model("models:/boneage@champion")
    paths = sorted(str(p) for p in cohort.glob("*.jpg"))
    out = model.predict(pd.DataFrame({"path": paths, "sex": ["F"] * len(paths)}))
    assert len(out) == len(paths) and (out["status"] == "ok").all()
    assert (out["boneage_months"] - 101).abs().max() < 0.5
