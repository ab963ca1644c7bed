"""Localization against ground-truth boxes (the synthetic demo cohort's boxes.csv).

Criteria (issue acceptance): hand box IoU ≥ 0.5 with the true hand; the R1 box centre
inside the true carpal region; the R2 box lying mostly (≥ 50 % of its area) on the true
metacarpal/phalanx region. `cam_box_iou_ge_0.5` judges the CAM component's own box
(before a stage's foreground refinement and margin), so the CAM alone stays visible.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from boneage.geometry import box_area, iou


def _inter(a, b) -> float:
    return box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def evaluate_localization(
    attend_root: Path, truth_csv: Path, splits: tuple[str, ...] = ("test",)
) -> dict:
    truth = pd.read_csv(truth_csv, dtype={"id": str}).set_index("id")
    out: dict = {"splits": list(splits)}
    for stage, tkey in (("hand", "hand"), ("r1", "r1"), ("r2", "r2")):
        path = Path(attend_root) / stage / "regions.parquet"
        if not path.is_file():
            continue
        reg = pd.read_parquet(path)
        reg = reg[reg["split"].isin(splits) & reg["id"].isin(truth.index)]
        vals = []
        for r in reg.itertuples():
            t = truth.loc[r.id]
            tb = (t[f"{tkey}_x0"], t[f"{tkey}_y0"], t[f"{tkey}_x1"], t[f"{tkey}_y1"])
            if r.status == "error":
                vals.append((0.0, False, 0.0, 0.0))
                continue
            pb = (r.x0, r.y0, r.x1, r.y1)
            cx, cy = (pb[0] + pb[2]) / 2, (pb[1] + pb[3]) / 2
            inside = tb[0] <= cx < tb[2] and tb[1] <= cy < tb[3]
            on_true = _inter(pb, tb) / box_area(pb) if box_area(pb) else 0.0
            cb = tuple(getattr(r, f"cam_{k}", None) for k in ("x0", "y0", "x1", "y1"))
            cam_iou = iou(cb, tb) if None not in cb else float("nan")
            vals.append((iou(pb, tb), inside, on_true, cam_iou))
        df = pd.DataFrame(vals, columns=["iou", "centre_inside", "share_on_true", "cam_iou"])
        out[stage] = {
            "n": len(df),
            "iou_median": float(df["iou"].median()) if len(df) else None,
            "iou_ge_0.5": float((df["iou"] >= 0.5).mean()) if len(df) else None,
            "centre_inside": float(df["centre_inside"].mean()) if len(df) else None,
            "share_on_true_ge_0.5": float((df["share_on_true"] >= 0.5).mean()) if len(df) else None,
            # the CAM component's own box, before refinement and margin
            "cam_box_iou_ge_0.5": float((df["cam_iou"] >= 0.5).mean())
            if df["cam_iou"].notna().any()
            else None,
            "status": reg["status"].value_counts().to_dict(),
        }
    return out


def acceptance(result: dict) -> dict[str, tuple[float | None, float, bool]]:
    """The three acceptance checks: name → (observed, goal, passed)."""
    checks = {}
    for name, stage, key, goal in (
        ("hand IoU>=0.5", "hand", "iou_ge_0.5", 0.9),
        ("R1 centre inside carpal region", "r1", "centre_inside", 0.8),
        ("R2 box on metacarpals/phalanges", "r2", "share_on_true_ge_0.5", 0.7),
    ):
        v = result.get(stage, {}).get(key)
        checks[name] = (v, goal, v is not None and v >= goal)
    return checks
