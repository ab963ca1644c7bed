"""Localization on real radiographs: a run's hand / R1 / R2 boxes scored against public
manual annotations of RSNA training images (never a training target: measuring and
choosing thresholds only).

Annotations (`../shared/data/rsna-roi-annotations/`, normalised [0, 1] coordinates of the
original image, x right, y down):
- `ossification-roi-boxes.csv`: per image one `Wrist` box (the carpal region, R1's
  target), `Radius`, `Ulna`, five `MCP`, five `PIP`, four `DIP` boxes;
- `hand-box-keypoints.csv`: a (loose) hand box and 21 hand keypoints.

A run's boxes (each stage's `regions.parquet`, original pixels of the ingested image) are
normalised by that image's size, so a 299-px copy and its full-resolution original are
compared in the same frame (the 299-px squash scaled x and y independently).

Per image (`roi_eval.csv`):
- `r1_holds_carpal_centre`: R1 contains the centre of the `Wrist` box;
  `r1_carpal_coverage`: the share of the `Wrist` box inside R1; `r1_area_ratio`: R1's area
  over the `Wrist` box's; `r1_iou`;
- `r2_mcp_held` / `r2_mcp_n`: annotated MCP centres inside R2 (`r2_holds_3_mcp`: ≥ 3);
  `r2_pip_held` / `r2_pip_n`;
- `hand_holds_all_boxes`: every annotated box lies inside the hand box;
  `hand_holds_all_keypoints`: all 21 keypoints do.
A stage that failed (`status` error, no box) counts as a miss; fallback boxes are scored
as boxes (and their status kept in the row).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from boneage.store import ImageStore

BOXES_CSV = "ossification-roi-boxes.csv"
KEYPOINTS_CSV = "hand-box-keypoints.csv"
FINGERS = ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger")
KEYPOINTS = ["wrist"] + [f"{f}{i}" for f in FINGERS for i in range(1, 5)]
WORST_N = 24


def load_annotations(ann_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(boxes: id, region, x0, y0, x1, y1; keypoints: one row per id), normalised coords."""
    ann_dir = Path(ann_dir)
    boxes_path, kp_path = ann_dir / BOXES_CSV, ann_dir / KEYPOINTS_CSV
    for p in (boxes_path, kp_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: annotation file not found")
    boxes = pd.read_csv(boxes_path, dtype={"id": str})
    kps = pd.read_csv(kp_path, dtype={"id": str})
    return boxes, kps


def _norm_boxes(regions: pd.DataFrame) -> pd.DataFrame:
    """Stage regions → id-indexed frame of normalised boxes (NaN where the stage failed)."""
    r = regions.set_index("id")
    w, h = r["orig_width"].astype(float), r["orig_height"].astype(float)
    ok = r["status"] != "error"
    out = pd.DataFrame(
        {"x0": r["x0"] / w, "y0": r["y0"] / h, "x1": r["x1"] / w, "y1": r["y1"] / h},
        index=r.index,
    )
    out[~ok] = np.nan
    out["status"] = r["status"]
    out["split"] = r["split"]
    return out


def _inside(px, py, b) -> np.ndarray:
    return (px >= b[0]) & (px <= b[2]) & (py >= b[1]) & (py <= b[3])


def _area(b) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _inter(a, b) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def score_regions(attend_root: Path, ann_dir: Path) -> pd.DataFrame:
    """One row per annotated image that the run has regions for (see module docstring)."""
    regions = {}
    for stage in ("hand", "r1", "r2"):
        path = Path(attend_root) / stage / "regions.parquet"
        if path.is_file():
            regions[stage] = pd.read_parquet(path)
    if not regions:
        raise FileNotFoundError(f"{attend_root}: no regions.parquet (run boneage attend)")
    return score_frames(regions, *load_annotations(ann_dir))


def score_frames(
    regions: dict[str, pd.DataFrame], boxes: pd.DataFrame, kps: pd.DataFrame
) -> pd.DataFrame:
    """`score_regions` on regions frames in memory ({stage: attend's regions rows})."""
    stages = {stage: _norm_boxes(frame) for stage, frame in regions.items()}
    run_ids = set.union(*(set(s.index) for s in stages.values()))
    box_groups = {i: g for i, g in boxes.groupby("id") if i in run_ids}
    kp_rows = {r.id: r for r in kps.itertuples(index=False) if r.id in run_ids}
    rows = []
    for id_ in sorted(set(box_groups) | set(kp_rows), key=_id_key):
        row: dict = {"id": id_}
        found = {}
        for stage, frame in stages.items():
            if id_ in frame.index:
                r = frame.loc[id_]
                row[f"{stage}_status"] = r["status"]
                row.setdefault("split", r["split"])
                b = (r["x0"], r["y0"], r["x1"], r["y1"])
                found[stage] = None if any(pd.isna(v) for v in b) else tuple(map(float, b))
        g = box_groups.get(id_)
        if g is not None:
            row.update(_score_boxes(g, found))
        k = kp_rows.get(id_)
        if k is not None and "hand" in stages:
            xs = np.array([getattr(k, f"{n}_x") for n in KEYPOINTS], float)
            ys = np.array([getattr(k, f"{n}_y") for n in KEYPOINTS], float)
            hb = found.get("hand")
            row["hand_holds_all_keypoints"] = bool(hb is not None and _inside(xs, ys, hb).all())
            row["hand_keypoints_held"] = int(0 if hb is None else _inside(xs, ys, hb).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _id_key(id_: str):
    return (0, int(id_)) if id_.isdigit() else (1, id_)


def _score_boxes(g: pd.DataFrame, found: dict) -> dict:
    row: dict = {}
    carp = g[g["region"] == "Wrist"]
    r1 = found.get("r1")
    if len(carp) and "r1" in found:
        c = tuple(carp.iloc[0][["x0", "y0", "x1", "y1"]].astype(float))
        cx, cy = (c[0] + c[2]) / 2, (c[1] + c[3]) / 2
        if r1 is None:
            row.update(r1_holds_carpal_centre=False, r1_carpal_coverage=0.0,
                       r1_area_ratio=np.nan, r1_iou=0.0)  # fmt: skip
        else:
            inter = _inter(r1, c)
            union = _area(r1) + _area(c) - inter
            row.update(
                r1_holds_carpal_centre=bool(_inside(cx, cy, r1)),
                r1_carpal_coverage=inter / _area(c) if _area(c) else np.nan,
                r1_area_ratio=_area(r1) / _area(c) if _area(c) else np.nan,
                r1_iou=inter / union if union else 0.0,
            )
    if "r2" in found:
        r2 = found["r2"]
        for region, key in (("MCP", "mcp"), ("PIP", "pip")):
            sel = g[g["region"] == region]
            if not len(sel):
                continue
            px = ((sel["x0"] + sel["x1"]) / 2).to_numpy(float)
            py = ((sel["y0"] + sel["y1"]) / 2).to_numpy(float)
            held = 0 if r2 is None else int(_inside(px, py, r2).sum())
            row[f"r2_{key}_held"], row[f"r2_{key}_n"] = held, len(sel)
        if "r2_mcp_held" in row:
            row["r2_holds_3_mcp"] = row["r2_mcp_held"] >= 3
    if "hand" in found:
        hb = found["hand"]
        xy = g[["x0", "y0", "x1", "y1"]].to_numpy(float)
        row["hand_holds_all_boxes"] = bool(
            hb is not None
            and (_inside(xy[:, 0], xy[:, 1], hb) & _inside(xy[:, 2], xy[:, 3], hb)).all()
        )
    return row


def summarize(per_image: pd.DataFrame) -> dict:
    """Fractions/medians over the per-image rows, with the goals and whether each is met."""

    def frac(col):
        s = per_image[col].dropna() if col in per_image else pd.Series(dtype=float)
        return (float(s.astype(bool).mean()) if len(s) else None), int(len(s))

    def med(col):
        s = per_image[col].dropna() if col in per_image else pd.Series(dtype=float)
        return float(s.median()) if len(s) else None

    out: dict = {"n_images": int(len(per_image))}
    for col in ("r1_holds_carpal_centre", "r2_holds_3_mcp", "hand_holds_all_boxes",
                "hand_holds_all_keypoints"):  # fmt: skip
        v, n = frac(col)
        out[col] = {"fraction": v, "n": n}
    out["r1_carpal_coverage_median"] = med("r1_carpal_coverage")
    out["r1_area_ratio_median"] = med("r1_area_ratio")
    out["r1_iou_median"] = med("r1_iou")
    if "r2_pip_held" in per_image:
        out["r2_pip_held_mean"] = float(per_image["r2_pip_held"].dropna().mean())
    for stage in ("hand", "r1", "r2"):
        col = f"{stage}_status"
        if col in per_image:
            out[f"{stage}_status"] = per_image[col].value_counts().to_dict()
    goals = {
        "r1_holds_carpal_centre": (out["r1_holds_carpal_centre"]["fraction"], ">=", 0.90),
        "r1_carpal_coverage_median": (out["r1_carpal_coverage_median"], ">=", 0.70),
        "r1_area_ratio_median": (out["r1_area_ratio_median"], "<=", 4.0),
        "r2_holds_3_mcp": (out["r2_holds_3_mcp"]["fraction"], ">=", 0.85),
        "hand_holds_all_boxes": (out["hand_holds_all_boxes"]["fraction"], ">=", 0.97),
    }
    out["goals"] = {
        k: {"observed": v, "goal": f"{op} {g}",
            "met": v is not None and (v >= g if op == ">=" else v <= g)}
        for k, (v, op, g) in goals.items()
    }  # fmt: skip
    return out


def badness(per_image: pd.DataFrame) -> pd.Series:
    """Higher = worse localization: R1 off the carpus weighs most, then R2, then the hand."""
    s = pd.Series(0.0, index=per_image.index)
    if "r1_holds_carpal_centre" in per_image:
        s += 4 * (per_image["r1_holds_carpal_centre"] == False)  # noqa: E712 (NaN: no term)
        s += 1 - per_image["r1_carpal_coverage"].fillna(1.0)
    if "r2_mcp_held" in per_image:
        s += (3 - per_image["r2_mcp_held"].fillna(3)).clip(lower=0)
    for col in ("hand_holds_all_boxes", "hand_holds_all_keypoints"):
        if col in per_image:
            s += per_image[col] == False  # noqa: E712
    return s


def worst_montage(
    per_image: pd.DataFrame, attend_root: Path, ann_dir: Path, store_dir: Path, out: Path,
    n: int = WORST_N, tile: int = 256, cols: int = 4,
) -> list[str]:  # fmt: skip
    """The n worst images: annotation (left: carpal box yellow, MCP centres orange, PIP
    centres magenta, keypoints blue) beside the run's boxes (right: hand green, R1 red, R2
    cyan), on the stored image."""
    boxes, kps = load_annotations(ann_dir)
    kps = kps.set_index("id")
    found = {}
    for stage in ("hand", "r1", "r2"):
        path = Path(attend_root) / stage / "regions.parquet"
        if path.is_file():
            found[stage] = _norm_boxes(pd.read_parquet(path))
    order = badness(per_image).sort_values(ascending=False, kind="stable")
    ids = [per_image.loc[i, "id"] for i in order.index[:n]]
    store = ImageStore(store_dir)
    colours = {"hand": (0, 230, 0), "r1": (255, 40, 40), "r2": (0, 220, 255)}
    tiles = []
    for id_ in ids:
        img = store.get(id_).pixels
        f = tile / max(img.shape)
        w, h = max(1, round(img.shape[1] * f)), max(1, round(img.shape[0] * f))
        base = Image.fromarray(img).convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
        left, right = base.copy(), base.copy()
        dl, dr = ImageDraw.Draw(left), ImageDraw.Draw(right)
        for r in boxes[boxes["id"] == id_].itertuples():
            if r.region == "Wrist":
                dl.rectangle([r.x0 * w, r.y0 * h, r.x1 * w, r.y1 * h], outline=(255, 230, 0),
                             width=2)  # fmt: skip
            elif r.region in ("MCP", "PIP"):
                cx, cy = (r.x0 + r.x1) / 2 * w, (r.y0 + r.y1) / 2 * h
                col = (255, 150, 0) if r.region == "MCP" else (255, 0, 255)
                dl.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=col)
        if id_ in kps.index:
            k = kps.loc[id_]
            dl.rectangle([k["hand_x0"] * w, k["hand_y0"] * h, k["hand_x1"] * w, k["hand_y1"] * h],
                         outline=(80, 120, 255), width=1)  # fmt: skip
            for name in KEYPOINTS:
                x, y = k[f"{name}_x"] * w, k[f"{name}_y"] * h
                dl.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(80, 120, 255))
        for stage, frame in found.items():
            if id_ in frame.index and not pd.isna(frame.loc[id_, "x0"]):
                b = frame.loc[id_, ["x0", "y0", "x1", "y1"]].astype(float).to_numpy()
                dr.rectangle([b[0] * w, b[1] * h, b[2] * w, b[3] * h], outline=colours[stage],
                             width=2)  # fmt: skip
        t = Image.new("RGB", (2 * tile + 4, tile + 16))
        t.paste(left, ((tile - w) // 2, 16))
        t.paste(right, (tile + 4 + (tile - w) // 2, 16))
        row = per_image[per_image["id"] == id_].iloc[0]
        note = f"{id_}"
        if "r2_mcp_held" in row and not pd.isna(row["r2_mcp_held"]):
            note += f" MCP {int(row['r2_mcp_held'])}/{int(row['r2_mcp_n'])}"
        if "r1_carpal_coverage" in row and not pd.isna(row["r1_carpal_coverage"]):
            note += f" carpus cov {row['r1_carpal_coverage']:.2f}"
        ImageDraw.Draw(t).text((3, 2), note, fill=(255, 255, 0))
        tiles.append(t)
    if tiles:
        tw, th = tiles[0].size
        rows = -(-len(tiles) // cols)
        sheet = Image.new("RGB", (cols * tw, rows * th))
        for i, t in enumerate(tiles):
            sheet.paste(t, ((i % cols) * tw, (i // cols) * th))
        out.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(out)
    return ids


def check_against_annotations(
    attend_root: Path, ann_dir: Path, store_dir: Path, out_dir: Path
) -> dict:
    """Score a run's boxes against the annotations → OUT/roi_eval.csv, summary.json,
    worst.png. When the annotation folder is missing or none of its images are in the
    run (a cohort other than RSNA), writes a summary saying it was skipped and why."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in ("roi_eval.csv", "worst.png"):
        (out_dir / old).unlink(missing_ok=True)
    if not (Path(ann_dir) / BOXES_CSV).is_file():
        summary = {"skipped": True, "note": f"{ann_dir}: no annotations there"}
    else:
        per_image = score_regions(attend_root, ann_dir)
        if per_image.empty:
            summary = {"skipped": True, "note": "no annotated image is in this cohort "
                       "(annotations cover RSNA training ids only)"}  # fmt: skip
        else:
            per_image.to_csv(out_dir / "roi_eval.csv", index=False)
            summary = {"skipped": False, **summarize(per_image)}
            if "split" in per_image:
                summary["by_split"] = {
                    s: {k: v for k, v in summarize(g).items() if k != "goals"}
                    for s, g in per_image.groupby("split")
                }
            summary["worst_ids"] = worst_montage(per_image, attend_root, ann_dir, store_dir,
                                                 out_dir / "worst.png")  # fmt: skip
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
