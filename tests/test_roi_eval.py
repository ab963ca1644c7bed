"""Localization against the manual RSNA ROI annotations (boneage.roi_eval)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from boneage.imageio import encode_png
from boneage.roi_eval import KEYPOINTS, check_against_annotations, score_regions, summarize
from boneage.store import StoreWriter

BOX_COLS = ["id", "region", "x0", "y0", "x1", "y1", "orig_width", "orig_height"]


def _annotations(root, kp_ids=("1",)):
    root.mkdir(parents=True, exist_ok=True)
    rows = [
        # image 1: carpal box at (0.4..0.6, 0.6..0.7), centre (0.5, 0.65)
        ("1", "Wrist", 0.4, 0.6, 0.6, 0.7), ("1", "Radius", 0.45, 0.75, 0.55, 0.8),
        *[("1", "MCP", 0.2 + 0.15 * k, 0.4, 0.25 + 0.15 * k, 0.45) for k in range(5)],
        *[("1", "PIP", 0.2 + 0.15 * k, 0.25, 0.25 + 0.15 * k, 0.3) for k in range(5)],
        # image 2: same layout shifted right by 0.1
        ("2", "Wrist", 0.5, 0.6, 0.7, 0.7),
        *[("2", "MCP", 0.3 + 0.15 * k, 0.4, 0.35 + 0.15 * k, 0.45) for k in range(5)],
    ]  # fmt: skip
    pd.DataFrame([(*r, 299, 299) for r in rows], columns=BOX_COLS).to_csv(
        root / "ossification-roi-boxes.csv", index=False)  # fmt: skip
    kp = {"id": list(kp_ids), "orig_width": 299, "orig_height": 299, "appears_as": "L",
          "hand_x0": 0.1, "hand_y0": 0.1, "hand_x1": 0.9, "hand_y1": 0.9}  # fmt: skip
    for i, name in enumerate(KEYPOINTS):
        kp[f"{name}_x"], kp[f"{name}_y"] = 0.2 + 0.6 * i / 20, 0.2 + 0.5 * (i % 4) / 3
    pd.DataFrame(kp).to_csv(root / "hand-box-keypoints.csv", index=False)
    return root


def _regions(attend_root, stage, boxes, status=None):
    """boxes: {id: (x0, y0, x1, y1) normalised}; image size 299 x 299."""
    rows = []
    for i, b in boxes.items():
        st = (status or {}).get(i, "ok")
        px = [v * 299 for v in b] if st != "error" else [np.nan] * 4
        rows.append({"id": i, "split": "train", "stage": stage, "status": st, "x0": px[0],
                     "y0": px[1], "x1": px[2], "y1": px[3], "orig_width": 299.0,
                     "orig_height": 299.0})  # fmt: skip
    (attend_root / stage).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(attend_root / stage / "regions.parquet")


def _store(path, ids):
    with StoreWriter(path, shard_size=8) as w:
        for i in ids:
            img = np.full((299, 299), 40, np.uint8)
            img[60:240, 60:240] = 160
            w.add({"id": i, "png": encode_png(img), "height": 299, "width": 299,
                   "orig_height": 299, "orig_width": 299, "scale": 1.0,
                   "sha256": "0" * 64})  # fmt: skip


def _run(tmp_path):
    ann = _annotations(tmp_path / "ann")
    att = tmp_path / "attend"
    _regions(att, "hand", {"1": (0.05, 0.05, 0.95, 0.95), "2": (0.35, 0.0, 1.0, 1.0)})
    # image 1: R1 holds the carpal centre, covers half of it (x 0.5..0.6 of 0.4..0.6)
    # image 2: R1 misses the carpus entirely
    _regions(att, "r1", {"1": (0.5, 0.55, 0.7, 0.75), "2": (0.0, 0.0, 0.2, 0.2)})
    # image 1: R2 spans the first three MCP centres (x 0.225, 0.375, 0.525); image 2 fails
    _regions(att, "r2", {"1": (0.1, 0.2, 0.56, 0.5), "2": (0, 0, 1, 1)}, {"2": "error"})
    return ann, att


def test_per_image_figures_on_known_boxes(tmp_path):
    ann, att = _run(tmp_path)
    df = score_regions(att, ann).set_index("id")
    one, two = df.loc["1"], df.loc["2"]
    assert bool(one["r1_holds_carpal_centre"]) and not bool(two["r1_holds_carpal_centre"])
    assert one["r1_carpal_coverage"] == pytest.approx(0.5)  # 0.1 x 0.1 of 0.2 x 0.1
    assert one["r1_area_ratio"] == pytest.approx(0.04 / 0.02)
    assert two["r1_carpal_coverage"] == 0.0
    assert one["r2_mcp_held"] == 3 and one["r2_mcp_n"] == 5 and bool(one["r2_holds_3_mcp"])
    assert one["r2_pip_held"] == 3
    assert two["r2_mcp_held"] == 0 and not bool(two["r2_holds_3_mcp"])  # failed stage: a miss
    assert bool(one["hand_holds_all_boxes"])
    assert not bool(two["hand_holds_all_boxes"])  # the hand box starts right of the first MCP
    assert bool(one["hand_holds_all_keypoints"]) and one["hand_keypoints_held"] == 21
    s = summarize(df.reset_index())
    assert s["r1_holds_carpal_centre"] == {"fraction": 0.5, "n": 2}
    assert s["r1_carpal_coverage_median"] == pytest.approx(0.25)
    assert s["r2_holds_3_mcp"]["fraction"] == 0.5
    assert s["goals"]["r1_holds_carpal_centre"]["met"] is False
    assert s["goals"]["r1_area_ratio_median"]["met"] is True


def test_outputs_and_the_worst_montage(tmp_path):
    ann, att = _run(tmp_path)
    _store(tmp_path / "store", ["1", "2"])
    s = check_against_annotations(att, ann, tmp_path / "store", tmp_path / "out")
    assert s["skipped"] is False and s["n_images"] == 2
    assert s["worst_ids"][0] == "2"  # R1 off the carpus and no R2: the worst
    rows = pd.read_csv(tmp_path / "out" / "roi_eval.csv", dtype={"id": str})
    assert len(rows) == 2
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_images"] == 2
    assert (tmp_path / "out" / "worst.png").stat().st_size > 1000


def test_a_cohort_without_annotated_images_is_skipped_with_a_note(tmp_path):
    ann = _annotations(tmp_path / "ann")
    att = tmp_path / "attend"
    _regions(att, "hand", {"demo_001": (0, 0, 1, 1)})
    s = check_against_annotations(att, ann, tmp_path / "store", tmp_path / "out")
    assert s["skipped"] is True and "no annotated image" in s["note"]
    s = check_against_annotations(att, tmp_path / "nowhere", tmp_path / "store",
                                  tmp_path / "out2")  # fmt: skip
    assert s["skipped"] is True and "no annotations" in s["note"]
