"""The GPU job's result step: what must come back, packed into at most 8 files of at most
16 MiB under OUT (what a device call returns), whatever state the run ended in.

    python profiles/gpu/result.py --work WORK --out OUT [--profile PROFILE] [--pack DIR]
    python profiles/gpu/result.py --check OUT      # only check the limits

OUT/summary.json   the figures: job phases (exit status, seconds), per-stage timings,
                   throughput (real vs synthetic images/s and ratio), the budget check,
                   ablation rows, the exported model's validation and test MAE with its
                   interval, the pack, the environment (also printed, for the log tail)
OUT/job.log        the job's log (middle cut when over 2 MiB)
OUT/reports.tar.gz reports/ (metrics, ablation, evaluate plots, attend overlays and
                   summaries), timings.tsv, step markers, models' config/metrics JSON,
                   throughput.json, the profile
OUT/export.tar.gz.NN  the export (models/rsna299 candidate: int8 bundle + model card),
                   split into parts of at most 15 MiB (cat them in order: install.py does)

Only plain files directly in OUT (depth 0). The limits are checked at the end; a breach
exits 1 with the list.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from facts import RESULT_MAX_BYTES, RESULT_MAX_DEPTH, RESULT_MAX_FILES, MiB  # noqa: E402

PART_BYTES = 15 * MiB
LOG_MAX = 2 * MiB
MEMBER_MAX = 4 * MiB  # larger single files stay out of reports.tar.gz (listed as skipped)
REPORT_SUFFIXES = {".json", ".md", ".tsv", ".csv", ".png", ".txt", ".yaml", ".html", ".parquet"}


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tsv(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip()]


def _timings(path: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Wall and CPU seconds per step from run.py's timings.tsv (`step  wall_s  cpu_s`, or
    the older `step  12.3 s`)."""
    wall, cpu = {}, {}
    for r in _tsv(path):
        if r[0] == "step":
            continue
        try:
            wall[r[0]] = float(r[1].split()[0])
            if len(r) > 2 and r[2].strip():
                cpu[r[0]] = float(r[2])
        except (IndexError, ValueError):
            continue
    return wall, cpu


def summarize(work: Path, profile: Path | None, pack: Path | None = None) -> dict:
    """The figures worth reading first, from whatever the run left in WORK."""
    run = work / "run"
    phases = [{"phase": p, "exit": rc, "seconds": int(s)}
              for p, rc, s in _tsv(work / "job_state.tsv")]  # fmt: skip
    timings, cpu = _timings(run / "timings.tsv")
    steps = sorted(p.stem for p in (run / ".steps").glob("*.json"))
    card = _json(run / "export" / "rsna299" / "card.json")
    out: dict = {
        "complete": bool(phases) and phases[-1]["phase"] == "pipeline" and phases[-1]["exit"] == "0"
        and card is not None,
        "phases": phases,
        "steps_done": steps,
        "timings_s": timings,
        "cpu_s": cpu,
        "throughput": _json(work / "throughput.json"),
        "budget": _json(work / "budget.json"),
        "ablation": (_json(run / "reports" / "ablation.json") or {}).get("rows"),
        "evaluate": _json(run / "reports" / "evaluate" / "metrics.json"),
        "evaluate_final": _json(run / "reports" / "evaluate_final" / "metrics.json"),
        "profile": str(profile) if profile else None,
        "pack": _json(pack / "pack.json") if pack else None,
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "cpus": os.cpu_count()},
    }  # fmt: skip
    try:
        import torch

        cuda = torch.cuda.is_available()
        out["host"]["torch"] = torch.__version__
        out["host"]["device"] = torch.cuda.get_device_name(0) if cuda else "cpu"
    except Exception:  # noqa: BLE001 - the summary must be written whatever is broken
        pass
    if card is not None:
        m = card.get("metrics", {})
        agg = card.get("components", {}).get("aggregator", {}).get("metrics", {})
        out["export"] = {
            "regions": card.get("regions"),
            "val_mae": agg.get("val_mae"),
            "test_mae": m.get("mae"),
            "test_mae_ci95": m.get("mae_ci95"),
            "test_n": m.get("n"),
            "interval": m.get("interval"),
            "coverage": m.get("coverage"),
            "weights_precision": card.get("weights_precision"),
            "bundle_mb": card.get("bundle_mb"),
        }
    return out


def _add_tree(tar: tarfile.TarFile, root: Path, arc: str, skipped: list[str]) -> None:
    for f in sorted(root.rglob("*")) if root.is_dir() else [root]:
        if not f.is_file():
            continue
        rel = f"{arc}/{f.relative_to(root)}" if root.is_dir() else arc
        if f.suffix.lower() not in REPORT_SUFFIXES and f.parent.name != ".steps":
            continue
        if f.stat().st_size > MEMBER_MAX:
            skipped.append(f"{rel} ({f.stat().st_size / MiB:.1f} MiB)")
            continue
        tar.add(f, arcname=rel)


def reports_tar(work: Path, profile: Path | None, dest: Path) -> list[str]:
    """reports.tar.gz of the small files worth keeping; returns what was left out."""
    run, skipped = work / "run", []
    with tarfile.open(dest, "w:gz", compresslevel=6) as tar:
        for sub in ("reports", ".steps"):
            if (run / sub).exists():
                _add_tree(tar, run / sub, sub, skipped)
        for f in ("timings.tsv", "labels.csv"):
            if (run / f).is_file():
                tar.add(run / f, arcname=f)
        for f in ("throughput.json", "budget.json", "profile_fitted.yaml", "job_state.tsv"):
            if (work / f).is_file():
                tar.add(work / f, arcname=f)
        models = run / "models"
        if models.is_dir():  # configs and metrics, not weights
            for f in sorted(models.rglob("*.json")):
                tar.add(f, arcname=f"models/{f.relative_to(models)}")
        if profile is not None and profile.is_file():
            tar.add(profile, arcname=f"profile/{profile.name}")
    return skipped


def split_file(data: bytes, out: Path, name: str, part: int = PART_BYTES) -> list[Path]:
    """Write data as out/name.00, .01, … of at most `part` bytes each."""
    parts = []
    for i in range(0, max(1, len(data)), part):
        p = out / f"{name}.{i // part:02d}"
        p.write_bytes(data[i : i + part])
        parts.append(p)
    return parts


def export_parts(export: Path, out: Path, part: int = PART_BYTES) -> list[Path]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        tar.add(export, arcname=export.name)
    return split_file(buf.getvalue(), out, "export.tar.gz", part)


def log_copy(src: Path, dest: Path, limit: int = LOG_MAX) -> None:
    data = src.read_bytes() if src.is_file() else b"(no job.log)\n"
    if len(data) > limit:
        half = limit // 2
        cut = len(data) - 2 * half
        data = data[:half] + f"\n[... {cut} bytes cut ...]\n".encode() + data[-half:]
    dest.write_bytes(data)


def check(out: Path) -> list[str]:
    """The limits of what a device call returns; [] when they hold."""
    problems = []
    files = [p for p in out.rglob("*") if not p.is_dir()]
    if len(files) > RESULT_MAX_FILES:
        problems.append(f"{len(files)} files (at most {RESULT_MAX_FILES})")
    for f in files:
        rel = f.relative_to(out)
        if f.is_symlink() or not f.is_file():
            problems.append(f"{rel}: not a plain file")
        elif f.stat().st_size > RESULT_MAX_BYTES:
            problems.append(f"{rel}: {f.stat().st_size / MiB:.1f} MiB (at most 16 MiB)")
        if len(rel.parts) - 1 > RESULT_MAX_DEPTH:
            problems.append(f"{rel}: deeper than {RESULT_MAX_DEPTH} folders")
    return problems


def write_results(work: Path, out: Path, profile: Path | None = None, pack: Path | None = None,
                  part: int = PART_BYTES) -> dict:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():  # only this step writes here
        if old.is_file() and (old.name.startswith(("export.tar.gz.", "reports.tar.gz"))
                              or old.name in ("summary.json", "job.log")):  # fmt: skip
            old.unlink()
    summary = summarize(work, profile, pack)
    summary["reports_skipped"] = reports_tar(work, profile, out / "reports.tar.gz")
    export = work / "run" / "export" / "rsna299"
    if (export / "bundle.json").is_file():
        summary["export_parts"] = [p.name for p in export_parts(export, out, part)]
    else:
        summary["export_parts"] = []
    log_copy(work / "job.log", out / "job.log")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--pack", type=Path, default=None, help="the image pack (its pack.json)")
    ap.add_argument("--check", type=Path, metavar="OUT", help="only check OUT's limits")
    a = ap.parse_args()
    out = a.check or a.out
    if a.check is None:
        if a.work is None or a.out is None:
            ap.error("--work and --out are required (or --check OUT)")
        s = write_results(a.work, a.out, a.profile, a.pack)
        e = s.get("export") or {}
        print(f"complete: {s['complete']}; steps done: {len(s['steps_done'])}")
        tp = s.get("throughput") or {}
        if tp:
            print(f"training throughput at {tp['size']} px, batch {tp['batch']}: real "
                  f"{tp['real_images_per_second']} img/s, synthetic "
                  f"{tp['synthetic_images_per_second']} img/s, ratio {tp['ratio']}")  # fmt: skip
        print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in s["timings_s"].items()))
        for r in s.get("ablation") or []:
            print(f"ablation {r['regions']}: val MAE {r.get('val_mae')}, test MAE "
                  f"{r.get('test_mae')}")  # fmt: skip
        print(f"export: val MAE {e.get('val_mae')}, test MAE {e.get('test_mae')} "
              f"(95% CI {e.get('test_mae_ci95')})")  # fmt: skip
    for f in sorted(out.iterdir()):
        print(f"  {f.name}\t{f.stat().st_size / MiB:.2f} MiB")
    problems = check(out)
    for p in problems:
        print(f"LIMIT: {p}")
    if problems:
        raise SystemExit(1)
    print(f"{len(list(out.iterdir()))} files within the limits (<= {RESULT_MAX_FILES}, <= 16 MiB)")


if __name__ == "__main__":
    main()
