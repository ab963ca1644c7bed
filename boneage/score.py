"""Scoring new cohorts end to end: image → hand / R1 / R2 localization → crops →
aggregator (+ the carpal-only head) → age distribution → clinical outputs.

The predictor is a *bundle* directory (built by `build_bundle`, logged to the registry as
an MLflow pyfunc by boneage.registry):

    bundle.json                    format, name, training age range, reference, provenance,
                                   and the sha256 of every other file (files_sha256)
    params.yaml                    the params the models were trained/attended with
    localizer_{hand,r1,r2}/        model.pt + config.json
    aggregator/ carpal/            model.pt + config.json
    qc/                            the image QC network (boneage.qc) scoring runs first

Loading verifies the bundle: every file's sha256 must match bundle.json and no file may
be missing or unrecorded; otherwise scoring is refused (`--trust-modified` scores anyway
and says so in every output). The model version a local bundle writes to predictions is
a hash of the files it actually holds (`local-<12 hex>`, `-modified` appended when they
were not the recorded ones).

Each shard of a cohort runs through the *same* functions as the training pipeline (ingest,
attend ×3, the aggregator's region stacking) in a scratch directory, so scoring and
training can never disagree on preprocessing. Shards are written with atomic renames;
a rerun skips finished shards and yields exactly one row per input file. One bad image
gives a row with status=error and the reason; the run goes on.

Outputs (OUT): predictions.parquet / predictions.csv (one row per input, columns
`PREDICTION_COLUMNS`), overlays/ID.png (hand CAM + hand/R1/R2 boxes), report.html
(self-contained) and summary.json. No DICOM header value other than sex and the derived
chronological age is read into any output.

Sex unknown (folder cohorts without CSV or DICOM sex): the models get the midpoint sex
code 0.5 (as in training for 'U'), `sex_used` is 'U', no SDS is computed (the reference is
sex-specific) and the row is flagged `sex_unknown`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch
import yaml
from PIL import Image, ImageDraw

from boneage import calibration
from boneage.aggregator import missing_reason, region_arrays
from boneage.attend import attend
from boneage.cohort import Candidate, Rejected, discover, id_from_relpath, parse_sex
from boneage.config import Params
from boneage.fingerprint import file_hash
from boneage.ingest import ingest_candidates
from boneage.ldl import distribution_quantiles, distribution_sd, expectation
from boneage.localizer import STAGES, StagePaths, read_manifest
from boneage.reference import REFERENCE_ID, bone_age_sds
from boneage.review import COLOURS
from boneage.store import ImageStore
from boneage.training import TensorData, load_model, predict, resolve_device, sex_code

BUNDLE_FORMAT = "boneage-bundle/2"  # /2: bundle.json records files_sha256 (verified on load)
BUNDLE_META = "bundle.json"
# the params sections a bundle carries (what scoring and the models depend on); the DVC
# `bundle` stage lists the same sections
BUNDLE_PARAM_SECTIONS = ("ingest", "localizer", "attend", "aggregator", "carpal", "score",
                         "registry")  # fmt: skip
COMPONENTS = ("localizer_hand", "localizer_r1", "localizer_r2", "aggregator", "carpal")
CALIBRATION_FILE = "calibration.json"
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


class ScoreError(RuntimeError):
    """The model or the cohort cannot be opened: nothing was scored (exit code 2)."""


# ----------------------------------------------------------------------------- bundle


@dataclass(frozen=True)
class Bundle:
    root: Path
    meta: dict
    params: Params
    content_sha256: str = ""  # over the files the bundle holds (what was verified)
    modified: tuple[str, ...] = ()  # what differs from bundle.json (only with trust_modified)

    def component(self, name: str) -> Path:
        return self.root / name

    @property
    def calibration(self) -> dict | None:
        """{'aggregator': cal, 'carpal': cal} fitted on validation (boneage.calibration),
        or None for a bundle built without one (scored uncalibrated, with a warning)."""
        f = self.root / CALIBRATION_FILE
        if not self.meta.get("calibration") or not f.is_file():
            return None
        from boneage.calibration import load

        try:
            return load(f)["models"]
        except ValueError as exc:
            raise ScoreError(str(exc)) from None

    def qc_model(self) -> str:
        """The QC model scoring uses: the bundle's own (qc/), else params ingest.qc.model."""
        return str(self.root / "qc") if (self.root / "qc").is_dir() else self.params.ingest.qc.model


def bundle_model_dirs(models_root: Path) -> dict[str, Path]:
    """The component directories of a pipeline's models root (data/models layout)."""
    return {c: Path(models_root) / c for c in COMPONENTS}


def bundle_files(root: Path) -> dict[str, str]:
    """{posix path relative to the bundle: sha256} of every file but bundle.json."""
    root = Path(root)
    files = (f for f in sorted(root.rglob("*")) if f.is_file())
    return {f.relative_to(root).as_posix(): file_hash(f) for f in files
            if f.relative_to(root).as_posix() != BUNDLE_META}  # fmt: skip


def seal_bundle(root: Path, meta: dict) -> dict:
    """Write bundle.json = meta + the sha256 of every other file in the bundle."""
    meta = dict(meta, format=BUNDLE_FORMAT, files_sha256=bundle_files(root))
    (Path(root) / BUNDLE_META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def verify_bundle(root: Path, meta: dict) -> list[str]:
    """What in the bundle differs from what its bundle.json records ([] = verified)."""
    recorded = meta.get("files_sha256")
    if not isinstance(recorded, dict) or not recorded:
        return ["bundle.json records no per-file checksums (files_sha256): the bundle was "
                "made before boneage verified bundles; rebuild it with `boneage bundle` or "
                "re-export it"]  # fmt: skip
    actual = bundle_files(root)
    problems = []
    for rel, h in sorted(recorded.items()):
        if rel not in actual:
            problems.append(f"{rel}: missing")
        elif actual[rel] != h:
            problems.append(f"{rel}: contents changed (sha256 {actual[rel][:12]}..., "
                            f"bundle.json records {str(h)[:12]}...)")  # fmt: skip
    problems += [
        f"{rel}: not recorded in bundle.json" for rel in sorted(set(actual) - set(recorded))
    ]
    for c, h in (meta.get("weights_sha256") or {}).items():
        if recorded.get(f"{c}/model.pt") != h:
            problems.append(
                f"{c}/model.pt: weights_sha256 and files_sha256 of bundle.json disagree"
            )
    return problems


def _copy_qc(src: Path, out: Path) -> None:
    src = Path(src)
    (out / "qc").mkdir()
    for f in ("model.pt", "config.json", "metrics.json"):
        if (src / f).is_file():
            shutil.copy2(src / f, out / "qc" / f)
    if not (out / "qc" / "model.pt").is_file():
        raise FileNotFoundError(f"{src}: no QC model (model.pt); run boneage train-qc")


def build_bundle(
    params: Params, model_dirs: dict[str, Path], out: Path, name: str,
    calibration: Path | None = None,
) -> Bundle:  # fmt: skip
    """Copy the five trained models, the QC model (model_dirs['qc'], else the one params
    ingest.qc.model names: by default the one shipped with the package), the calibration
    fitted for this aggregator and carpal head (`boneage calibrate`) and the params into a
    self-contained, sealed bundle directory."""
    from boneage.qc import qc_dir

    missing = [c for c in COMPONENTS if c not in model_dirs]
    if missing:
        raise ValueError(f"bundle needs models for {', '.join(missing)}")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for c in COMPONENTS:
        src = Path(model_dirs[c])
        for f in ("model.pt", "config.json"):
            if not (src / f).is_file():
                raise FileNotFoundError(f"{src / f}: missing (train the {c} model first)")
        (out / c).mkdir()
        for f in ("model.pt", "config.json", "metrics.json"):
            if (src / f).is_file():
                shutil.copy2(src / f, out / c / f)
    _copy_qc(model_dirs.get("qc") or qc_dir(params.ingest.qc.model), out)
    dumped = {k: v for k, v in params.model_dump(mode="json", by_alias=True).items()
              if k in BUNDLE_PARAM_SECTIONS}  # fmt: skip
    agg = json.loads((out / "aggregator" / "config.json").read_text())
    # the params describe the aggregator the bundle holds (e.g. an ablation row's)
    dumped["aggregator"]["regions"] = list(agg["regions"])
    dumped["aggregator"]["img_size"] = agg["img_size"]
    (out / "params.yaml").write_text(yaml.safe_dump(dumped, sort_keys=False))
    meta = {
        "format": BUNDLE_FORMAT,
        "name": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "regions": agg["regions"],
        "train_age_range_months": agg["metrics"]["train_age_range"],
        "sds_reference": REFERENCE_ID,
        "params_sha256": params_hash(Params.model_validate(dumped)),
        "weights_sha256": {c: file_hash(out / c / "model.pt") for c in COMPONENTS},
    }
    if calibration is not None:
        meta["calibration"] = _bundle_calibration(Path(calibration), model_dirs, out)
    seal_bundle(out, meta)
    return load_bundle(out)


def _bundle_calibration(path: Path, model_dirs: dict[str, Path], out: Path) -> dict:
    """Copy a calibration.json into the bundle after checking it was fitted for the
    bundle's aggregator and carpal head (their weights' hashes)."""
    from boneage.calibration import load

    doc = load(path)
    for comp, cal in doc["models"].items():
        want = cal["fitted_on"].get("model_sha256")
        if comp not in COMPONENTS or want != file_hash(Path(model_dirs[comp]) / "model.pt"):
            raise ValueError(f"{path}: its {comp} calibration was fitted for another model "
                             f"({cal['fitted_on'].get('model_dir')})")  # fmt: skip
    shutil.copy2(path, out / CALIBRATION_FILE)
    versions = {c: cal["version"] for c, cal in doc["models"].items()}
    return {"file": CALIBRATION_FILE, "versions": versions}


def load_bundle(root: Path, trust_modified: bool = False) -> Bundle:
    """Open and verify a bundle (see the module docstring). Raises ScoreError when it is
    no bundle, is modified (unless `trust_modified`) or its params are invalid."""
    from boneage.config import ConfigError, load_params

    root = Path(root)
    meta_f = root / BUNDLE_META
    if not meta_f.is_file():
        raise ScoreError(f"{root}: not a boneage model bundle (no bundle.json)")
    try:
        meta = json.loads(meta_f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScoreError(f"{meta_f}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") not in (BUNDLE_FORMAT, "boneage-bundle/1"):
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ScoreError(f"{root}: bundle format {got!r}, expected {BUNDLE_FORMAT}")
    problems = verify_bundle(root, meta)
    if problems and not trust_modified:
        shown = "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        raise ScoreError(
            f"{root}: the model bundle does not match its bundle.json; refusing to score "
            f"with a modified model:\n  {shown}\nRebuild the bundle (boneage bundle) or, "
            "for an experiment only, pass --trust-modified (recorded in every output)")  # fmt: skip
    for c in COMPONENTS:
        if not (root / c / "model.pt").is_file():
            raise ScoreError(f"{root / c}: model.pt missing from the bundle")
    try:
        params = load_params(root / "params.yaml")
    except ConfigError as exc:
        raise ScoreError(f"{root}: the bundle's params.yaml is invalid: {exc}") from exc
    files = json.dumps(bundle_files(root), sort_keys=True).encode()
    return Bundle(root, meta, params, hashlib.sha256(files).hexdigest(), tuple(problems))


def seal_legacy_bundle(root: Path) -> dict:
    """Add per-file checksums to a bundle.json written before bundles were verified
    (format boneage-bundle/1), after checking the checksums it did record (the weights).
    Only for a bundle whose other files are known to be unmodified (e.g. committed in
    git); returns the new bundle.json."""
    root = Path(root)
    meta = json.loads((root / BUNDLE_META).read_text())
    if meta.get("files_sha256"):
        raise ScoreError(f"{root}: bundle.json already records per-file checksums")
    for c, h in meta["weights_sha256"].items():
        if file_hash(root / c / "model.pt") != h:
            raise ScoreError(f"{root / c / 'model.pt'}: does not match its weights_sha256")
    return seal_bundle(root, meta)


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


def calibration_version(bundle: Bundle) -> str:
    """What predictions say about calibration: 'aggregator cal-… / carpal cal-…', or
    'none' for a bundle without one (estimates and intervals are then uncalibrated)."""
    versions = (bundle.meta.get("calibration") or {}).get("versions")
    if not versions:
        return "none"
    return " / ".join(f"{c} {v}" for c, v in sorted(versions.items()))


def params_hash(params: Params) -> str:
    blob = json.dumps(params.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class OpenedModel:
    bundle: Bundle
    name: str
    version: str
    uri: str
    _loaded: dict = field(default_factory=dict, repr=False, compare=False)

    def network(self, component: str, device: torch.device) -> tuple:
        """(model, meta) of a bundle component, loaded once and reused for every shard.
        Raises ScoreError when it cannot be loaded (a modified or foreign model dir)."""
        key = (component, str(device))
        if key not in self._loaded:
            try:
                self._loaded[key] = load_model(self.bundle.component(component), device)
            except Exception as exc:  # noqa: BLE001 - unpickling refused, unknown backbone, ...
                msg = " ".join(str(exc).split())[:400]
                where = self.bundle.component(component)
                raise ScoreError(f"{where}: cannot load the {component} network "
                                 f"({type(exc).__name__}: {msg})") from exc  # fmt: skip
        return self._loaded[key]

    def check(self) -> None:
        """Load every network and the QC model now, so that a broken bundle is a clear
        error before any image is touched (ScoreError)."""
        from boneage.qc import QCModelError, load_qc

        device = resolve_device(self.bundle.params.attend.device)
        for c in COMPONENTS:
            self.network(c, device)
        if self.bundle.params.score.qc:
            try:
                load_qc(self.bundle.qc_model())
            except QCModelError as exc:
                raise ScoreError(str(exc)) from exc

    @property
    def modified(self) -> tuple[str, ...]:
        return self.bundle.modified


def open_model(ref: str | Path, trust_modified: bool = False) -> OpenedModel:
    """A local bundle dir, a local MLflow model dir holding a bundle, or any models:/ or
    runs:/ URI (resolved through the registry; needs boneage.registry / MLflow). Local
    bundles are verified (`load_bundle`); the version is a hash of their files."""
    ref_s = str(ref)
    if "://" in ref_s or ref_s.startswith("models:/") or ref_s.startswith("runs:/"):
        from boneage.registry import open_registered

        return open_registered(ref_s)
    path = Path(ref_s)
    if not path.exists():
        raise ScoreError(f"{path}: model not found (give a bundle dir or a models:/ URI)")
    if (path / "bundle.json").is_file():
        b = load_bundle(path, trust_modified)
    else:
        found = sorted(path.glob("**/bundle.json"))
        if not found:
            raise ScoreError(f"{path}: no boneage bundle inside (no bundle.json)")
        b = load_bundle(found[0].parent, trust_modified)
    version = "local-" + b.content_sha256[:12] + ("-modified" if b.modified else "")
    return OpenedModel(b, str(b.meta.get("name", "boneage")), version, str(path.resolve()))


# ----------------------------------------------------------------------------- one shard


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
        p = predict(model, data, device)
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
                   loaded=opened.network(comp, device))  # fmt: skip
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
    return _typed(pd.DataFrame(rows, columns=PREDICTION_COLUMNS))


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    for col in PREDICTION_COLUMNS:
        if col in FLOAT_COLUMNS:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        else:
            df[col] = df[col].astype("string")
    return df


def _overlay(id_: str, split: str, store: ImageStore, regions: dict[str, pd.DataFrame],
             hand_reports: Path, row: dict, out_dir: Path, side: int = 384) -> None:  # fmt: skip
    """overlays/ID.png: left the hand localizer's input with its CAM (red) and box; right
    the stored image with the hand (green), R1 (red) and R2 (cyan) boxes."""
    img = store.get(id_).pixels
    h, w = img.shape
    rgb = Image.fromarray(img).convert("RGB")
    draw = ImageDraw.Draw(rgb)
    lw = max(2, round(max(h, w) / 250))
    for stage in STAGES:
        r = regions[stage].loc[id_]
        if r["status"] == "error" or pd.isna(r["x0"]):
            continue
        sx, sy = w / float(r["orig_width"]), h / float(r["orig_height"])
        draw.rectangle([r["x0"] * sx, r["y0"] * sy, r["x1"] * sx, r["y1"] * sy],
                       outline=COLOURS[stage], width=lw)  # fmt: skip
    f = side / max(h, w)
    right = rgb.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)
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
    sheet.save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, out_dir / f"{id_}.png")


# ----------------------------------------------------------------------------- a cohort


def _reject_flags(opened: OpenedModel) -> str:
    return "qc_reject;model_modified" if opened.modified else "qc_reject"


def _rejected_rows(opened: OpenedModel, rejected: list[Rejected]) -> pd.DataFrame:
    rows = []
    for r in rejected:
        row = dict.fromkeys(PREDICTION_COLUMNS)
        row.update(id=r.id or r.source, source=r.source, status="error",
                   error=f"{r.reason.value}: {r.detail}" + (f" (CSV row {r.row})" if r.row else ""),
                   flags=_reject_flags(opened), model_name=opened.name,
                   model_version=opened.version, sds_reference=REFERENCE_ID)  # fmt: skip
        rows.append(row)
    return _typed(pd.DataFrame(rows, columns=PREDICTION_COLUMNS))


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _atomic_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cand_dict(c: Candidate) -> dict:
    return {
        "id": c.id, "path": str(c.path), "source": c.source, "sex": c.sex,
        "sex_source": c.sex_source, "boneage_months": c.boneage_months,
        "chronological_age_months": c.chronological_age_months, "label_row": c.label_row,
    }  # fmt: skip


def _cand(d: dict) -> Candidate:
    return Candidate(
        d["id"], Path(d["path"]), d["source"], d["sex"], d["sex_source"],
        d["boneage_months"], d["chronological_age_months"], d["label_row"],
    )  # fmt: skip


def plan_scoring(
    opened: OpenedModel,
    cohort_dir: Path,
    out: Path,
    labels: Path | None = None,
    shard_size: int | None = None,
) -> dict:
    """Discover the cohort, cut it into shards and write OUT/shards/plan.json (the
    self-contained list of every shard's inputs) and the rows of the files rejected at
    discovery. A rerun into the same OUT must find the same plan; another cohort, model or
    shard size is refused. Returns the plan."""
    from boneage.cohort import CohortError

    shard_size = shard_size or opened.bundle.params.score.shard_size
    out = Path(out)
    _check_out(out, Path(cohort_dir))
    try:
        cohort = discover(Path(cohort_dir), labels, require_labels=False, allow_unknown_sex=True)
    except CohortError as exc:
        raise ScoreError(str(exc)) from exc
    if not cohort.candidates and not cohort.rejected:
        raise ScoreError(f"{cohort_dir}: no files to score")
    shards_dir = out / "shards"
    cands = cohort.candidates
    plan = {
        "model": opened.uri, "model_version": opened.version,
        "cohort": str(Path(cohort_dir).resolve()),
        "labels": str(Path(labels).resolve()) if labels else None,
        "shards": [[_cand_dict(c) for c in cands[i : i + shard_size]]
                   for i in range(0, len(cands), shard_size)],
        "rejected": [r.as_dict() for r in cohort.rejected],
        "duplicate_content": _duplicate_content(cands),
    }  # fmt: skip
    plan_f = shards_dir / "plan.json"
    if plan_f.is_file():
        try:
            earlier = json.loads(plan_f.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ScoreError(f"{plan_f}: unreadable ({exc}); use a new --out") from exc
        if earlier != plan:
            raise ScoreError(
                f"{out}: holds a scoring run of a different cohort, model or shard size "
                f"(see {plan_f}); use a new --out")  # fmt: skip
    else:
        try:
            shards_dir.mkdir(parents=True, exist_ok=True)
            _atomic_text(json.dumps(plan, indent=1) + "\n", plan_f)
        except OSError as exc:
            raise ScoreError(f"{out}: cannot write the outputs there ({exc.strerror or exc})"
                             ) from exc  # fmt: skip
    rej_f = shards_dir / "rejected.parquet"
    if not rej_f.is_file():
        _atomic_parquet(_rejected_rows(opened, cohort.rejected), rej_f)
    return plan


def _check_out(out: Path, cohort_dir: Path) -> None:
    """OUT must be a new or empty folder, or one holding an earlier `boneage score` run
    (shards/plan.json; plan_scoring then checks it is of the same cohort and model) —
    scoring never writes into, or deletes from, a folder of the user's; nor may OUT lie
    inside the cohort (its outputs would become inputs). Raises ScoreError."""
    if out.exists() and not out.is_dir():
        raise ScoreError(f"{out}: --out exists and is not a folder")
    if cohort_dir.is_dir() and out.resolve().is_relative_to(cohort_dir.resolve()):
        raise ScoreError(f"{out}: --out lies inside the cohort folder {cohort_dir}; "
                         "choose a folder outside it")  # fmt: skip
    if out.is_dir():
        try:
            # an empty shards/ left by a run killed before its plan was written is ours
            entries = [
                e
                for e in out.iterdir()
                if not (e.name == "shards" and e.is_dir() and not any(e.iterdir()))
            ]
        except OSError as exc:
            raise ScoreError(f"{out}: cannot read the --out folder ({exc.strerror or exc})"
                             ) from exc  # fmt: skip
        if entries and not (out / "shards" / "plan.json").is_file():
            raise ScoreError(
                f"{out}: the folder is not empty and holds no earlier `boneage score` run "
                "(no shards/plan.json); scoring writes only into a new or empty folder, or "
                "resumes its own run there. Nothing in it was changed.")  # fmt: skip
    else:
        try:
            out.mkdir(parents=True)
        except OSError as exc:
            raise ScoreError(f"{out}: cannot create the --out folder ({exc.strerror or exc})"
                             ) from exc  # fmt: skip
    if not os.access(out, os.W_OK | os.X_OK):
        raise ScoreError(f"{out}: the --out folder is not writable")


def _duplicate_content(cands: list[Candidate]) -> dict[str, str]:
    """{id: first id with the same file bytes} for every id whose file is byte-identical
    to an earlier candidate's (the same radiograph under two ids; flagged, both scored)."""
    first: dict[str, str] = {}
    dup: dict[str, str] = {}
    for c in cands:
        try:
            h = file_hash(c.path)
        except OSError:
            continue  # unreadable: ingest reports it
        if h in first:
            dup[c.id] = first[h]
            dup.setdefault(first[h], first[h])
        else:
            first[h] = c.id
    return dup


def _remove_scratch(out: Path, n_shards: int) -> None:
    """Delete only what score_shard created: OUT/.work/shard-K (and .work once empty)."""
    work = out / ".work"
    for k in range(n_shards):
        shutil.rmtree(work / f"shard-{k:05d}", ignore_errors=True)
    try:
        work.rmdir()
    except OSError:
        pass  # absent, or holds something score did not make: left alone


def read_plan(out: Path) -> dict:
    f = Path(out) / "shards" / "plan.json"
    if not f.is_file():
        raise ScoreError(f"{f}: no scoring plan (plan_scoring first)")
    return json.loads(f.read_text())


def score_shard(opened: OpenedModel, out: Path, k: int, plan: dict | None = None) -> dict:
    """Score shard k of OUT's plan unless its file exists (atomic rename when done).
    `plan`: the plan already in memory (else read from OUT)."""
    out = Path(out)
    plan = plan or read_plan(out)
    f = out / "shards" / f"shard-{k:05d}.parquet"
    if f.is_file():
        return {"shard": k, "skipped": True}
    started = time.time()
    work = out / ".work" / f"shard-{k:05d}"
    dup = plan.get("duplicate_content") or {}
    extra = {i: ["duplicate_content"] for i in dup}
    df = score_candidates(opened, [_cand(d) for d in plan["shards"][k]], work, out / "overlays",
                          extra)  # fmt: skip
    _atomic_parquet(df, f)
    shutil.rmtree(work, ignore_errors=True)
    return {"shard": k, "skipped": False, "n": len(df), "n_ok": int((df["status"] == "ok").sum()),
            "started": started, "finished": time.time()}  # fmt: skip


def finish_scoring(opened: OpenedModel, out: Path, shard_results: list[dict],
                   seconds: float | None = None) -> dict:  # fmt: skip
    """Assemble every shard (in plan order) + the rejected rows into predictions.parquet /
    .csv, summary.json and report.html."""
    out = Path(out)
    plan = read_plan(out)
    n = len(plan["shards"])
    missing = [k for k in range(n) if not (out / "shards" / f"shard-{k:05d}.parquet").is_file()]
    if missing:
        raise ScoreError(f"{out}: shards {missing} not scored yet")
    _remove_scratch(out, n)
    parts = [pd.read_parquet(out / "shards" / f"shard-{k:05d}.parquet") for k in range(n)]
    preds = pd.concat(parts + [pd.read_parquet(out / "shards" / "rejected.parquet")],
                      ignore_index=True)  # fmt: skip
    preds = _typed(preds[PREDICTION_COLUMNS])
    _atomic_parquet(preds, out / "predictions.parquet")
    _atomic_text(preds.to_csv(index=False, float_format="%.2f"), out / "predictions.csv")
    summary = summarize(preds, opened)
    summary.update(shards=n, shards_scored_now=sum(not r.get("skipped") for r in shard_results),
                   shards_reused=sum(bool(r.get("skipped")) for r in shard_results))  # fmt: skip
    timed = [r for r in shard_results if "started" in r]
    if timed:  # the shards scored now: from the first start to the last end (any workers)
        t0, t1 = min(r["started"] for r in timed), max(r["finished"] for r in timed)
        rate = sum(r["n"] for r in timed) / max(t1 - t0, 1e-9)
        summary.update(first_shard_started=t0, last_shard_finished=t1,
                       images_per_second=round(rate, 3))  # fmt: skip
    if seconds is not None:
        summary["seconds"] = round(seconds, 1)
    summary["model_verified"] = not opened.modified
    if opened.modified:  # --trust-modified: what was not as bundle.json records it
        summary["trust_modified"] = True
        summary["modified_files"] = list(opened.modified)
    _atomic_text(json.dumps(summary, indent=2) + "\n", out / "summary.json")
    from boneage.report import write_report

    write_report(preds, summary, out, max_thumbnails=opened.bundle.params.score.report_thumbnails,
                 calibration=(opened.bundle.calibration or {}).get("aggregator"))  # fmt: skip
    return summary


def score_cohort(
    model: str | Path | OpenedModel,
    cohort_dir: Path,
    out: Path,
    labels: Path | None = None,
    shard_size: int | None = None,
    log: Callable[[str], None] = lambda s: None,
    trust_modified: bool = False,
) -> dict:
    """Score every file of a cohort into OUT (resumable; see the module docstring):
    plan_scoring → score_shard for each shard → finish_scoring (flows/score_cohort.py maps
    the same three steps over workers). Raises ScoreError when the model or the cohort
    cannot be opened, or OUT cannot be used (`_check_out`). `trust_modified`: score with
    a bundle whose files differ from its bundle.json (recorded in every output)."""
    t0 = time.perf_counter()
    _check_out(Path(out), Path(cohort_dir))  # before the model is even opened
    opened = model if isinstance(model, OpenedModel) else open_model(model, trust_modified)
    opened.check()
    plan = plan_scoring(opened, cohort_dir, out, labels, shard_size)
    results = []
    for k in range(len(plan["shards"])):
        r = score_shard(opened, out, k, plan)
        results.append(r)
        if not r["skipped"]:
            log(f"shard {k + 1}/{len(plan['shards'])}: {r['n_ok']}/{r['n']} ok")
    return finish_scoring(opened, out, results, time.perf_counter() - t0)


def summarize(preds: pd.DataFrame, opened: OpenedModel) -> dict:
    ok = preds[preds["status"] == "ok"]
    flags = [f for s in ok["flags"].fillna("") for f in s.split(";") if f]
    out = {
        "model": opened.name, "model_version": opened.version, "n": len(preds),
        "n_ok": len(ok), "n_error": int((preds["status"] == "error").sum()),
        "flags": {f: flags.count(f) for f in sorted(set(flags))},
        "sds_reference": REFERENCE_ID, "calibration": calibration_version(opened.bundle),
    }  # fmt: skip
    ref = ok["reference_boneage_months"]
    if ref.notna().any():
        err = (ok["boneage_months"] - ref)[ref.notna()]
        out["mae_vs_reference_months"] = float(err.abs().mean())
        out["n_with_reference"] = int(ref.notna().sum())
    return out


# ----------------------------------------------------------------------------- a DataFrame


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
        return _typed(pd.DataFrame(columns=PREDICTION_COLUMNS))
    return pd.concat(parts, ignore_index=True)
