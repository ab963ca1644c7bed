"""The profile runner survives a kill: a re-run skips the finished steps and continues the
interrupted training from its last finished epoch (profiles/run.py + per-epoch
checkpoints), on a tiny real RSNA subset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.bundle_factory import rsna_cohort

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "localizer": {"model": {"backbone": "resnet18", "pretrained": "none"},
                  "train": {"epochs": 1, "max_train_images": None, "max_val_images": None,
                            "batch_size": 16},
                  "hand": {"img_size": 48, "epochs": 1}, "r1": {"img_size": 48, "epochs": 1},
                  "r2": {"img_size": 48, "epochs": 1}},
    "attend": {"hand": {"cam_size": 64, "crop_size": 64},
               "r1": {"cam_size": 64, "crop_size": 48}, "r2": {"cam_size": 64, "crop_size": 48}},
    "aggregator": {"img_size": 48, "model": {"backbone": "resnet18", "pretrained": "none"},
                   "train": {"epochs": 6, "batch_size": 8}},
}  # fmt: skip


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return out


@pytest.mark.slow
def test_killed_profile_resumes_without_rerunning_finished_epochs(tmp_path, rsna299):
    profile = _merge(yaml.safe_load((REPO / "profiles" / "rsna_cpu_full.yaml").read_text()),
                     TINY)  # fmt: skip
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(profile))
    cohort = rsna_cohort(rsna299, tmp_path / "cohort", 60)
    work = tmp_path / "work"
    cmd = [sys.executable, str(REPO / "profiles" / "run.py"), str(tmp_path / "tiny.yaml"),
           "--work", str(work), "--cohort", str(cohort), "--labels", str(cohort / "labels.csv"),
           "--until", "aggregator", "--no-track"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ckpt = work / "models" / ".checkpoints" / "aggregator.pt"
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)  # fmt: skip
    deadline = time.time() + 900
    done_epochs = 0
    while time.time() < deadline and first.poll() is None:
        if ckpt.is_file():
            try:
                done_epochs = torch.load(ckpt, weights_only=False)["epoch"]
            except Exception:  # noqa: BLE001 - being replaced right now; look again
                done_epochs = 0
            if done_epochs >= 2:
                break
        time.sleep(0.5)
    assert first.poll() is None, "the run ended before the aggregator reached epoch 2"
    os.killpg(first.pid, signal.SIGKILL)  # kill the runner and the training under it
    first.wait()
    before = torch.load(ckpt, weights_only=False)
    k = before["epoch"]
    assert 2 <= k < 6
    killed = json.loads((work / ".steps" / "aggregator.attempts").read_text())
    assert killed["attempts"] == 1  # the heartbeat of the killed attempt
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    for step in ("ingest", "validate", "localizer_hand", "attend_hand", "localizer_r1",
                 "attend_r1", "localizer_r2", "attend_r2"):  # fmt: skip
        assert f"== {step}: done before, skipped" in log
    assert f"after epoch {k}" in log  # the aggregator continued from its checkpoint
    hist = pd.read_csv(work / "models" / "aggregator" / "history.csv")
    assert list(hist["epoch"]) == [1, 2, 3, 4, 5, 6]
    # epochs 1..k come from before the kill, untouched (their wall-clock stamps too)
    assert list(hist["seconds"][:k]) == pytest.approx([r["seconds"] for r in before["history"]])
    assert not ckpt.exists()  # removed once the model was saved
    # the step's wall time counts both attempts (the killed one up to its last heartbeat)
    marker = json.loads((work / ".steps" / "aggregator.json").read_text())
    assert marker["attempts"] == 2 and marker["seconds"] >= killed["seconds"]
    timings = pd.read_csv(work / "timings.tsv", sep="\t").set_index("step")
    assert timings.loc["aggregator", "attempts"] == 2
    assert timings.loc["ingest", "attempts"] == 1
