"""Scoring images end to end: image → hand / R1 / R2 localization → crops → aggregator
(+ the carpal-only head) → age distribution → clinical outputs, for one shard of
candidates (`score_candidates`) or a DataFrame of paths (`score_frame`, the pyfunc's
input). The cohort runner (discovery, shards, resuming, reports) is boneage.score_cohort;
the model it runs is a bundle (boneage.bundle).

Each shard runs through the *same* functions as the training pipeline (ingest, attend ×3,
the aggregator's region stacking) in a scratch directory, so scoring and training can
never disagree on preprocessing. One bad image gives a row with status=error and the
reason; the others are scored.

Rows have the columns `PREDICTION_COLUMNS`, including the three boxes used (hand, R1, R2)
in pixels of the input image as given (`BOX_COLUMNS`; empty where a stage fell back). No
DICOM header value other than sex and the derived chronological age is read into any
output.

Sex unknown (folder cohorts without CSV or DICOM sex): the models get the midpoint sex
code 0.5 (as in training for 'U'), `sex_used` is 'U', no SDS is computed (the reference is
sex-specific) and the row is flagged `sex_unknown`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import torch
from PIL import Image, ImageDraw

from boneage import calibration
from boneage.aggregator import missing_reason, region_arrays
from boneage.attend import attend
from boneage.bundle import Bundle, OpenedModel, calibration_version
from boneage.cohort import Candidate, Rejected, id_from_relpath, parse_sex
from boneage.config import Params
from boneage.imageio import write_png
from boneage.ingest import ingest_candidates
from boneage.ldl import distribution_quantiles, distribution_sd, expectation
from boneage.localizer import STAGES, StagePaths, read_manifest
from boneage.precision import resolve_device
from boneage.reference import REFERENCE_ID, bone_age_sds
from boneage.review import COLOURS
from boneage.store import ImageStore
from boneage.training import TensorData, predict, sex_code

# the boxes scoring used, in pixels of the input image as given (empty where a stage fell
# back to its prior box or failed)
BOX_COLUMNS = [f"{s}_{k}" for s in ("hand", "r1", "r2") for k in ("x0", "y0", "x1", "y1")]


PREDICTION_COLUMNS = [
    "id", "source", "status", "error", "sex_used", "sex_source",
    "boneage_months", "boneage_years", "sd_months", "p05_months", "p95_months",
    "carpal_boneage_months", "chronological_age_months", "chronological_age_source",
    "ba_minus_ca_months", "sds", "sds_reference", "flags",
    "hand_status", "r1_status", "r2_status", "reference_boneage_months",
    "model_name", "model_version", "calibration",
    "image_width", "image_height", *BOX_COLUMNS,
]  # fmt: skip


FLOAT_COLUMNS = frozenset({
    "boneage_months", "boneage_years", "sd_months", "p05_months", "p95_months",
    "carpal_boneage_months", "chronological_age_months", "ba_minus_ca_months", "sds",
    "reference_boneage_months", "image_width", "image_height", *BOX_COLUMNS,
})  # fmt: skip


def qc_turns(qc_flags) -> int:
    """Quarter turns (counter-clockwise, np.rot90 sense) the input had before QC turned it
    upright: 'auto_rotated_90' → 1, … ; 0 when it was not turned."""
    text = "" if qc_flags is None or pd.isna(qc_flags) else str(qc_flags)
    m = re.search(r"auto_rotated_(90|180|270)", text)
    return int(m.group(1)) // 90 if m else 0


def box_to_input(box, width: float, height: float, turns: int) -> tuple[float, ...]:
    """A box in the QC-corrected image (width × height) in the pixels of the input as
    given, which was the corrected image turned `turns` quarter turns counter-clockwise."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = float(width), float(height)
    for _ in range(turns % 4):  # one counter-clockwise quarter turn: (x, y) → (y, w − x)
        x0, y0, x1, y1 = y0, w - x1, y1, w - x0
        w, h = h, w
    return x0, y0, x1, y1


def _scoring_params(bundle: Bundle, stage: str = "hand") -> Params:
    """The bundle's params with what scoring needs: no labels required, unknown sex
    allowed, decoding in-process (parallelism is across shards: a decode pool per shard
    costs more than it saves — inside Ray workers it starts by forkserver, and measured
    2.91 vs 3.80 img/s with 2 workers), no PNG crop copies, a CAM overlay for every image
    from the hand stage only (the one the scoring overlay shows) when overlays are on."""
    p = bundle.params
    qc = p.ingest.qc.model_copy(update={"enabled": p.score.qc, "model": bundle.qc_model()})
    ingest = p.ingest.model_copy(
        update={"require_labels": False, "allow_unknown_sex": True, "workers": 1, "qc": qc}
    )
    n_overlays = 10**9 if stage == "hand" and p.score.overlays else 0
    att = p.attend.model_copy(update={"overlays_per_split": n_overlays, "png_store": False})
    return p.model_copy(update={"ingest": ingest, "attend": att})


def _distribution_outputs(
    opened: OpenedModel, comp: str, paths: StagePaths, ids: list[str], sex: dict[str, str],
    device: torch.device, low_confidence_sd: float,
) -> tuple[dict, dict]:  # fmt: skip
    """({id: (mean, sd, p05, p95, low_confidence)} for ids having the model's regions,
    {id: missing}). With the bundle's calibration for `comp`: the bias-corrected estimate,
    calibrated SD, calibrated 90 % interval and its low-confidence threshold; without:
    the distribution's mean, SD, 5th/95th percentiles and SD > `low_confidence_sd`."""
    model, meta = opened.network(comp, device)
    keep, x, missing = region_arrays(paths, ids, tuple(meta["regions"]), int(meta["img_size"]))
    out: dict[str, tuple[float, float, float, float, bool]] = {}
    if keep:
        data = TensorData(keep, torch.from_numpy(x), torch.full((len(keep),), float("nan")),
                          torch.from_numpy(sex_code([sex[i] for i in keep])))  # fmt: skip
        p = predict(model, data, device, tta_shift=opened.bundle.params.aggregator.tta_shift)
        mean, sd = expectation(p).numpy(), distribution_sd(p).numpy()
        cal = (opened.bundle.calibration or {}).get(comp)
        if cal is None:
            q = distribution_quantiles(p, [0.05, 0.95]).numpy()
            lo, hi, low = q[:, 0], q[:, 1], sd > low_confidence_sd
        else:
            c = calibration.apply(cal, mean, sd)
            lo, hi = calibration.interval(cal, 0.9, mean, sd)
            mean, sd, low = c["estimate"], c["sd"], c["low_confidence"]
        out = {i: (float(mean[k]), float(sd[k]), float(lo[k]), float(hi[k]), bool(low[k]))
               for k, i in enumerate(keep)}  # fmt: skip
    return out, missing


def score_candidates(
    opened: OpenedModel,
    candidates: list[Candidate],
    work: Path,
    overlays_dir: Path | None = None,
    extra_flags: dict[str, list[str]] | None = None,
) -> pd.DataFrame:
    """Score candidates (one shard) in the scratch dir `work`; one row per candidate.
    `extra_flags`: flags to add per id (e.g. duplicate_content, found by the plan)."""
    bundle = opened.bundle
    params = _scoring_params(bundle)
    scfg = params.score
    work = Path(work)
    if work.exists():
        shutil.rmtree(work)
    paths = StagePaths(ingest=work / "ingest", attend_root=work / "attend")
    res = ingest_candidates(candidates, [], paths.ingest, params.ingest, progress=False,
                            reject_duplicates=False)  # fmt: skip
    manifest = read_manifest(paths.manifest)
    rejected = res.rejected.set_index("id") if len(res.rejected) else pd.DataFrame()
    regions: dict[str, pd.DataFrame] = {}
    device = resolve_device(params.attend.device)
    if len(manifest):
        for stage in STAGES:
            comp = f"localizer_{stage}"
            attend(stage, _scoring_params(bundle, stage), paths, bundle.component(comp),
                   paths.attend_dir(stage), work / "reports" / stage, progress=False,
                   loaded=opened.network(comp, device), review_sheet=False)  # fmt: skip
            regions[stage] = pd.read_parquet(paths.attend_dir(stage) / "regions.parquet")
            regions[stage] = regions[stage].set_index("id")
    m = manifest.set_index("id")
    ids = list(manifest["id"])
    sex = {i: str(m.at[i, "sex"]) for i in ids}
    low_sd = scfg.low_confidence_sd_months
    main, missing = ({}, {}) if not ids else _distribution_outputs(
        opened, "aggregator", paths, ids, sex, device, low_sd)  # fmt: skip
    carpal, _ = ({}, {}) if not ids else _distribution_outputs(
        opened, "carpal", paths, ids, sex, device, low_sd)  # fmt: skip
    cal_version = calibration_version(bundle)
    lo, hi = bundle.meta["train_age_range_months"]
    store = ImageStore(paths.store) if len(manifest) else None  # one reader for the overlays
    rows = []
    for c in candidates:
        row = dict.fromkeys(PREDICTION_COLUMNS)
        row.update(id=c.id, source=c.source, model_name=opened.name,
                   model_version=opened.version, sds_reference=REFERENCE_ID, flags="",
                   calibration=cal_version)  # fmt: skip
        if c.boneage_months is not None:
            row["reference_boneage_months"] = c.boneage_months
        if c.id not in m.index:
            r = rejected.loc[c.id] if c.id in rejected.index else None
            why = f"{r['reason']}: {r['detail']}" if r is not None else "not ingested"
            row.update(status="error", error=why, flags=_reject_flags(opened),
                       sex_used=c.sex, sex_source=c.sex_source)  # fmt: skip
            rows.append(row)
            continue
        mr = m.loc[c.id]
        qc_flags = mr.get("qc_flags")  # QC's corrections (NA when QC is off)
        flags = (
            [] if qc_flags is None or pd.isna(qc_flags) else [f for f in qc_flags.split(";") if f]
        )
        flags += (extra_flags or {}).get(c.id, [])
        if opened.modified:
            flags.append("model_modified")
        stage_status = {}
        turns = qc_turns(mr.get("qc_flags"))
        w_c, h_c = float(mr["orig_width"]), float(mr["orig_height"])
        row.update(image_width=h_c if turns % 2 else w_c, image_height=w_c if turns % 2 else h_c)
        for stage in STAGES:
            st = regions[stage].loc[c.id]
            stage_status[stage] = st["status"]
            row[f"{stage}_status"] = st["status"]
            if st["status"] not in ("error", "fallback_prior"):
                b = box_to_input((st["x0"], st["y0"], st["x1"], st["y1"]), w_c, h_c, turns)
                row.update({f"{stage}_{k}": v for k, v in zip(("x0", "y0", "x1", "y1"), b,
                                                               strict=True)})  # fmt: skip
            if st["status"] in ("fallback_prior", "cam_only"):
                flags.append(f"localization_{st['status']}:{stage}")
        sex_used = str(mr["sex"])
        row.update(sex_used=sex_used, sex_source=str(mr["sex_source"]))
        ca = mr["chronological_age_months"]
        ca = None if pd.isna(ca) else float(ca)
        row["chronological_age_months"] = ca
        row["chronological_age_source"] = None if ca is None else str(mr["age_source"])
        if sex_used not in ("M", "F"):
            flags.append("sex_unknown")
        if c.id not in main:
            errs = [f"{s}: {regions[s].loc[c.id]['message']}" for s in STAGES
                    if stage_status[s] == "error"]  # fmt: skip
            why = missing_reason(missing.get(c.id, ["?"])) + (
                " — " + "; ".join(errs) if errs else ""
            )
            row.update(status="error", error=why, flags=";".join(flags + ["qc_reject"]))
            rows.append(row)
            continue
        mean, sd, p05, p95, low_confidence = main[c.id]
        row.update(status="ok", boneage_months=mean, boneage_years=mean / 12.0, sd_months=sd,
                   p05_months=p05, p95_months=p95)  # fmt: skip
        if c.id in carpal:
            row["carpal_boneage_months"] = carpal[c.id][0]
        if ca is not None:
            row["ba_minus_ca_months"] = mean - ca
            sds = bone_age_sds(mean, ca, sex_used)
            row["sds"] = sds
            if sds is not None and abs(sds) > scfg.sds_flag:
                flags.append(f"abs_sds_gt_{scfg.sds_flag:g}")
        if not lo <= mean <= hi or (ca is not None and not lo <= ca <= hi):
            flags.append("outside_training_range")
        if low_confidence:
            flags.append("low_confidence")
        row["flags"] = ";".join(flags)
        if overlays_dir is not None and scfg.overlays:
            _overlay(c.id, str(mr["split"]), store, regions, work / "reports" / "hand",
                     row, overlays_dir)  # fmt: skip
        rows.append(row)
    return typed_predictions(pd.DataFrame(rows, columns=PREDICTION_COLUMNS))


def typed_predictions(df: pd.DataFrame) -> pd.DataFrame:
    for col in PREDICTION_COLUMNS:
        if col in FLOAT_COLUMNS:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        else:
            df[col] = df[col].astype("string")
    return df


def _overlay(id_: str, split: str, store: ImageStore, regions: dict[str, pd.DataFrame],
             hand_reports: Path, row: dict, out_dir: Path, side: int = 384) -> None:  # fmt: skip
    """overlays/ID.png: left the hand localizer's input with its CAM (red) and box; right
    the stored image at the input's own aspect ratio (a store of squares is stretched
    back) with the hand (green), R1 (red) and R2 (cyan) boxes."""
    img = store.get(id_).pixels
    first = regions[STAGES[0]].loc[id_]
    ow, oh = float(first["orig_width"]), float(first["orig_height"])
    f = side / max(ow, oh)
    tw, th = max(1, round(ow * f)), max(1, round(oh * f))
    right = Image.fromarray(img).convert("RGB").resize((tw, th), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(right)
    for stage in STAGES:
        r = regions[stage].loc[id_]
        if r["status"] == "error" or pd.isna(r["x0"]):
            continue
        draw.rectangle([r["x0"] * f, r["y0"] * f, r["x1"] * f, r["y1"] * f],
                       outline=COLOURS[stage], width=2)  # fmt: skip
    cam_f = hand_reports / "overlays" / f"{split}_{id_}.png"
    left = Image.open(cam_f).convert("RGB").resize((side, side)) if cam_f.is_file() else None
    sheet = Image.new("RGB", (2 * side, side + 22))
    if left is not None:
        sheet.paste(left, (0, 22))
    sheet.paste(right, (side + (side - right.width) // 2, 22))
    d = ImageDraw.Draw(sheet)
    d.text((4, 4), f"{id_}  BA {row['boneage_months']:.1f} mo (SD {row['sd_months']:.1f})  "
                   f"hand=green R1=red R2=cyan", fill=(255, 255, 0))  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{id_}.png.tmp"
    write_png(tmp, sheet)
    os.replace(tmp, out_dir / f"{id_}.png")


def _reject_flags(opened: OpenedModel) -> str:
    return "qc_reject;model_modified" if opened.modified else "qc_reject"


def rejected_rows(opened: OpenedModel, rejected: list[Rejected]) -> pd.DataFrame:
    rows = []
    for r in rejected:
        row = dict.fromkeys(PREDICTION_COLUMNS)
        row.update(id=r.id or r.source, source=r.source, status="error",
                   error=f"{r.reason.value}: {r.detail}" + (f" (CSV row {r.row})" if r.row else ""),
                   flags=_reject_flags(opened), model_name=opened.name,
                   model_version=opened.version, sds_reference=REFERENCE_ID)  # fmt: skip
        rows.append(row)
    return typed_predictions(pd.DataFrame(rows, columns=PREDICTION_COLUMNS))


def candidates_from_frame(df: pd.DataFrame) -> list[Candidate]:
    """Rows with `path` (required), optional `id`, `sex` (M/F/...), and
    `chronological_age_months` → candidates (the pyfunc model's input)."""
    if "path" not in df.columns:
        raise ValueError(f"input needs a 'path' column; got {list(df.columns)}")
    out = []
    seen: set[str] = set()
    for k, r in enumerate(df.to_dict("records")):
        path = Path(str(r["path"])).expanduser().resolve()
        id_ = str(r.get("id") or "") or id_from_relpath(path.name) or f"row{k}"
        if id_ in seen:
            id_ = f"{id_}_{k}"
        seen.add(id_)
        sex_raw = r.get("sex")
        sex = parse_sex(str(sex_raw)) if sex_raw is not None and not pd.isna(sex_raw) else None
        ca = r.get("chronological_age_months")
        ca = None if ca is None or pd.isna(ca) else float(ca)
        out.append(Candidate(id_, path, path.name, sex, "csv" if sex else "missing", None, ca,
                             k + 2))  # fmt: skip
    return out


def score_frame(opened: OpenedModel, df: pd.DataFrame, work: Path | None = None) -> pd.DataFrame:
    """Score a DataFrame of image paths (see `candidates_from_frame`) in memory-bounded
    shards; returns the prediction rows in input order."""
    return score_in_shards(opened, candidates_from_frame(df), work)


def score_in_shards(opened: OpenedModel, cands: list[Candidate], work: Path | None = None
                    ) -> pd.DataFrame:  # fmt: skip
    """Score candidates in shards of params score.shard_size (memory-bounded), in a
    scratch dir (`work`, else a temporary one); the rows in input order."""
    import tempfile

    size = opened.bundle.params.score.shard_size
    with tempfile.TemporaryDirectory(prefix="boneage-score-") as tmp:
        base = Path(work or tmp)
        parts = [score_candidates(opened, cands[i : i + size], base / f"s{i}")
                 for i in range(0, len(cands), size)]  # fmt: skip
    if not parts:
        return typed_predictions(pd.DataFrame(columns=PREDICTION_COLUMNS))
    return pd.concat(parts, ignore_index=True)
