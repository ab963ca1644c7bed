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
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger

from boneage.bundle import BUNDLE_PARAM_SECTIONS
from boneage.config import load_params
from boneage.fingerprint import code_version, tree_hash
from flows.tasks import (
    attend_task,
    bundle_task,
    calibrate_task,
    demo_task,
    evaluate_task,
    ingest_task,
    promote_task,
    register_task,
    run,
    section,
    train_aggregator_task,
    train_localizer_task,
    validate_task,
)


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
        r["demo"] = run(demo_task, demo_out, str(demo_out), section(pp, "demo"), code)
        cohort, labels = str(demo_out / "images"), str(demo_out / "labels.csv")
    source = tree_hash(Path(cohort)) + ":" + tree_hash(Path(labels) if labels else None)
    ing = wd / "ingest"
    r["ingest"] = run(ingest_task, ing, cohort, labels, str(ing), pp, section(pp, "ingest"),
                       source, code)  # fmt: skip
    r["validate"] = validate_task(str(ing), pp, section(pp, "validate"), r["ingest"]["hash"],
                                  code, str(wd / "validation"))  # fmt: skip
    upstream = r["ingest"]["hash"]
    for stage in ("hand", "r1", "r2"):
        loc = run(train_localizer_task, wd / "models" / f"localizer_{stage}", stage, str(wd),
                   pp, section(pp, "localizer"), upstream, code)  # fmt: skip
        att = run(attend_task, wd / "attend" / stage, stage, str(wd), pp,
                   section(pp, "attend"), loc["hash"], upstream, code)  # fmt: skip
        r[f"localizer_{stage}"], r[f"attend_{stage}"] = loc, att
        upstream = f"{upstream}:{att['hash']}"
    regions = upstream
    r["aggregator"] = run(train_aggregator_task, wd / "models" / "aggregator", str(wd), pp,
                           section(pp, "aggregator"), regions, code)  # fmt: skip
    r["carpal"] = run(train_aggregator_task, wd / "models" / "carpal", str(wd), pp,
                       section(pp, "aggregator", "carpal"), regions, code, True)  # fmt: skip
    trained = f"{regions}:{r['aggregator']['hash']}:{r['carpal']['hash']}"
    r["calibrate"] = run(calibrate_task, wd / "models" / "calibration", str(wd), pp,
                          section(pp, "calibrate", "aggregator"), trained, code)  # fmt: skip
    evaluated = f"{trained}:{r['calibrate']['hash']}"
    r["evaluate"] = run(evaluate_task, wd / "reports" / "evaluate", str(wd), pp,
                         section(pp, "evaluate"), evaluated, code)  # fmt: skip
    models = ":".join(r[k]["hash"] for k in ("localizer_hand", "localizer_r1", "localizer_r2",
                                              "aggregator", "carpal", "calibrate"))  # fmt: skip
    r["bundle"] = run(bundle_task, wd / "models" / "bundle", str(wd), pp,
                      section(pp, *BUNDLE_PARAM_SECTIONS), models, code)  # fmt: skip
    r["register"] = register_task(r["bundle"]["out"], pp, section(pp, "registry"),
                                  r["bundle"]["hash"], r["evaluate"]["hash"], code)  # fmt: skip
    r["promote"] = promote_task(pp, section(pp, "registry", "ingest"), r["register"]["version"],
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
