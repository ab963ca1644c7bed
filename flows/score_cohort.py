"""Prefect flow: score a cohort in shards mapped over workers (local threads or Ray).

Orchestration only — the three steps are the library's `boneage.score_cohort.plan_scoring`,
`score_shard` and `finish_scoring`, the same ones `boneage score` runs in a loop, so the
outputs (predictions.csv/.parquet, overlays/, report.html, summary.json) and the
resumability (finished shards are skipped) are identical.

    python -m flows.score_cohort --cohort DIR --out DIR [--model URI] [--labels CSV]
        [--runner local|ray] [--workers N] [--address RAY_ADDRESS] [--shard-size N]

`--runner ray` uses prefect-ray's RayTaskRunner: it connects to `--address` (e.g.
`ray://head:10001` or `auto`), or starts a local Ray with `--workers` CPUs when none is
given. Each shard task asks Ray for one GPU when the machine has CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped

from boneage.registry import open_model
from boneage.score_cohort import finish_scoring, plan_scoring, score_shard

REPO = Path(__file__).resolve().parents[1]
_OPENED: dict[str, object] = {}  # per worker process: networks loaded once, reused by shards


def _opened(model: str):
    if model not in _OPENED:
        _OPENED[model] = open_model(model)
    return _OPENED[model]


@task(name="plan-scoring", retries=2, retry_delay_seconds=5)
def plan_task(model: str, cohort: str, out: str, labels: str | None,
              shard_size: int | None) -> tuple[int, str]:  # fmt: skip
    """Returns (number of shards, the model URI pinned to a version)."""
    opened = _opened(model)
    plan = plan_scoring(opened, Path(cohort), Path(out), Path(labels) if labels else None,
                        shard_size)  # fmt: skip
    return len(plan["shards"]), plan["model"]


@task(name="score-shard", retries=2, retry_delay_seconds=5)
def shard_task(model_uri: str, out: str, k: int) -> dict:
    return score_shard(_opened(model_uri), Path(out), k)


@task(name="finish-scoring", retries=1, retry_delay_seconds=5)
def finish_task(model_uri: str, out: str, results: list[dict]) -> dict:
    return finish_scoring(_opened(model_uri), Path(out), results)


@flow(name="boneage-score-cohort")
def score_cohort_flow(
    cohort: str,
    out: str,
    model: str = "models:/boneage@champion",
    labels: str | None = None,
    shard_size: int | None = None,
    gpu_per_task: bool = False,
) -> dict:
    n, uri = plan_task(model, cohort, out, labels, shard_size)
    if gpu_per_task:
        from prefect_ray.context import remote_options

        with remote_options(num_gpus=1):
            futures = shard_task.map(unmapped(uri), unmapped(out), list(range(n)))
    else:
        futures = shard_task.map(unmapped(uri), unmapped(out), list(range(n)))
    results = [f.result() for f in futures]
    summary = finish_task(uri, out, results)
    get_run_logger().info(f"{summary['n_ok']}/{summary['n']} scored -> {out}")
    return summary


def task_runner(runner: str, workers: int, address: str | None = None):
    """ThreadPoolTaskRunner (local) or RayTaskRunner; a local Ray gets `workers` CPUs,
    this repo on PYTHONPATH, the MLflow URI, and torch threads split between workers."""
    if runner == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if runner != "ray":
        raise ValueError(f"runner must be local or ray, got {runner!r}")
    from prefect_ray import RayTaskRunner

    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // max(1, workers)))}  # fmt: skip
    for k in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    init = {"runtime_env": {"env_vars": env}}
    if address is None:
        init.update(num_cpus=workers, include_dashboard=False)
    return RayTaskRunner(address=address, init_kwargs=init)


def run(cohort: Path, out: Path, model: str = "models:/boneage@champion",
        labels: Path | None = None, runner: str = "local", workers: int = 1,
        address: str | None = None, shard_size: int | None = None) -> dict:  # fmt: skip
    import torch

    gpu = runner == "ray" and torch.cuda.is_available()
    f = score_cohort_flow.with_options(task_runner=task_runner(runner, workers, address))
    model = model if "://" in model or model.startswith("models:") else str(Path(model).resolve())
    return f(str(Path(cohort).resolve()), str(Path(out).resolve()), model,
             str(Path(labels).resolve()) if labels else None, shard_size, gpu)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="score a cohort with Prefect (local or Ray)")
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="models:/boneage@champion")
    ap.add_argument("--labels", type=Path)
    ap.add_argument("--runner", choices=["local", "ray"], default="local")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--address", help="Ray address (default: start a local Ray)")
    ap.add_argument("--shard-size", type=int)
    a = ap.parse_args(argv)
    s = run(a.cohort, a.out, a.model, a.labels, a.runner, a.workers, a.address, a.shard_size)
    print(json.dumps(s, indent=2))
    if s["n_ok"] == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
