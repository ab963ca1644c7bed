"""Model registry: register the end-to-end predictor as an MLflow pyfunc, and promote a
challenger to champion through a gate.

- `register_bundle`: logs boneage/mlflow_model.py ("models from code") with the bundle as
  its artifact, a signature and an input example; registers a new version of the model
  (params `registry.model_name`, default `boneage`) with alias `challenger`, tagged with the
  git commit, the DVC hashes of the data and models it came from, and the params hash.
- `promote`: scores challenger and champion on the same fixed evaluation set (params
  `registry.eval_*`) and moves alias `champion` to the challenger only when there is no
  champion yet, or when the challenger's MAE is lower by at least `registry.margin_months`
  and it failed on no more images. The decision, both MAEs and the evaluation set are
  tagged on the challenger version; the alias switch is one registry call.

This module and boneage.tracking / boneage.mlflow_model are the only ones importing MLflow.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml

from boneage.bundle import OpenedModel, ScoreError, load_bundle, open_bundle, params_hash
from boneage.cohort import discover
from boneage.config import Params
from boneage.score import score_candidates
from boneage.split import assign_split
from boneage.tracking import Tracker, default_tracking_uri

EXPERIMENT = "boneage-registry"
CHAMPION, CHALLENGER = "champion", "challenger"


def is_registry_uri(ref: str | Path) -> bool:
    """models:/…, runs:/… or any other URI (resolved through MLflow), not a local path."""
    ref_s = str(ref)
    return "://" in ref_s or ref_s.startswith(("models:/", "runs:/"))


def open_model(ref: str | Path, trust_modified: bool = False) -> OpenedModel:
    """What `boneage score --model` accepts: a local bundle dir or a local MLflow model
    dir holding one (boneage.bundle.open_bundle, verified), or a models:/ / runs:/ URI
    (`open_registered`; needs MLflow)."""
    if is_registry_uri(ref):
        return open_registered(str(ref))
    return open_bundle(ref, trust_modified)


def _client(uri: str | None = None):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # log-friendly
    import mlflow

    uri = uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow, mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    from boneage.score import FLOAT_COLUMNS, PREDICTION_COLUMNS  # noqa: I001 - lazy: MLflow types first

    inputs = Schema([
        ColSpec("string", "path"),
        ColSpec("string", "id", required=False),
        ColSpec("string", "sex", required=False),
        ColSpec("double", "chronological_age_months", required=False),
    ])  # fmt: skip
    outputs = Schema([ColSpec("double" if c in FLOAT_COLUMNS else "string", c, required=False)
                      for c in PREDICTION_COLUMNS])  # fmt: skip
    return ModelSignature(inputs=inputs, outputs=outputs)


def git_commit(cwd: Path | None = None) -> str:
    """HEAD of the repository (suffix -dirty with uncommitted tracked changes), or
    'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True).stdout.strip()  # fmt: skip
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_hashes(lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """{out path: md5} of every DVC-tracked output in dvc.lock (data and models)."""
    if not lock.is_file():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    out = {}
    for stage in (data.get("stages") or {}).values():
        for o in stage.get("outs", []) or []:
            if o.get("md5"):
                out[o["path"]] = o["md5"]
    return out


def register_bundle(
    bundle_dir: Path, params: Params, tracking_uri: str | None = None,
    extra_tags: dict[str, str] | None = None, dvc_lock: Path = Path("dvc.lock"),
) -> dict:  # fmt: skip
    """Log + register the bundle; alias `challenger` → the new version. Returns its info."""
    bundle = load_bundle(bundle_dir)
    name = params.registry.model_name
    mlflow, client = _client(tracking_uri)
    tracker = Tracker(uri=tracking_uri or default_tracking_uri())
    code = Path(__file__).with_name("mlflow_model.py")
    tags = {
        "git_commit": git_commit(),
        "params_sha256": params_hash(bundle.params),
        "bundle_params_sha256": bundle.meta["params_sha256"],
        "regions": "+".join(bundle.meta["regions"]),
        "sds_reference": bundle.meta["sds_reference"],
        **{f"dvc.{p}": h for p, h in dvc_hashes(dvc_lock).items()},
        **(extra_tags or {}),
    }
    example = pd.DataFrame({"path": ["/data/cohort/hand_0001.png"], "id": ["hand_0001"],
                            "sex": ["F"], "chronological_age_months": [120.0]})  # fmt: skip
    with tracker.run(EXPERIMENT, f"register-{name}", {"model_name": name}):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code),
            artifacts={"bundle": str(Path(bundle_dir).resolve())},
            signature=_signature(),
            input_example=example,
            registered_model_name=name,
        )
        mlflow.set_tags(tags)
        run_id = tracker.run_id
    version = str(info.registered_model_version)
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, str(v)[:5000])
    client.set_registered_model_alias(name, CHALLENGER, version)
    return {
        "model_name": name, "version": version, "run_id": run_id,
        "model_uri": f"models:/{name}/{version}", "alias": CHALLENGER, "tags": tags,
    }  # fmt: skip


def open_registered(uri: str, tracking_uri: str | None = None) -> OpenedModel:
    """Load a models:/ (or runs:/) URI through MLflow's pyfunc loader and return its
    bundle with the registered name and version."""
    mlflow, client = _client(tracking_uri)
    name, version = "boneage", "unknown"
    if uri.startswith("models:/"):
        ref = uri.removeprefix("models:/")
        try:
            if "@" in ref:
                name, alias = ref.split("@", 1)
                version = str(client.get_model_version_by_alias(name, alias).version)
            else:
                name, version = ref.split("/", 1)
                client.get_model_version(name, version)
        except Exception as exc:  # noqa: BLE001 - any registry failure: no such model
            raise ScoreError(f"{uri}: not found in the registry at {mlflow.get_tracking_uri()} "
                             f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
        uri = f"models:/{name}/{version}"
    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # noqa: BLE001
        raise ScoreError(f"{uri}: cannot load ({type(exc).__name__}: {exc})") from exc
    py = model.unwrap_python_model()
    o = py.opened
    return OpenedModel(o.bundle, name, version, uri)


# ----------------------------------------------------------------------------- promote


@dataclass
class EvalSet:
    description: str
    candidates: list
    ids_sha256: str


def evaluation_set(params: Params) -> EvalSet:
    r = params.registry
    cohort = discover(Path(r.eval_cohort), Path(r.eval_labels), require_labels=True,
                      allow_unknown_sex=False)  # fmt: skip
    cands = [
        c
        for c in cohort.candidates
        if r.eval_split == "all" or assign_split(c.id, params.ingest.split) == r.eval_split
    ]
    if not cands:
        raise ValueError(f"evaluation set empty: {r.eval_labels} split {r.eval_split}")
    ids = sorted(c.id for c in cands)
    h = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    desc = f"{r.eval_labels} split={r.eval_split} n={len(ids)} ids_sha256={h[:16]}"
    return EvalSet(desc, cands, h)


def model_mae(opened: OpenedModel, es: EvalSet) -> tuple[float, int]:
    """(MAE over images scored ok, number of images the model failed on)."""
    with tempfile.TemporaryDirectory(prefix="boneage-promote-") as tmp:
        df = score_candidates(opened, es.candidates, Path(tmp) / "work")
    ok = df[(df["status"] == "ok") & df["reference_boneage_months"].notna()]
    mae = float((ok["boneage_months"] - ok["reference_boneage_months"]).abs().mean())
    return mae, int((df["status"] != "ok").sum())


def decide(challenger_mae: float, champion_mae: float | None, margin: float,
           challenger_errors: int = 0, champion_errors: int = 0) -> tuple[bool, str]:  # fmt: skip
    """The gate. (promote?, reason)."""
    if champion_mae is None:
        return True, "no champion yet"
    if not challenger_mae == challenger_mae:  # NaN: nothing scored
        return False, "challenger scored no evaluation image"
    if challenger_errors > champion_errors:
        return False, (f"challenger failed on {challenger_errors} images, champion on "
                       f"{champion_errors}")  # fmt: skip
    gain = champion_mae - challenger_mae
    if gain >= margin:
        return True, f"MAE improved by {gain:.2f} months (margin {margin:g})"
    return False, f"MAE change {gain:+.2f} months is below the margin {margin:g}"


def promote(params: Params, tracking_uri: str | None = None) -> dict:
    name = params.registry.model_name
    mlflow, client = _client(tracking_uri)
    try:
        ch = client.get_model_version_by_alias(name, CHALLENGER)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"model {name!r} has no {CHALLENGER!r} version (run boneage register)"
                         ) from exc  # fmt: skip
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # noqa: BLE001 - no champion yet
        champ = None
    es = evaluation_set(params)
    ch_mae, ch_err = model_mae(open_registered(f"models:/{name}/{ch.version}", tracking_uri), es)
    result = {
        "model_name": name, "challenger_version": str(ch.version),
        "challenger_mae": ch_mae, "challenger_errors": ch_err,
        "champion_version": None, "champion_mae": None, "eval_set": es.description,
    }  # fmt: skip
    if champ is not None and str(champ.version) == str(ch.version):
        promoted, reason = False, "challenger is already the champion"
        result.update(champion_version=str(champ.version), champion_mae=ch_mae)
    else:
        champ_mae = champ_err = None
        if champ is not None:
            champ_mae, champ_err = model_mae(
                open_registered(f"models:/{name}/{champ.version}", tracking_uri), es)  # fmt: skip
            result.update(champion_version=str(champ.version), champion_mae=champ_mae)
        promoted, reason = decide(ch_mae, champ_mae, params.registry.margin_months,
                                  ch_err, champ_err or 0)  # fmt: skip
    result.update(promoted=promoted, reason=reason,
                  decided_at=datetime.now(UTC).isoformat(timespec="seconds"))  # fmt: skip
    tags = {
        "promotion_decision": "promoted" if promoted else "rejected",
        "promotion_reason": reason,
        "promotion_eval_set": es.description,
        "promotion_challenger_mae": f"{ch_mae:.4f}",
        "promotion_champion_mae": "" if result["champion_mae"] is None
        else f"{result['champion_mae']:.4f}",
        "promotion_champion_version": result["champion_version"] or "",
        "promotion_decided_at": result["decided_at"],
    }  # fmt: skip
    for k, v in tags.items():
        client.set_model_version_tag(name, str(ch.version), k, v)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, str(ch.version))  # the one switch
    return result


def write_json(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
