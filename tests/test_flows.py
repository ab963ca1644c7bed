"""The Prefect data flow calls the same library functions as the DVC stages."""

from __future__ import annotations

import pytest

from tests.corpus import save, textured


@pytest.mark.slow
def test_data_flow_ingests_and_validates(prefect_harness, tmp_path):
    from flows.pipeline import data_flow

    d = tmp_path / "c"
    rows = ["id,boneage,male"]
    for i in range(30):
        save(d / f"x{i}.png", textured(seed=i))
        rows.append(f"x{i},{i * 7},{i % 2}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    params = tmp_path / "params.yaml"
    params.write_text("ingest:\n  workers: 1\n  store_long_side: 64\n")
    out = tmp_path / "out"
    result = data_flow(d, tmp_path / "labels.csv", out, params)
    assert result["ingest"]["n_ingested"] == 30
    assert result["validation"]["rows"] == 30
    assert (out / "validation" / "validation.json").is_file()
    assert (out / "store" / "store.json").is_file()
