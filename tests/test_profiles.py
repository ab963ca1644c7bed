"""Experiment profiles (profiles/*.yaml) and the profile runner's step keys."""

from __future__ import annotations

import argparse
import copy
import importlib.util
from pathlib import Path

import pytest
import yaml

from boneage.config import load_params

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted((REPO / "profiles").glob("*.yaml"))


def _runner():
    spec = importlib.util.spec_from_file_location("profile_run", REPO / "profiles" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_every_profile_is_valid_params(path):
    load_params(path)


@pytest.mark.parametrize("full_name, small_name", [
    ("rsna_cpu_full.yaml", "rsna_cpu_ablation_small.yaml"),
    ("rsna_cpu_v4.yaml", "rsna_cpu_v4_ablation_small.yaml"),
])  # fmt: skip
def test_small_ablation_profile_differs_from_the_full_one_only_in_its_budget_and_rows(
    full_name, small_name
):
    full = yaml.safe_load((REPO / "profiles" / full_name).read_text())
    small = yaml.safe_load((REPO / "profiles" / small_name).read_text())
    assert len(small["ablation"]["configs"]) > 1
    for p in (full, small):
        agg = p["aggregator"]
        agg["img_size"] = agg["train"]["epochs"] = agg["tta_shift"] = None
        agg["train"]["low_res_size"] = agg["train"]["low_res_epochs"] = None
        p["ablation"]["configs"] = None
    assert small == full


def _keys(mod, work: Path, profile: Path) -> dict[str, str]:
    a = argparse.Namespace(profile=profile, cohort=Path("/c"), labels=Path("/l.csv"),
                           holdout=None, annotations=None, no_track=True,
                           small_ablation=None)  # fmt: skip
    st = mod.Steps(work, profile)
    keys = {}
    for name, argv in mod.steps(a, work):
        st.key = st.step_key(name, argv)
        keys[name] = st.key
    return keys


def test_a_profile_change_reruns_only_the_steps_from_the_first_reader_on(tmp_path):
    mod = _runner()
    base = yaml.safe_load((REPO / "profiles" / "rsna_cpu_full.yaml").read_text())
    tuned = copy.deepcopy(base)
    tuned["attend"]["r1"]["tau"] = 0.42
    # the same file name in both runs, so only the content differs
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(base))
    ka = _keys(mod, tmp_path / "w1", tmp_path / "a.yaml")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(tuned))
    kb = _keys(mod, tmp_path / "w2", tmp_path / "a.yaml")
    names = list(ka)
    first = names.index("attend_r1")
    assert all(ka[n] == kb[n] for n in names[:first])
    assert all(ka[n] != kb[n] for n in names[first:])


def test_a_step_resumed_after_a_kill_counts_the_wall_time_of_every_attempt(tmp_path):
    """A killed step leaves its heartbeat (DIR/.steps/STEP.attempts); the attempt that
    finishes it adds that time and counts the attempts, in the marker and timings.tsv. An
    attempts file from another key (a changed profile) does not count."""
    import json

    mod = _runner()
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump({"aggregator": {"img_size": 64}}))
    steps = mod.Steps(tmp_path / "w", profile)
    argv = ["--help"]  # a quick command that succeeds
    key = steps.step_key("aggregator", argv)
    (steps.dir / "aggregator.attempts").write_text(
        json.dumps({"key": key, "seconds": 600.0, "attempts": 1})
    )
    (steps.dir / "evaluate.attempts").write_text(
        json.dumps({"key": "another profile", "seconds": 900.0, "attempts": 3})
    )
    steps.key = ""
    steps.run("aggregator", argv)
    steps.run("evaluate", argv)
    agg = json.loads((steps.dir / "aggregator.json").read_text())
    ev = json.loads((steps.dir / "evaluate.json").read_text())
    assert agg["attempts"] == 2 and 600.0 < agg["seconds"] < 700.0
    assert ev["attempts"] == 1 and ev["seconds"] < 100.0
    assert not (steps.dir / "aggregator.attempts").exists()
    rows = (tmp_path / "w" / "timings.tsv").read_text().splitlines()
    assert rows[0] == "step\twall_s\tcpu_s\tattempts"
    assert rows[1].startswith("aggregator\t") and rows[1].endswith("\t2")
    assert rows[-1].startswith("total\t") and rows[-1].endswith("\t3")


def test_a_running_step_records_its_time_so_far(tmp_path, monkeypatch):
    """The heartbeat writes the attempt's time while the command runs, so a SIGKILL (which
    leaves no chance to write anything) loses at most one interval."""
    import json
    import threading
    import time

    mod = _runner()
    monkeypatch.setattr(mod, "HEARTBEAT_S", 0.05)
    profile = tmp_path / "p.yaml"
    profile.write_text("{}\n")
    steps = mod.Steps(tmp_path / "w", profile)
    steps.key = "k"
    stop = threading.Event()
    beat = threading.Thread(target=steps._heartbeat,
                            args=("aggregator", {"seconds": 5.0, "attempts": 2},
                                  time.perf_counter() - 1.0, stop))  # fmt: skip
    beat.start()
    time.sleep(0.3)
    stop.set()
    beat.join()
    info = json.loads((steps.dir / "aggregator.attempts").read_text())
    assert info["key"] == "k" and info["attempts"] == 3 and 6.0 < info["seconds"] < 7.0
