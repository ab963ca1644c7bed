"""The Prefect tasks of the pipeline, defined once: flows/pipeline.py (ingest → validate)
and flows/retrain.py (the whole chain) are built from them. Orchestration only: each task
calls the same library function as the DVC stage of the same name.

Caching (INPUTS + TASK_SOURCE): a task's inputs are small values only — the JSON of the
params sections it reads (`section`), the fingerprints of its upstream outputs, of the
data source and of the boneage library source (`code`) — never images or models. A task
whose output directory has gone missing is re-run (`run`, refresh_cache).
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from boneage.config import load_params
from boneage.fingerprint import tree_hash

CACHE = {"cache_policy": INPUTS + TASK_SOURCE, "persist_result": True,
         "cache_expiration": timedelta(days=365)}  # fmt: skip
RETRY = {"retries": 2, "retry_delay_seconds": 10}


def section(params_path: str, *names: str) -> str:
    p = load_params(params_path).model_dump(mode="json", by_alias=True)
    return json.dumps({n: p[n] for n in names}, sort_keys=True)


def done(out: Path, **extra: Any) -> dict:
    return {"out": str(out), "hash": tree_hash(out), "ran_at": time.time(), **extra}


def run(t, out: Path, *args):
    """Call task t, forcing a re-run when its output is gone (cached result is stale)."""
    return t.with_options(refresh_cache=not out.exists())(*args)


@task(name="demo-cohort", **CACHE, **RETRY)
def demo_task(out: str, demo_params: str, code: str) -> dict:
    from boneage.demo import make_demo_cohort

    d = json.loads(demo_params)["demo"]
    make_demo_cohort(Path(out), n=d["n"], seed=d["seed"], size=d["size"])
    return done(Path(out))


@task(name="ingest", **CACHE, **RETRY)
def ingest_task(cohort: str, labels: str | None, out: str, params_path: str,
                section: str, source_hash: str, code: str) -> dict:  # fmt: skip
    from boneage.ingest import ingest

    r = ingest(Path(cohort), Path(labels) if labels else None, Path(out),
               load_params(params_path).ingest, progress=False)  # fmt: skip
    return done(Path(out), summary=r.summary)


@task(name="validate", **CACHE, **RETRY)
def validate_task(ingest_dir: str, params_path: str, section: str, ingest_hash: str,
                  code: str, report_dir: str) -> dict:  # fmt: skip
    """Fails (boneage.validate.ValidationFailed) when any expectation fails."""
    from boneage.validate import raise_if_failed, validate_files

    d = Path(ingest_dir)
    cfg = load_params(params_path).validate_
    report = raise_if_failed(validate_files(d / "manifest.parquet", d / "rejected.parquet",
                                            cfg, Path(report_dir)))  # fmt: skip
    return {"expectations": len(report.outcomes), "rows": report.n_rows}


def _paths(wd: Path):
    from boneage.localizer import StagePaths

    return StagePaths(ingest=wd / "ingest", attend_root=wd / "attend")


def _tracker():
    from boneage.tracking import Tracker

    return Tracker()


@task(name="train-localizer", **CACHE, retries=1, retry_delay_seconds=10)
def train_localizer_task(stage: str, wd: str, params_path: str, section: str,
                         input_hash: str, code: str) -> dict:  # fmt: skip
    from boneage.localizer import train_localizer

    out = Path(wd) / "models" / f"localizer_{stage}"
    m = train_localizer(stage, load_params(params_path), _paths(Path(wd)), out, _tracker(), False)
    return done(out, val_mae=m["val_mae"])


@task(name="attend", **CACHE, **RETRY)
def attend_task(stage: str, wd: str, params_path: str, section: str, model_hash: str,
                input_hash: str, code: str) -> dict:  # fmt: skip
    from boneage.attend import attend

    w = Path(wd)
    out = w / "attend" / stage
    s = attend(stage, load_params(params_path), _paths(w), w / "models" / f"localizer_{stage}",
               out, w / "reports" / "attend" / stage, progress=False)  # fmt: skip
    return done(out, status=s["status"])


@task(name="train-aggregator", **CACHE, retries=1, retry_delay_seconds=10)
def train_aggregator_task(wd: str, params_path: str, section: str, input_hash: str,
                          code: str, carpal: bool = False) -> dict:  # fmt: skip
    from boneage.aggregator import carpal_params, train_aggregator

    p = load_params(params_path)
    out = Path(wd) / "models" / ("carpal" if carpal else "aggregator")
    m = train_aggregator(carpal_params(p) if carpal else p, _paths(Path(wd)), out, _tracker(),
                         False)  # fmt: skip
    return done(out, val_mae=m["val_mae"])


@task(name="calibrate", **CACHE, **RETRY)
def calibrate_task(wd: str, params_path: str, section: str, input_hash: str, code: str) -> dict:
    from boneage.calibration import calibrate_models

    w = Path(wd)
    out = w / "models" / "calibration"
    models = {c: w / "models" / c for c in ("aggregator", "carpal")}
    calibrate_models(load_params(params_path), _paths(w), models, out)
    return done(out)


@task(name="evaluate", **CACHE, **RETRY)
def evaluate_task(wd: str, params_path: str, section: str, input_hash: str, code: str) -> dict:
    from boneage.calibration import load
    from boneage.evaluate import evaluate

    w = Path(wd)
    out = w / "reports" / "evaluate"
    cal = load(w / "models" / "calibration" / "calibration.json")["models"]["aggregator"]
    m = evaluate(load_params(params_path), _paths(w), w / "models" / "aggregator", out, _tracker(),
                 cal)  # fmt: skip
    return done(out, mae=m["mae"], n=m["n"])


@task(name="bundle", **CACHE, **RETRY)
def bundle_task(wd: str, params_path: str, section: str, input_hash: str, code: str) -> dict:
    from boneage.bundle import build_bundle, bundle_model_dirs

    w, p = Path(wd), load_params(params_path)
    out = w / "models" / "bundle"
    build_bundle(p, bundle_model_dirs(w / "models"), out, p.registry.model_name,
                 w / "models" / "calibration" / "calibration.json")  # fmt: skip
    return done(out)


@task(name="register", **CACHE, **RETRY)
def register_task(bundle_dir: str, params_path: str, section: str, bundle_hash: str,
                  eval_hash: str, code: str) -> dict:  # fmt: skip
    from boneage.registry import register_bundle

    tags = {"trained_by": "prefect flow boneage-retrain", "bundle_sha256": bundle_hash,
            "code_sha256": code}  # fmt: skip
    info = register_bundle(Path(bundle_dir), load_params(params_path), extra_tags=tags,
                           dvc_lock=Path(bundle_dir) / "dvc.lock")  # fmt: skip
    return {"version": info["version"], "run_id": info["run_id"], "ran_at": time.time()}


@task(name="promote", **CACHE, **RETRY)
def promote_task(params_path: str, section: str, version: str, code: str) -> dict:
    from boneage.registry import promote

    return {**promote(load_params(params_path)), "ran_at": time.time()}
