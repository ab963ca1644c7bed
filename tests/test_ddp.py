"""2-process DDP on CPU (gloo) under torchrun: every sample once per epoch across ranks,
identical weights and val MAE on both ranks, only rank 0 writes to MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_process_ddp_shards_samples_and_logs_from_rank0_only(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), str(tmp_path), uri]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    # the last epoch's samples: disjoint, and together every one of the 37 exactly once
    assert not set(r0["indices"]) & set(r1["indices"])
    assert sorted(r0["indices"] + r1["indices"]) == list(range(37))
    assert r0["samples_seen"] + r1["samples_seen"] == 2 * 37  # 2 epochs
    assert r0["val_mae"] == r1["val_mae"]  # summed over ranks: same early stopping
    assert r0["weights_digest"] == pytest.approx(r1["weights_digest"], rel=1e-9)
    assert r0["tracker_enabled"] and r0["run_id"]
    assert not r1["tracker_enabled"] and r1["run_id"] is None
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ddp-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == r0["run_id"]
    hist = client.get_metric_history(r0["run_id"], "val_mae")
    assert [m.value for m in hist] == pytest.approx(r0["val_mae"])
