"""Deterministic, stable, stratified-in-expectation split."""

from __future__ import annotations

import pandas as pd
import pytest

from boneage.config import SplitConfig
from boneage.split import age_band, assign_split, split_balance

CFG = SplitConfig()


def test_deterministic_and_independent_of_other_rows():
    ids = [f"id{i}" for i in range(2000)]
    a = {i: assign_split(i, CFG) for i in ids}
    # adding rows (and computing in another order) never moves an existing id
    more = ids[::-1] + [f"new{i}" for i in range(500)]
    b = {i: assign_split(i, CFG) for i in more}
    assert all(a[i] == b[i] for i in ids)


def test_seed_changes_the_split():
    ids = [str(i) for i in range(500)]
    other = SplitConfig(seed=7)
    assert sum(assign_split(i, CFG) != assign_split(i, other) for i in ids) > 50


def test_fractions_are_respected():
    ids = [str(i) for i in range(20000)]
    counts = pd.Series([assign_split(i, CFG) for i in ids]).value_counts(normalize=True)
    assert counts["train"] == pytest.approx(0.8, abs=0.01)
    assert counts["val"] == pytest.approx(0.1, abs=0.01)
    assert counts["test"] == pytest.approx(0.1, abs=0.01)


def test_fractions_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConfig(train=0.8, val=0.1, test=0.2)


def test_age_bands():
    assert age_band(0) == "0-5y"
    assert age_band(59.9) == "0-5y"
    assert age_band(60) == "5-10y"
    assert age_band(239) == "15-20y"
    assert age_band(240) == "15-20y"
    assert age_band(None) == "unknown"


def test_real_rsna_split_is_balanced_in_every_stratum(rsna299):
    """All 12,611 real ids: each age band x sex stratum gets ~80/10/10."""
    df = pd.read_csv(rsna299 / "boneage-training-dataset.csv")
    m = pd.DataFrame(
        {
            "id": df["id"].astype(str),
            "boneage_months": df["boneage"].astype(float),
            "sex": df["male"].map({True: "M", False: "F"}),
        }
    )
    m["split"] = [assign_split(i, CFG) for i in m["id"]]
    bal = split_balance(m)
    assert (bal[["train", "val", "test"]] > 0).all().all()
    big = bal[bal[["train", "val", "test"]].sum(axis=1) >= 1000]
    assert len(big) >= 4
    assert (abs(big["train_share"] - 0.8) < 0.03).all()
    assert (abs(big["test_share"] - 0.1) < 0.025).all()
