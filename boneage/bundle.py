"""The predictor bundle: one directory holding everything `boneage score` needs, built by
the `bundle` stage (`build_bundle`), verified on every load (`load_bundle`) and logged to
the registry as an MLflow pyfunc by boneage.registry:

    bundle.json                    format, name, training age range, reference, provenance,
                                   and the sha256 of every other file (files_sha256)
    params.yaml                    the params the models were trained/attended with
                                   (sections BUNDLE_PARAM_SECTIONS)
    localizer_{hand,r1,r2}/        model.pt + config.json
    aggregator/ carpal/            model.pt + config.json
    calibration.json               bias correction and interval calibration (optional)
    qc/                            the image QC network (boneage.qc) scoring runs first

Loading verifies the bundle: every file's sha256 must match bundle.json and no file may
be missing or unrecorded; otherwise scoring is refused (`--trust-modified` scores anyway
and says so in every output). The model version a local bundle writes to predictions is
a hash of the files it actually holds (`local-<12 hex>`, `-modified` appended when they
were not the recorded ones). Registered models (models:/, runs:/) are opened through
boneage.registry.open_model, which calls `open_bundle` for local paths.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
import yaml

from boneage.config import Params
from boneage.fingerprint import file_hash
from boneage.precision import resolve_device
from boneage.reference import REFERENCE_ID
from boneage.training import load_model

BUNDLE_FORMAT = "boneage-bundle/2"  # /2: bundle.json records files_sha256 (verified on load)


BUNDLE_META = "bundle.json"


# the params sections a bundle carries (what scoring and the models depend on); the DVC
# `bundle` stage lists the same sections
BUNDLE_PARAM_SECTIONS = ("ingest", "localizer", "attend", "aggregator", "carpal", "score",
                         "registry")  # fmt: skip


COMPONENTS = ("localizer_hand", "localizer_r1", "localizer_r2", "aggregator", "carpal")


CALIBRATION_FILE = "calibration.json"


class ScoreError(RuntimeError):
    """The model or the cohort cannot be opened: nothing was scored (exit code 2)."""


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
    dumped = bundle_sections(params)
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
        "params_sha256": _json_sha256(dumped),  # = params_hash of the bundle's params
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
        params = load_params(root / "params.yaml", complete=BUNDLE_PARAM_SECTIONS, trace=False)
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


def calibration_version(bundle: Bundle) -> str:
    """What predictions say about calibration: 'aggregator cal-… / carpal cal-…', or
    'none' for a bundle without one (estimates and intervals are then uncalibrated)."""
    versions = (bundle.meta.get("calibration") or {}).get("versions")
    if not versions:
        return "none"
    return " / ".join(f"{c} {v}" for c, v in sorted(versions.items()))


def bundle_sections(params: Params) -> dict:
    """The params sections a bundle holds (BUNDLE_PARAM_SECTIONS), as plain data."""
    return {s: getattr(params, s).model_dump(mode="json", by_alias=True)
            for s in BUNDLE_PARAM_SECTIONS}  # fmt: skip


def _json_sha256(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def params_hash(params: Params) -> str:
    """SHA-256 of the bundle sections of `params` (what a bundle's models depend on)."""
    return _json_sha256(bundle_sections(params))


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


def open_bundle(path: str | Path, trust_modified: bool = False) -> OpenedModel:
    """A local bundle dir, or a local MLflow model dir holding a bundle, verified
    (`load_bundle`); the version is a hash of its files. Registry URIs:
    boneage.registry.open_model."""
    path = Path(path)
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
