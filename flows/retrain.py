"""Prefect flow: retrain the whole pipeline for a data source and params overrides —
demo/ingest → validate → localizers + attend (hand, r1, r2) → aggregator → carpal head →
calibrate → evaluate → bundle → register → promote — with retries on transient failures.

Orchestration only: every task calls the same library function as the DVC stage of the
same name.

Caching — owned by Prefect here, not DVC. The flow runs against any data source and
params overrides in its own work directory, where there is no DVC workspace; shelling out
to `dvc repro` would duplicate the stage wiring and hide the steps from the Prefect UI.
Each task's cache key is INPUTS + TASK_SOURCE, and its inputs are small values only:
the JSON of the params sections it reads, the fingerprint (content hash) of every
upstream output, of the data source and of the boneage library source — never images
or models. So a rerun with nothing changed finds every step Cached and trains nothing;
change a params section, the data or the library, and exactly the affected steps and
their downstream re-run. A step whose output directory has gone missing is re-run
(refresh_cache). `dvc repro` keeps its own cache (dvc.lock + run cache) for the DVC path.

    python -m flows.retrain [--workdir data/retrain] [--cohort DIR --labels CSV]
        [--params params.yaml] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from boneage.config import load_params
from boneage.fingerprint import code_version, tree_hash

CACHE = {"cache_policy": INPUTS + TASK_SOURCE, "persist_result": True,
         "cache_expiration": timedelta(days=365)}  # fmt: skip
RETRY = {"retries": 2, "retry_delay_seconds": 10}


def _section(params_path: str, *names: str) -> str:
    p = load_params(params_path).model_dump(mode="json", by_alias=True)
    return json.dumps({n: p[n] for n in names}, sort_keys=True)


def _done(out: Path, **extra: Any) -> dict:
    return {"out": str(out), "hash": tree_hash(out), "ran_at": time.time(), **extra}


def _run(t, out: Path, *args):
    """Call task t, forcing a re-run when its output is gone (cached result is stale)."""
    return t.with_options(refresh_cache=not out.exists())(*args)


@task(name="demo-cohort", **CACHE, **RETRY)
def demo_task(out: str, demo_params: str, code: str) -> dict:
    from boneage.demo import make_demo_cohort

    d = json.loads(demo_params)["demo"]
    make_demo_cohort(Path(out), n=d["n"], seed=d["seed"], size=d["size"])
    return _done(Path(out))


@task(name="ingest", **CACHE, **RETRY)
def ingest_task(cohort: str, labels: str | None, out: str, params_path: str,
                section: str, source_hash: str, code: str) -> dict:  # fmt: skip
    from boneage.ingest import ingest

    r = ingest(Path(cohort), Path(labels) if labels else None, Path(out),
               load_params(params_path).ingest, progress=False)  # fmt: skip
    return _done(Path(out), summary=r.summary)


@task(name="validate", **CACHE, **RETRY)
def validate_task(ingest_dir: str, params_path: str, section: str, ingest_hash: str,
                  code: str) -> dict:  # fmt: skip
    from boneage.validate import validate_files

    d = Path(ingest_dir)
    cfg = load_params(params_path).validate_
    report = validate_files(d / "manifest.parquet", d / "rejected.parquet", cfg,
                            d.parent / "validation")  # fmt: skip
    if not report.success:
        names = ", ".join(f"{o.name}({o.column or ''})" for o in report.failed())
        raise RuntimeError(f"validation failed: {names}")
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
    return _done(out, val_mae=m["val_mae"])


@task(name="attend", **CACHE, **RETRY)
def attend_task(stage: str, wd: str, params_path: str, section: str, model_hash: str,
                input_hash: str, code: str) -> dict:  # fmt: skip
    from boneage.attend import attend

    w = Path(wd)
    out = w / "attend" / stage
    s = attend(stage, load_params(params_path), _paths(w), w / "models" / f"localizer_{stage}",
               out, w / "reports" / "attend" / stage, progress=False)  # fmt: skip
    return _done(out, status=s["status"])


@task(name="train-aggregator", **CACHE, retries=1, retry_delay_seconds=10)
def train_aggregator_task(wd: str, params_path: str, section: str, input_hash: str,
                          code: str, carpal: bool = False) -> dict:  # fmt: skip
    from boneage.aggregator import carpal_params, train_aggregator

    p = load_params(params_path)
    out = Path(wd) / "models" / ("carpal" if carpal else "aggregator")
    m = train_aggregator(carpal_params(p) if carpal else p, _paths(Path(wd)), out, _tracker(),
                         False)  # fmt: skip
    return _done(out, val_mae=m["val_mae"])


@task(name="calibrate", **CACHE, **RETRY)
def calibrate_task(wd: str, params_path: str, section: str, input_hash: str, code: str) -> dict:
    from boneage.calibration import calibrate_models

    w = Path(wd)
    out = w / "models" / "calibration"
    models = {c: w / "models" / c for c in ("aggregator", "carpal")}
    calibrate_models(load_params(params_path), _paths(w), models, out)
    return _done(out)


@task(name="evaluate", **CACHE, **RETRY)
def evaluate_task(wd: str, params_path: str, section: str, input_hash: str, code: str) -> dict:
    from boneage.calibration import load
    from boneage.evaluate import evaluate

    w = Path(wd)
    out = w / "reports" / "evaluate"
    cal = load(w / "models" / "calibration" / "calibration.json")["models"]["aggregator"]
    m = evaluate(load_params(params_path), _paths(w), w / "models" / "aggregator", out, _tracker(),
                 cal)  # fmt: skip
    return _done(out, mae=m["mae"], n=m["n"])


@task(name="bundle", **CACHE, **RETRY)
def bundle_task(wd: str, params_path: str, section: str, input_hash: str, code: str) -> dict:
    from boneage.bundle import build_bundle, bundle_model_dirs

    w, p = Path(wd), load_params(params_path)
    out = w / "models" / "bundle"
    build_bundle(p, bundle_model_dirs(w / "models"), out, p.registry.model_name,
                 w / "models" / "calibration" / "calibration.json")  # fmt: skip
    return _done(out)


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


@flow(name="boneage-retrain")
def retrain_flow(
    workdir: str = "data/retrain",
    cohort: str | None = None,
    labels: str | None = None,
    params: str = "params.yaml",
    overrides: dict | None = None,
) -> dict:
    """Run the pipeline in `workdir` for `cohort` (default: the synthetic demo) with
    params from `params` deep-merged with `overrides`; returns every step's result."""
    log = get_run_logger()
    wd = Path(workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    merged = load_params(params, overrides).model_dump(mode="json", by_alias=True)
    if cohort is None:  # the demo lives in the work dir: so does its evaluation set
        demo = wd / "raw" / "demo"
        merged["registry"].update(eval_cohort=str(demo / "images"),
                                  eval_labels=str(demo / "labels.csv"))  # fmt: skip
    pfile = wd / "params.yaml"
    text = yaml.safe_dump(merged, sort_keys=True)
    if not pfile.is_file() or pfile.read_text() != text:
        pfile.write_text(text)
    pp = str(pfile)
    code = code_version()
    r: dict[str, Any] = {}
    if cohort is None:
        demo_out = wd / "raw" / "demo"
        r["demo"] = _run(demo_task, demo_out, str(demo_out), _section(pp, "demo"), code)
        cohort, labels = str(demo_out / "images"), str(demo_out / "labels.csv")
    source = tree_hash(Path(cohort)) + ":" + tree_hash(Path(labels) if labels else None)
    ing = wd / "ingest"
    r["ingest"] = _run(ingest_task, ing, cohort, labels, str(ing), pp, _section(pp, "ingest"),
                       source, code)  # fmt: skip
    r["validate"] = validate_task(str(ing), pp, _section(pp, "validate"), r["ingest"]["hash"],
                                  code)  # fmt: skip
    upstream = r["ingest"]["hash"]
    for stage in ("hand", "r1", "r2"):
        loc = _run(train_localizer_task, wd / "models" / f"localizer_{stage}", stage, str(wd),
                   pp, _section(pp, "localizer"), upstream, code)  # fmt: skip
        att = _run(attend_task, wd / "attend" / stage, stage, str(wd), pp,
                   _section(pp, "attend"), loc["hash"], upstream, code)  # fmt: skip
        r[f"localizer_{stage}"], r[f"attend_{stage}"] = loc, att
        upstream = f"{upstream}:{att['hash']}"
    regions = upstream
    r["aggregator"] = _run(train_aggregator_task, wd / "models" / "aggregator", str(wd), pp,
                           _section(pp, "aggregator"), regions, code)  # fmt: skip
    r["carpal"] = _run(train_aggregator_task, wd / "models" / "carpal", str(wd), pp,
                       _section(pp, "aggregator", "carpal"), regions, code, True)  # fmt: skip
    trained = f"{regions}:{r['aggregator']['hash']}:{r['carpal']['hash']}"
    r["calibrate"] = _run(calibrate_task, wd / "models" / "calibration", str(wd), pp,
                          _section(pp, "calibrate", "aggregator"), trained, code)  # fmt: skip
    evaluated = f"{trained}:{r['calibrate']['hash']}"
    r["evaluate"] = _run(evaluate_task, wd / "reports" / "evaluate", str(wd), pp,
                         _section(pp, "evaluate"), evaluated, code)  # fmt: skip
    models = ":".join(r[k]["hash"] for k in ("localizer_hand", "localizer_r1", "localizer_r2",
                                              "aggregator", "carpal", "calibrate"))  # fmt: skip
    r["bundle"] = _run(bundle_task, wd / "models" / "bundle", str(wd), pp,
                       _section(pp, "ingest", "localizer", "attend", "aggregator", "carpal",
                                "score", "registry"), models, code)  # fmt: skip
    r["register"] = register_task(r["bundle"]["out"], pp, _section(pp, "registry"),
                                  r["bundle"]["hash"], r["evaluate"]["hash"], code)  # fmt: skip
    r["promote"] = promote_task(pp, _section(pp, "registry", "ingest"), r["register"]["version"],
                                code)  # fmt: skip
    p = r["promote"]
    log.info(f"retrain done: v{p['challenger_version']} MAE {p['challenger_mae']:.2f}, "
             f"{'promoted' if p['promoted'] else 'not promoted'} ({p['reason']})")  # fmt: skip
    return r


def _parse_set(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        if not _:
            raise SystemExit(f"--set {item!r}: expected section.key=value")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="retrain the boneage pipeline with Prefect")
    ap.add_argument("--workdir", default="data/retrain")
    ap.add_argument("--cohort")
    ap.add_argument("--labels")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], help="override: section.key=value")
    a = ap.parse_args(argv)
    r = retrain_flow(a.workdir, a.cohort, a.labels, a.params, _parse_set(a.set) or None)
    print(json.dumps(r["promote"], indent=2, default=str))


if __name__ == "__main__":
    main()
