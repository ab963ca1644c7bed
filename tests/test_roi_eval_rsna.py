"""`boneage check-regions --annotations` on real annotated RSNA radiographs with the
committed reference model: the summary it writes agrees with its own per-image rows, and
those rows with the boxes and annotations they come from."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "rsna299"
N = 24


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "boneage.cli", *args], cwd=cwd, env=env,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
def test_check_regions_on_annotated_rsna_images(tmp_path, rsna299, data_dir):
    ann = data_dir / "rsna-roi-annotations"
    boxes = pd.read_csv(ann / "ossification-roi-boxes.csv", dtype={"id": str})
    ids = sorted(set(boxes["id"]), key=int)[:N]
    labels = pd.read_csv(rsna299 / "boneage-training-dataset.csv", dtype={"id": str})
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for i in ids:  # copies (24 small JPEGs): links out of the cohort would be refused
        shutil.copy(rsna299 / "boneage-training-dataset" / f"{i}.jpg", cohort / f"{i}.jpg")
    labels[labels["id"].isin(ids)].to_csv(cohort / "labels.csv", index=False)
    params = MODEL / "params.yaml"
    _cli("ingest", "--cohort", str(cohort), "--labels", str(cohort / "labels.csv"), "--out",
         "ingest", "--params", str(params), "--no-progress", cwd=tmp_path)  # fmt: skip
    for s in ("hand", "r1", "r2"):
        _cli("attend", "--stage", s, "--ingest", "ingest", "--attend-root", "attend", "--model",
             str(MODEL / f"localizer_{s}"), "--reports", f"reports/{s}", "--params", str(params),
             "--no-progress", cwd=tmp_path)  # fmt: skip
    out = _cli("check-regions", "--annotations", str(ann), "--attend-root", "attend",
               "--ingest", "ingest", "--out", "loc", cwd=tmp_path)  # fmt: skip
    assert f"({N} annotated images)" in out
    rows = pd.read_csv(tmp_path / "loc" / "roi_eval.csv", dtype={"id": str}).set_index("id")
    summary = json.loads((tmp_path / "loc" / "summary.json").read_text())
    assert (tmp_path / "loc" / "worst.png").stat().st_size > 10_000
    assert summary["n_images"] == len(rows) == N
    # the summary is its per-image rows, aggregated
    for col in ("r1_holds_carpal_centre", "r2_holds_3_mcp", "hand_holds_all_boxes"):
        assert summary[col]["fraction"] == pytest.approx(rows[col].astype(bool).mean())
        assert summary[col]["n"] == N
    assert summary["r1_carpal_coverage_median"] == pytest.approx(
        rows["r1_carpal_coverage"].median()
    )
    assert summary["r1_area_ratio_median"] == pytest.approx(rows["r1_area_ratio"].median())
    goals = summary["goals"]
    assert goals["r1_holds_carpal_centre"]["met"] == (summary["r1_holds_carpal_centre"]["fraction"]
                                                      >= 0.9)  # fmt: skip
    # each row, recomputed from the run's R1 box and the annotated carpal box
    r1 = pd.read_parquet(tmp_path / "attend" / "r1" / "regions.parquet").set_index("id")
    wrist = boxes[boxes["region"] == "Wrist"].set_index("id")
    for i in ids:
        r, w = r1.loc[i], wrist.loc[i]
        cx = (w["x0"] + w["x1"]) / 2 * r["orig_width"]
        cy = (w["y0"] + w["y1"]) / 2 * r["orig_height"]
        inside = r["x0"] <= cx <= r["x1"] and r["y0"] <= cy <= r["y1"]
        assert bool(rows.loc[i, "r1_holds_carpal_centre"]) == inside, i
    # tune-attend: the params' own setting, re-made from cached CAMs, is exactly the run's R2
    grid = tmp_path / "grid.yaml"
    grid.write_text("margin: [0.0, 0.3]\n")
    _cli("tune-attend", "--stage", "r2", "--annotations", str(ann), "--grid", str(grid),
         "--model", str(MODEL / "localizer_r2"), "--ingest", "ingest", "--attend-root",
         "attend", "--out", "tune", "--params", str(params), cwd=tmp_path)  # fmt: skip
    table = pd.read_csv(tmp_path / "tune" / "tune_r2.csv")
    assert len(table) == 3 and table["current"].tolist() == [True, False, False]
    cur = table.iloc[0]
    assert cur["r2_holds_3_mcp"] == pytest.approx(summary["r2_holds_3_mcp"]["fraction"])
    assert cur["r2_pip_held_mean"] == pytest.approx(summary["r2_pip_held_mean"])
    # a wider margin can only hold as many joints or more, in a larger box
    wide, tight = table[table["margin"] == 0.3].iloc[0], table[table["margin"] == 0.0].iloc[0]
    assert wide["r2_holds_3_mcp"] >= tight["r2_holds_3_mcp"]
    assert wide["box_area_median"] > tight["box_area_median"]
