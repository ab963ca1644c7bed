"""Scoring throughput with 1 and 2 Ray workers on the same cohort, and the speed-up.

    python benchmarks/score_scale.py [--model data/models/bundle] [--n 96] [--shard-size 8]

Runs flows/score_cohort.py with the Ray task runner (a local Ray started per run with
`--workers` CPUs; torch threads split between workers) on the first N RSNA 299-px images.
Images/s is counted from the first shard's start to the last shard's end (so Ray's
start-up is excluded, each worker's model loading included); wall time is printed too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="data/models/bundle")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--source", type=Path, default=ROOT.parent / "shared/data/rsna-bone-age-299")
    a = ap.parse_args()
    if not Path(a.model).exists():
        raise SystemExit(f"{a.model}: no model bundle (run `make run` first, or pass --model)")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness
    from score import make_cohort  # benchmarks/score.py

    from flows.score_cohort import run

    rates = {}
    with tempfile.TemporaryDirectory(prefix="boneage-scale-") as tmp, prefect_test_harness():
        tmp = Path(tmp)
        cohort = make_cohort(a.source, a.n, tmp / "cohort")
        for workers in (1, 2):
            t0 = time.perf_counter()
            out = tmp / f"out-{workers}"
            run(cohort, out, a.model, cohort / "labels.csv", runner="ray", workers=workers,
                shard_size=a.shard_size)  # fmt: skip
            wall = time.perf_counter() - t0
            import pandas as pd

            n = len(pd.read_parquet(out / "predictions.parquet"))
            spans = _spans(out)
            rate = n / (spans[1] - spans[0])
            rates[workers] = rate
            shards = -(-a.n // a.shard_size)
            print(f"{workers} Ray worker(s): {rate:.2f} images/s scoring ({n} images, "
                  f"{shards} shards), {wall:.0f} s wall incl. Ray start-up")  # fmt: skip
    print(f"speed-up 2 vs 1 worker: {rates[2] / rates[1]:.2f}x on {os.cpu_count()} CPU cores")


def _spans(out: Path) -> tuple[float, float]:
    """First shard start, last shard end: from the shard files' creation and the plan."""
    import json

    log = json.loads((out / "summary.json").read_text())
    return log["first_shard_started"], log["last_shard_finished"]


if __name__ == "__main__":
    main()
