"""Prefect flow for the data part of the pipeline: ingest → validate.

Orchestration only: each task calls the same library function as the DVC stage
(`boneage ingest` / `boneage validate`), so there is one implementation of each step.

    python -m flows.pipeline --cohort DIR --labels CSV --out DIR [--params params.yaml]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow, get_run_logger, task

from boneage.config import load_params
from boneage.ingest import format_summary, ingest
from boneage.validate import validate_files


@task(name="ingest", retries=1, retry_delay_seconds=5)
def ingest_task(cohort: Path, labels: Path | None, out: Path, params: Path) -> dict:
    cfg = load_params(params).ingest
    result = ingest(cohort, labels, out, cfg, progress=False)
    get_run_logger().info(format_summary(result))
    return result.summary


@task(name="validate")
def validate_task(out: Path, params: Path) -> dict:
    cfg = load_params(params).validate_
    report = validate_files(
        out / "manifest.parquet", out / "rejected.parquet", cfg, out / "validation"
    )
    if not report.success:
        names = ", ".join(f"{o.name}({o.column or ''})" for o in report.failed())
        raise RuntimeError(f"validation failed: {names}")
    return {"expectations": len(report.outcomes), "rows": report.n_rows}


@flow(name="boneage-data")
def data_flow(
    cohort: Path, labels: Path | None, out: Path, params: Path = Path("params.yaml")
) -> dict:
    summary = ingest_task(cohort, labels, out, params)
    validation = validate_task(out, params)
    return {"ingest": summary, "validation": validation}


def main() -> None:
    ap = argparse.ArgumentParser(description="ingest + validate a cohort with Prefect")
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--labels", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    a = ap.parse_args()
    print(data_flow(a.cohort, a.labels, a.out, a.params))


if __name__ == "__main__":
    main()
