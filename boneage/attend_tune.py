"""Choosing a stage's attend thresholds on annotated radiographs.

The stage's CAMs are computed once for the annotated images of the run (the same forward
pass as `attend`), then every setting of a grid turns them into boxes with attend's own
code (`attend.process_one`) and is scored against the manual annotations
(`roi_eval.score_frames`, the figures `check-regions` reports). The other stages' boxes are
the run's (`ATTEND_ROOT/<stage>/regions.parquet`). Annotations only choose thresholds: no
localizer ever sees a box.

Output `tune_<stage>.csv`: one row per setting (the params' own setting first, marked
`current`), its values, the stage's figures over all annotated images and per split, the
median box area (share of the image) and how many boxes fell back to the prior window.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.attend import Collect, ViewToOrig, process_one
from boneage.config import AttendStageConfig, Params
from boneage.localizer import StagePaths, cam_pass, check_stage, read_manifest
from boneage.precision import resolve_device
from boneage.roi_eval import load_annotations, score_frames, summarize
from boneage.store import ImageStore
from boneage.training import load_model, sex_code
from boneage.views import iter_view_shards

# per stage: the summary figures a setting is judged by (roi_eval.summarize keys)
FIGURES = {
    "hand": ("hand_holds_all_boxes", "hand_holds_all_keypoints"),
    "r1": ("r1_holds_carpal_centre", "r1_carpal_coverage_median", "r1_area_ratio_median"),
    "r2": ("r2_holds_3_mcp", "r2_pip_held_mean"),
}


def grid_settings(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values ({field: [values]} → [{field: value}])."""
    for k, v in grid.items():
        if k not in AttendStageConfig.model_fields:
            raise ValueError(f"grid key {k!r} is not an attend stage setting "
                             f"({', '.join(AttendStageConfig.model_fields)})")  # fmt: skip
        if not isinstance(v, list) or not v:
            raise ValueError(f"grid key {k!r}: give a non-empty list of values")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def cam_jobs(stage: str, params: Params, paths: StagePaths, model_dir: Path, ids: set[str]):
    """attend's per-image inputs after the CAM pass, for the given ids (list of tuples)."""
    acfg = params.attend
    scfg = acfg.stage(stage)
    manifest = read_manifest(paths.manifest)
    manifest = manifest[manifest["id"].isin(ids)]
    device = resolve_device(acfg.device)
    model, meta = load_model(model_dir, device)
    if meta.get("stage") != stage:
        raise ValueError(f"{model_dir} is the {meta.get('stage')!r} localizer, not {stage!r}")
    train_size, window = int(meta["img_size"]), meta["cam_window"]
    size = scfg.cam_size or train_size
    to_orig = ViewToOrig(stage, manifest, paths)
    split_of = manifest.set_index("id")["split"]
    jobs = []
    for shard in iter_view_shards(paths.input_store(stage), size, set(manifest["id"])):
        for i in range(0, len(shard.ids), acfg.batch_size):
            ids_b = shard.ids[i : i + acfg.batch_size]
            sex = sex_code(to_orig.m.loc[ids_b, "sex"])
            cams, peaks, ages = cam_pass(model, shard.x[i : i + acfg.batch_size], sex, size,
                                         train_size, window, device, acfg.amp)  # fmt: skip
            for j, id_ in enumerate(ids_b):
                k = i + j
                jobs.append((id_, str(split_of[id_]), shard.x[k], cams[j], float(peaks[j]),
                             float(ages[j]), shard.to_view[k], to_orig(id_),
                             to_orig.view_size(id_), to_orig.m.loc[id_]))  # fmt: skip
    return jobs


def boxes_for(jobs: list, stage: str, scfg: AttendStageConfig, ingest: ImageStore,
              view_store: ImageStore | None) -> pd.DataFrame:  # fmt: skip
    """The regions rows attend would write for these jobs under setting `scfg` (`ingest`:
    the run's image store; `view_store`: the stage's input store, r1 only)."""
    rows = []
    for job in jobs:
        id_, split, view, cam, peak, age, to_view, view_to_orig, view_size, m_row = job
        rng = np.random.default_rng(0)
        rows.append(process_one(
            id_, split, stage, scfg, view, cam.copy(), peak, age, to_view, view_to_orig,
            view_size, manifest_row=m_row, ingest_store=ingest, view_store=view_store,
            crops=Collect(), erased=Collect() if stage == "r1" else None, png_dir=None, rng=rng,
        ))  # fmt: skip
    return pd.DataFrame(rows)


def _figures(stage: str, per_image: pd.DataFrame) -> dict:
    s = summarize(per_image)
    out = {}
    for k in FIGURES[stage]:
        v = s[k]
        out[k] = v["fraction"] if isinstance(v, dict) else v
    return out


def tune_attend(
    stage: str,
    params: Params,
    paths: StagePaths,
    model_dir: Path,
    ann_dir: Path,
    grid: dict[str, list],
    out_dir: Path,
) -> pd.DataFrame:
    """Score the params' setting and every grid setting of `stage` → OUT/tune_<stage>.csv."""
    check_stage(stage)
    settings = grid_settings(grid)
    boxes, kps = load_annotations(ann_dir)
    annotated = set(boxes["id"]) | (set(kps["id"]) if stage == "hand" else set())
    others = {}
    for s in ("hand", "r1", "r2"):
        path = paths.attend_dir(s) / "regions.parquet"
        if s != stage and path.is_file():
            others[s] = pd.read_parquet(path)
    jobs = cam_jobs(stage, params, paths, model_dir, annotated)
    if not jobs:
        raise ValueError(f"{paths.ingest}: no annotated image is in this run (RSNA ids only)")
    current = params.attend.stage(stage)
    ingest = ImageStore(paths.store)  # opened once for every setting
    view_store = ImageStore(paths.input_store(stage)) if stage == "r1" else None
    rows = []
    for setting in [{}, *settings]:
        scfg = AttendStageConfig.model_validate({**current.model_dump(), **setting})
        frame = boxes_for(jobs, stage, scfg, ingest, view_store)
        per_image = score_frames({**others, stage: frame}, boxes, kps)
        area = (frame["x1"] - frame["x0"]) * (frame["y1"] - frame["y0"])
        row = {"current": not setting, **{k: json.dumps(v) for k, v in setting.items()},
               "n_images": len(per_image), **_figures(stage, per_image)}  # fmt: skip
        for split, g in per_image.groupby("split"):
            main = FIGURES[stage][0]
            row[f"{main}_{split}"] = _figures(stage, g)[main]
        row["box_area_median"] = float(
            (area / (frame["orig_width"] * frame["orig_height"])).median())  # fmt: skip
        row["n_fallback"] = int(frame["status"].astype(str).str.startswith("fallback").sum())
        rows.append(row)
    table = pd.DataFrame(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / f"tune_{stage}.csv", index=False)
    return table
