"""Prefect deployments: `boneage-retrain/retrain-scheduled` on a cron schedule (params
`orchestration`) and `boneage-score-cohort/score-cohort` on demand.

    prefect server start --host 127.0.0.1 --port 4200          # terminal 1
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.deployments                                 # terminal 2: serve both
    python -m flows.deployments --register-only                 # or only register them

Serving keeps a process that runs the scheduled retrain and any score-cohort run started
from the UI or `prefect deployment run 'boneage-score-cohort/score-cohort'
--param cohort=DIR --param out=DIR`.
"""

from __future__ import annotations

import argparse

from prefect import serve
from prefect.schedules import Cron

from boneage.config import load_params
from flows.retrain import retrain_flow
from flows.score_cohort import score_cohort_flow

RETRAIN = "retrain-scheduled"
SCORE = "score-cohort"


def build(params: str = "params.yaml") -> list:
    o = load_params(params).orchestration
    retrain = retrain_flow.to_deployment(
        name=RETRAIN,
        schedules=[Cron(o.retrain_cron, timezone=o.timezone)],
        parameters={
            "workdir": o.retrain_workdir,
            "cohort": o.retrain_cohort,
            "labels": o.retrain_labels,
            "params": params,
        },  # fmt: skip
        description="Retrain hand/R1/R2 localizers + aggregator, evaluate, register, promote",
        tags=["boneage", "retrain"],
    )
    score = score_cohort_flow.to_deployment(
        name=SCORE,
        description="Score a cohort with models:/boneage@champion (shards, resumable)",
        tags=["boneage", "score"],
    )
    return [retrain, score]


def register(params: str = "params.yaml") -> list[str]:
    """Register both deployments with the Prefect API (PREFECT_API_URL) without serving."""
    return [str(d.apply()) for d in build(params)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="serve (or register) the boneage deployments")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--register-only", action="store_true")
    a = ap.parse_args(argv)
    if a.register_only:
        print("\n".join(register(a.params)))
        return
    serve(*build(a.params))


if __name__ == "__main__":
    main()
