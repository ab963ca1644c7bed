"""Batch CAM generation: localizer CAM → threshold → largest connected component → box
→ original coordinates → crop from the highest resolution in the store.

For every image of every split, `attend` writes (under OUT = data/processed/attend/STAGE):
- `regions.parquet`: id, split, stage, status, box and square crop box in ORIGINAL pixel
  coordinates, CAM peak / area above τ / CAM mass inside the box, predicted age;
- `crops/`: a crop store (Parquet shards of PNG) of the square crop around the box, cut
  from the ingest store (the highest resolution kept) and resized to the stage's crop size;
- `png/SPLIT/ID.png`: the same crops as PNG files, for review (params attend.png_store);
- r1 only: `erased/`, a store of the hand crops with the R1 box filled (image E), the
  input of the r2 localizer;
and overlays (input + CAM + box) for a sample of each split under the reports dir.

Status per image: `ok`; `fallback_prior` when no CAM component passes τ (or it is smaller
than `min_area`): the box is then the stage's prior box (params) in the input view;
`cam_only` when the stage refines its box (params `refine: foreground`, the hand) but no
usable foreground was found: the CAM component's box is used as is (with refinement, a
`fallback_prior` box is the foreground component with most area inside the prior box);
`error` with a message when the image could not be processed (one bad image never stops
the batch; it gets no crop).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from boneage.cam_boxes import (
    cam_overlay,
    cam_to_box,
    erase,
    grow_to,
    mask_to_foreground,
    montage,
    refine_foreground,
    rel_box,
    weight_by_prior,
)
from boneage.config import AttendStageConfig, Params
from boneage.geometry import Affine, clip, crop_resize, expand, square
from boneage.imageio import encode_png
from boneage.localizer import STAGES, StagePaths, cam_pass, check_stage, read_manifest
from boneage.precision import resolve_device
from boneage.store import ImageStore, StoreWriter
from boneage.training import load_model, sex_code
from boneage.views import iter_view_shards

MONTAGE_MAX = 48  # overlays.png is written only up to this many overlays
POOL_MIN_IMAGES = 128  # attend.workers != 1 starts a process pool from this many images
REGION_COLUMNS = [
    "id", "split", "stage", "status", "message", "x0", "y0", "x1", "y1",
    "crop_x0", "crop_y0", "crop_x1", "crop_y1", "orig_width", "orig_height",
    "cam_peak", "cam_area", "cam_mass_in_box", "pred_age_months",
    "cam_x0", "cam_y0", "cam_x1", "cam_y1",
]  # fmt: skip
# cam_*: the CAM component's own box (original pixels, before refinement and margin), kept
# so that the CAM alone can be judged next to the refined box.


class ViewToOrig:
    """Maps a stage's view pixels to original image pixels."""

    def __init__(self, stage: str, manifest: pd.DataFrame, paths: StagePaths):
        self.m = manifest.set_index("id")
        self.stage = stage
        self.hand: pd.DataFrame | None = None
        self.view_side: int | None = None
        if stage != "hand":
            hand_regions = paths.attend_dir("hand") / "regions.parquet"
            if not hand_regions.is_file():
                raise FileNotFoundError(f"{hand_regions}: run `boneage attend --stage hand` first")
            self.hand = pd.read_parquet(hand_regions).set_index("id")
            self.view_side = int(json.loads((paths.input_store(stage) / "store.json").read_text())
                                 ["crop_size"])  # fmt: skip

    def view_size(self, id_: str) -> tuple[float, float]:
        """(width, height) of the stage's view image in its own pixels."""
        if self.view_side is None:
            r = self.m.loc[id_]
            return float(r["store_width"]), float(r["store_height"])
        return float(self.view_side), float(self.view_side)

    def __call__(self, id_: str) -> Affine:
        if self.hand is None:
            r = self.m.loc[id_]
            return Affine(r["orig_width"] / r["store_width"], 0.0,
                          r["orig_height"] / r["store_height"], 0.0)  # fmt: skip
        h = self.hand.loc[id_]
        v = self.view_side
        return Affine((h["crop_x1"] - h["crop_x0"]) / v, h["crop_x0"],
                      (h["crop_y1"] - h["crop_y0"]) / v, h["crop_y0"])  # fmt: skip


def attend(
    stage: str,
    params: Params,
    paths: StagePaths,
    model_dir: Path,
    out_dir: Path,
    reports_dir: Path,
    progress: bool = True,
    limit: int | None = None,
    loaded: tuple | None = None,
    review_sheet: bool = True,
) -> dict:
    """Run CAM localization for one stage over every image; see the module docstring.
    `loaded`: the (model, meta) of model_dir already loaded on the attend device (scoring
    reuses them across shards). `review_sheet`: also write reports_dir/overlays.png (a
    montage of the overlays; scoring, whose reports are scratch, skips it)."""
    check_stage(stage)
    acfg = params.attend
    scfg = acfg.stage(stage)
    manifest = read_manifest(paths.manifest)
    if limit is not None:
        manifest = manifest.head(limit)
    png_dir = out_dir / "png"
    # the pool (attend.workers) forks before this process loads a model onto the GPU
    pool = _post_pool(acfg.workers, len(manifest), stage, scfg, paths,
                      png_dir if acfg.png_store else None)  # fmt: skip
    device = resolve_device(acfg.device)
    model, meta = loaded if loaded is not None else load_model(model_dir, device)
    model.to(memory_format=torch.channels_last)
    if meta.get("stage") != stage:
        raise ValueError(f"{model_dir} is the {meta.get('stage')!r} localizer, not {stage!r}")
    train_size, window = int(meta["img_size"]), meta["cam_window"]
    size = scfg.cam_size or train_size
    split_of = manifest.set_index("id")["split"]
    to_orig = ViewToOrig(stage, manifest, paths)
    ingest_store = ImageStore(paths.store)
    view_store = ImageStore(paths.input_store(stage)) if stage == "r1" else None
    rng = np.random.default_rng(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    overlay_dir = reports_dir / "overlays"
    overlay_dir.mkdir(parents=True, exist_ok=True)
    for old in overlay_dir.glob("*.png"):
        old.unlink()
    overlays_left = {s: acfg.overlays_per_split for s in ("train", "val", "test")}
    rows: dict[str, dict] = {}
    crops = StoreWriter(out_dir / "crops", long_side=scfg.crop_size)
    erased = StoreWriter(out_dir / "erased", long_side=None) if stage == "r1" else None
    t0 = time.perf_counter()
    n_done = 0
    bar = tqdm(total=len(manifest), desc=f"attend {stage}", unit="img", disable=not progress,
               file=sys.stderr)  # fmt: skip
    wanted = set(manifest["id"])
    for shard in iter_view_shards(paths.input_store(stage), size, wanted):
        for i in range(0, len(shard.ids), acfg.batch_size):
            ids = shard.ids[i : i + acfg.batch_size]
            sex = sex_code(to_orig.m.loc[ids, "sex"])
            cams_np, peaks_np, ages_np = cam_pass(
                model, shard.x[i : i + acfg.batch_size], sex, size, train_size, window, device,
                acfg.amp)  # fmt: skip
            jobs = []
            for j, id_ in enumerate(ids):
                k = i + j
                split = str(split_of[id_])
                try:
                    jobs.append((k, j, (id_, split, shard.x[k], cams_np[j], float(peaks_np[j]),
                                 float(ages_np[j]), shard.to_view[k], to_orig(id_),
                                 to_orig.view_size(id_), to_orig.m.loc[id_])))  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - one bad image never stops the batch
                    rows[id_] = _error_row(id_, split, stage, f"{type(exc).__name__}: {exc}")
                    n_done += 1
                    bar.update()
            if pool is not None:  # box, crop and PNGs in the workers, written here in order
                results = pool.imap(_post_worker, [job for _, _, job in jobs], chunksize=4)
            else:
                results = (_post(job, stage, scfg, ingest_store, view_store, crops, erased,
                                 png_dir if acfg.png_store else None, rng)
                           for _, _, job in jobs)  # fmt: skip
            for (k, j, job), (row, crop_rows, erased_rows) in zip(jobs, results, strict=True):
                id_, split = job[0], job[1]
                for r in crop_rows:
                    crops.add(r)
                for r in erased_rows:
                    erased.add(r)
                if row["status"] != "error" and overlays_left.get(split, 0) > 0:
                    overlays_left[split] -= 1
                    try:
                        cam_overlay(shard.x[k], cams_np[j], row, shard.to_view[k], job[7],
                                 overlay_dir / f"{split}_{id_}.png")  # fmt: skip
                    except Exception as exc:  # noqa: BLE001
                        row = _error_row(id_, split, stage, f"{type(exc).__name__}: {exc}")
                rows[id_] = row
                n_done += 1
                bar.update()
    if pool is not None:
        pool.close()
        pool.join()
    bar.close()
    crops.close()
    if erased is not None:
        erased.close()
        _set_store_meta(out_dir / "erased", crop_size=_hand_crop_size(paths))
    _set_store_meta(out_dir / "crops", crop_size=scfg.crop_size)
    for id_, split in split_of.items():  # rows the input store did not have
        if id_ not in rows:
            prev = STAGES[STAGES.index(stage) - 1] if stage != "hand" else "ingest"
            rows[id_] = _error_row(id_, split, stage, f"no input view ({prev} stage failed)")
    regions = pd.DataFrame([rows[i] for i in manifest["id"]], columns=REGION_COLUMNS)
    regions.to_parquet(out_dir / "regions.parquet", index=False)
    seconds = time.perf_counter() - t0
    summary = {
        "stage": stage,
        "n": len(regions),
        "status": regions["status"].value_counts().to_dict(),
        "seconds": round(seconds, 2),
        "images_per_second": round(n_done / seconds, 2) if seconds else None,
        "cam_area_median": float(regions["cam_area"].median()),
        "cam_mass_in_box_median": float(regions["cam_mass_in_box"].median()),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (reports_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    overlays = sorted(overlay_dir.glob("*.png"))
    # a review sheet; hundreds of tiles help nobody
    if review_sheet and len(overlays) <= MONTAGE_MAX:
        montage(overlays, reports_dir / "overlays.png")
    return summary


class Collect:
    """A worker's stand-in for a StoreWriter: keeps the rows for the parent to write."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)


def _post(job: tuple, stage: str, scfg: AttendStageConfig, ingest_store: ImageStore,
          view_store: ImageStore | None, crops, erased, png_dir: Path | None,
          rng: np.random.Generator) -> tuple[dict, list[dict], list[dict]]:  # fmt: skip
    """One image after the CAM pass: (region row, crop-store rows, erased-store rows); the
    store rows are empty when `crops`/`erased` are the real writers (written directly)."""
    id_, split, view, cam, peak, age, to_view, view_to_orig, view_size, m_row = job
    try:
        row = process_one(
            id_, split, stage, scfg, view, cam, peak, age, to_view, view_to_orig, view_size,
            manifest_row=m_row, ingest_store=ingest_store, view_store=view_store, crops=crops,
            erased=erased, png_dir=png_dir, rng=rng,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - one bad image never stops the batch
        return _error_row(id_, split, stage, f"{type(exc).__name__}: {exc}"), [], []
    return (row, crops.rows if isinstance(crops, Collect) else [],
            erased.rows if isinstance(erased, Collect) else [])  # fmt: skip


_WORKER: dict = {}  # in a pool worker: the stage, its config, the stores, the PNG dir


def _post_init(stage: str, scfg: AttendStageConfig, store: Path, view_store: Path | None,
               png_dir: Path | None) -> None:  # fmt: skip
    _WORKER.update(stage=stage, scfg=scfg, png_dir=png_dir)
    try:  # never raise here: a pool respawns workers whose initializer fails, forever
        _WORKER.update(ingest=ImageStore(store),
                       view=ImageStore(view_store) if view_store is not None else None)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - every image then gets an error row
        _WORKER["error"] = f"{type(exc).__name__}: {exc}"


def _post_worker(job: tuple) -> tuple[dict, list[dict], list[dict]]:
    w = _WORKER
    if "error" in w:
        return _error_row(job[0], job[1], w["stage"], w["error"]), [], []
    # per-image random draws (erase: noise): the same whatever the worker and order
    seed = int.from_bytes(hashlib.sha256(str(job[0]).encode()).digest()[:8], "little")
    erased = Collect() if w["view"] is not None else None
    return _post(job, w["stage"], w["scfg"], w["ingest"], w["view"], Collect(), erased,
                 w["png_dir"], np.random.default_rng(seed))  # fmt: skip


def pool_size(workers: int, n_images: int) -> int:
    """Worker processes attend starts for n_images (0: none, the work stays in-process)."""
    n = workers or os.cpu_count() or 1
    return n if n > 1 and n_images >= POOL_MIN_IMAGES else 0


def _post_pool(workers: int, n_images: int, stage: str, scfg: AttendStageConfig,
               paths: StagePaths, png_dir: Path | None):  # fmt: skip
    """A process pool for the per-image work (attend.workers), or None: in-process."""
    n = pool_size(workers, n_images)
    if n == 0:
        return None
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    view_store = paths.input_store(stage) if stage == "r1" else None
    return ctx.Pool(n, _post_init, (stage, scfg, paths.store, view_store, png_dir))


def _hand_crop_size(paths: StagePaths) -> int:
    return int(json.loads((paths.input_store("r1") / "store.json").read_text())["crop_size"])


def _set_store_meta(store_dir: Path, **extra) -> None:
    meta_path = store_dir / "store.json"
    meta = json.loads(meta_path.read_text())
    meta.update(extra)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")


def _error_row(id_: str, split: str, stage: str, message: str) -> dict:
    row = dict.fromkeys(REGION_COLUMNS)
    row.update(id=id_, split=split, stage=stage, status="error", message=" ".join(message.split()))
    return row


def process_one(
    id_: str,
    split: str,
    stage: str,
    scfg: AttendStageConfig,
    view: np.ndarray,
    cam: np.ndarray,
    peak: float,
    age: float,
    to_view: Affine,
    view_to_orig: Affine,
    view_size: tuple[float, float],
    *,
    manifest_row: pd.Series,
    ingest_store: ImageStore,
    view_store: ImageStore | None,
    crops: StoreWriter,
    erased: StoreWriter | None,
    png_dir: Path | None,
    rng: np.random.Generator,
) -> dict:
    input_to_orig = to_view.then(view_to_orig)
    # the prior box, given relative to the view, expressed in input pixels
    vw, vh = view_size
    prior_input = to_view.inverse().box(rel_box(scfg.prior, vw, vh))
    valid = to_view.inverse().box((0.0, 0.0, vw, vh))
    if scfg.cam_mask == "foreground":
        cam = mask_to_foreground(cam, view, valid, level=scfg.fg_level)
    if scfg.prior_sigma:
        cam = weight_by_prior(cam, prior_input, scfg.prior_sigma)
    cb = cam_to_box(cam, scfg, prior_input)
    if scfg.min_size is not None and cb.status == "ok":
        cb.box = grow_to(cb.box, scfg.min_size[0] * (valid[2] - valid[0]),
                         scfg.min_size[1] * (valid[3] - valid[1]))  # fmt: skip
    ow, oh = float(manifest_row["orig_width"]), float(manifest_row["orig_height"])
    cam_box = clip(input_to_orig.box(cb.box), ow, oh)
    net_box, status = cb.box, cb.status
    if scfg.refine == "foreground":  # the CAM (even one too small to pass) seeds it
        seed = cam
        if not cam.any():  # no CAM evidence at all: the foreground inside the prior box
            seed = np.zeros_like(cam)
            px0, py0 = max(0, int(prior_input[0])), max(0, int(prior_input[1]))
            seed[py0 : int(np.ceil(prior_input[3])), px0 : int(np.ceil(prior_input[2]))] = 1.0
        refined = refine_foreground(view, seed, valid, level=scfg.fg_level)
        if refined is not None:
            net_box = refined
            status = "ok" if cam.any() else status
        elif status == "ok":
            status = "cam_only"
    box = clip(expand(input_to_orig.box(net_box), scfg.margin), ow, oh)
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        raise ValueError(f"empty box after clipping: {box}")
    crop_box = square(box)
    img = ingest_store.get(id_)
    sx, sy = img.pixels.shape[1] / ow, img.pixels.shape[0] / oh
    store_box = (crop_box[0] * sx, crop_box[1] * sy, crop_box[2] * sx, crop_box[3] * sy)
    crop = crop_resize(img.pixels, store_box, scfg.crop_size)
    png = encode_png(crop)
    side = crop_box[2] - crop_box[0]
    crops.add(_store_row(id_, png, scfg.crop_size, scfg.crop_size, round(side), round(side)))
    if png_dir is not None:
        (png_dir / split).mkdir(parents=True, exist_ok=True)
        (png_dir / split / f"{id_}.png").write_bytes(png)
    if erased is not None:  # r1: E = the hand crop (this stage's view) with R1 filled
        view = view_store.get(id_).pixels
        e = erase(view, view_to_orig.inverse().box(box), scfg.erase, rng)
        e_png = encode_png(e)
        erased.add(_store_row(id_, e_png, e.shape[0], e.shape[1], e.shape[0], e.shape[1]))
    return {
        "id": id_, "split": split, "stage": stage, "status": status, "message": None,
        "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3],
        "crop_x0": crop_box[0], "crop_y0": crop_box[1], "crop_x1": crop_box[2],
        "crop_y1": crop_box[3], "orig_width": ow, "orig_height": oh,
        "cam_peak": peak, "cam_area": cb.area, "cam_mass_in_box": cb.mass_in_box,
        "pred_age_months": age, "cam_x0": cam_box[0], "cam_y0": cam_box[1],
        "cam_x1": cam_box[2], "cam_y1": cam_box[3],
    }  # fmt: skip


def _store_row(id_: str, png: bytes, h: int, w: int, orig_h: int, orig_w: int) -> dict:
    """A crop-store row; 'orig' is the region's size in original-image pixels."""
    return {
        "id": id_,
        "png": png,
        "height": h,
        "width": w,
        "orig_height": orig_h,
        "orig_width": orig_w,
        "scale": h / orig_h if orig_h else 1.0,
        "sha256": hashlib.sha256(png).hexdigest(),
    }
