"""Prefect flow for the data part of the pipeline: ingest → validate.

Orchestration only: the tasks are flows/tasks.py's (shared with flows/retrain.py), each
calling the same library function as the DVC stage (`boneage ingest` / `boneage
validate`), so there is one implementation of each step.

    python -m flows.pipeline --cohort DIR --labels CSV --out DIR [--params params.yaml]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow

from boneage.fingerprint import code_version, tree_hash
from flows.tasks import ingest_task, run, section, validate_task


@flow(name="boneage-data")
def data_flow(
    cohort: Path, labels: Path | None, out: Path, params: Path = Path("params.yaml")
) -> dict:
    """Ingest `cohort` into `out` and validate it (report in out/validation); the tasks
    are flows/retrain.py's. Raises ValidationFailed when an expectation fails."""
    pp, code = str(params), code_version()
    source = tree_hash(Path(cohort)) + ":" + tree_hash(Path(labels) if labels else None)
    ing = run(ingest_task, Path(out), str(cohort), str(labels) if labels else None, str(out),
              pp, section(pp, "ingest"), source, code)  # fmt: skip
    validation = validate_task(str(out), pp, section(pp, "validate"), ing["hash"], code,
                               str(Path(out) / "validation"))  # fmt: skip
    return {"ingest": ing["summary"], "validation": validation}


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
