"""`make run`'s pipeline, exactly as committed (params.yaml, dvc.yaml), from scratch in a
temporary copy of the repo: demo → ingest → validate → hand/r1/r2 localizers and attend →
aggregator → evaluate → carpal head → bundle → register → promote. Asserts the
localization acceptance on the demo's test split (the demo knows the true boxes), that
evaluate's metrics and plots are in place, and that the run ends with a `champion` in the
registry whose scoring of the fixed evaluation set reproduces evaluate's test MAE.

Acceptance (issue "attention localization"): hand box IoU ≥ 0.5 on ≥ 90 % of test images;
R1 box centre inside the true carpal region on ≥ 80 %; R2 box lying mostly on the true
metacarpal/phalanx region on ≥ 70 %. Training is seeded and deterministic on CPU, so this
run reproduces the numbers in the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from boneage.localization_eval import acceptance, evaluate_localization
from tests.dvc_stages import params_differences
from tests.helpers import chromium, copy_repo


@pytest.mark.slow
def test_make_run_pipeline_meets_the_localization_acceptance(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    (repo / "dvc.lock").unlink(missing_ok=True)
    trace = tmp_path / "params_trace.jsonl"  # every process's params reads (boneage.config)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
               BONEAGE_TRACE_PARAMS=str(trace))  # fmt: skip
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    run = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    result = evaluate_localization(repo / "data/processed/attend", repo / "data/raw/demo/boxes.csv")
    checks = acceptance(result)
    print("localization on the demo test split:", json.dumps(result, indent=1))
    for name, (observed, goal, _) in checks.items():
        print(f"  {name:<34} {observed:.0%}  (goal >= {goal:.0%})")
    n_test = result["hand"]["n"]
    assert n_test >= 10
    for name, (observed, goal, passed) in checks.items():
        assert passed, f"{name}: {observed:.0%} < {goal:.0%} on {n_test} test images"

    metrics = json.loads((repo / "data/reports/evaluate/metrics.json").read_text())
    print("aggregator on the demo test split:", json.dumps(metrics, indent=1))
    assert metrics["regions"] == "H+R1+R2" and metrics["n"] == n_test
    assert metrics["mae"] < 0.7 * metrics["mae_predict_train_mean"]
    preds = pd.read_parquet(repo / "data/reports/evaluate/predictions.parquet")
    manifest = pd.read_parquet(repo / "data/interim/ingest/manifest.parquet")
    assert sorted(preds["id"]) == sorted(manifest["id"])
    for name in ("pred_vs_true", "bland_altman", "mae_by_age_band", "error_hist"):
        assert (repo / f"data/reports/evaluate/plots/{name}.png").stat().st_size > 1000
        assert (repo / f"data/reports/evaluate/plots/{name}.csv").is_file()
    shown = subprocess.run(
        ["dvc", "plots", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "pred_vs_true.csv" in shown.stdout and "bland_altman.png" in shown.stdout
    # the run ends with a champion; scoring through the registered pyfunc reproduces
    # evaluate's test MAE on the same images (same preprocessing end to end)
    import mlflow

    promo = json.loads((repo / "data/reports/promote.json").read_text())
    assert promo["promoted"] and promo["challenger_version"] == "1"
    # promotion compares calibrated estimates (bias-corrected where calibration kept it)
    assert promo["challenger_mae"] == pytest.approx(metrics["calibrated"]["mae_after"], abs=1e-3)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    champ = client.get_model_version_by_alias("boneage", "champion")
    assert str(champ.version) == "1" and champ.tags["promotion_decision"] == "promoted"
    assert champ.tags["dvc.data/models/aggregator"].endswith(".dir")
    # every stage declares exactly the params keys its processes read
    assert params_differences(trace, repo / "dvc.yaml") == {}
    # nothing changed → nothing re-runs
    t0 = time.perf_counter()
    again = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    print(f"dvc repro with nothing changed: {time.perf_counter() - t0:.1f} s")
    assert again.returncode == 0 and "Running stage" not in again.stdout
    # an aggregator param changed → only the stages that read it are out of date (their
    # downstream follows); nothing upstream of the aggregator
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["aggregator"]["train"]["lr"] *= 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = subprocess.run(["dvc", "status", "--json"], cwd=repo, env=env, capture_output=True,
                            text=True)  # fmt: skip
    assert status.returncode == 0, status.stderr[-2000:]
    assert set(json.loads(status.stdout)) == {"train_aggregator", "train_carpal", "bundle"}
    _report_shows_the_reliability_plot(repo, manifest, tmp_path)


def _report_shows_the_reliability_plot(repo: Path, manifest: pd.DataFrame, tmp_path: Path):
    """Scoring labelled demo test images with the pipeline's bundle: the HTML report, as
    headless Chromium renders it, names the calibration and shows its reliability plot."""
    import shutil

    from boneage.calibration import load
    from boneage.score_cohort import score_cohort

    exe = chromium()
    ids = sorted(manifest.loc[manifest["split"] == "test", "id"])[:12]
    cohort = tmp_path / "demo_test"
    cohort.mkdir()
    labels = pd.read_csv(repo / "data/raw/demo/labels.csv", dtype={"id": str})
    for i in ids:
        shutil.copy(repo / "data/raw/demo/images" / f"{i}.png", cohort / f"{i}.png")
    labels[labels["id"].isin(ids)].to_csv(cohort / "labels.csv", index=False)
    out = tmp_path / "scored"
    summary = score_cohort(repo / "data/models/bundle", cohort, out, cohort / "labels.csv")
    cal = load(repo / "data/models/calibration/calibration.json")["models"]["aggregator"]
    version = summary["calibration"]  # "aggregator cal-… / carpal cal-…"
    assert f"aggregator {cal['version']}" in version
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == len(ids) and (preds["calibration"] == version).all()
    assert (preds["status"] == "ok").sum() >= len(ids) // 2, preds[["id", "status"]]
    url = (out / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([exe, *flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120).stdout  # fmt: skip
    assert "<figcaption>Reliability of the calibrated intervals</figcaption>" in dom
    figure = dom.split("<figcaption>Reliability of the calibrated intervals", 1)[0]
    figure = figure.rsplit("<img", 1)[1]
    assert "data:image/png;base64," in figure  # the plot itself, embedded
    assert f'<td id="calibration">{version}</td>' in dom
    assert "calibration-warning" not in dom
