"""flows/score_cohort.py: shards mapped over Ray workers give exactly `boneage score`'s rows."""

from __future__ import annotations

import pandas as pd
import pytest

from boneage.score_cohort import score_cohort
from tests.bundle_factory import make_bundle, rsna_cohort


@pytest.mark.slow
def test_score_flow_on_ray_matches_boneage_score(prefect_harness, rsna299, tmp_path):
    from flows.score_cohort import run

    bundle = make_bundle(tmp_path, age=120)
    cohort = rsna_cohort(rsna299, tmp_path / "c", 6)
    (cohort / "broken.jpg").write_bytes(b"no image")  # not in the CSV: a rejected row
    ref = score_cohort(str(bundle), cohort, tmp_path / "ref", cohort / "labels.csv", shard_size=2)
    s = run(cohort, tmp_path / "flow", str(bundle), cohort / "labels.csv", runner="ray",
            workers=2, shard_size=2)  # fmt: skip
    a = pd.read_parquet(tmp_path / "flow" / "predictions.parquet")
    b = pd.read_parquet(tmp_path / "ref" / "predictions.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert s["n"] == ref["n"] == 7 and s["shards"] == 3 and s["shards_scored_now"] == 3
    assert sorted(p.name for p in (tmp_path / "flow" / "overlays").iterdir()) == sorted(
        p.name for p in (tmp_path / "ref" / "overlays").iterdir())  # fmt: skip
    assert (tmp_path / "flow" / "report.html").is_file()
    # resumable like `boneage score`: a rerun (local thread runner) scores no shard again
    again = run(cohort, tmp_path / "flow", str(bundle), cohort / "labels.csv", runner="local",
                workers=1, shard_size=2)  # fmt: skip
    assert again["shards_scored_now"] == 0 and again["shards_reused"] == 3
