"""Run the whole pipeline on a real cohort with a params profile, resumably.

    python profiles/run.py PROFILE.yaml --work DIR --cohort IMAGES --labels CSV
        [--holdout CSV] [--annotations DIR] [--until STEP] [--skip STEP ...] [--no-track]
        [--export-title T --export-status S] [--data-card MD]

The same `boneage` commands the DVC stages run (ingest → validate → hand/r1/r2 localizers
and attend → localization check → aggregator → evaluate → carpal head → ablation → for
the row with the lowest VALIDATION MAE: calibrate → evaluate with calibration (the row's
predictions reused, `evaluate --reuse`) → bundle → export with model card),
with every path under DIR. Used for the full-set CPU profile, the GPU job and its CPU
rehearsal (it needs no DVC, so it runs where DVC is not installed).

Resuming: a step that finished leaves DIR/.steps/STEP.json (its time and a key: the
profile sections it reads, its command and the keys of the steps before it). Run the same
command again after an interruption and finished steps are skipped; a training step
continues from its last finished epoch (per-epoch checkpoints, boneage.training.fit).
Changing a profile section re-runs from the first step that reads it. DIR/timings.tsv
lists the steps' wall times — a step a kill interrupted counts every attempt, each up to
its last heartbeat (DIR/.steps/STEP.attempts, every 10 s) — their CPU times (of the
attempt that finished) and attempts; `--until STEP` stops after
STEP; `--skip STEP` (repeatable) leaves a step out, e.g. `validate` where Great
Expectations is not installed (the GPU machine: profiles/gpu/job.sh).

`--holdout CSV`: ids (first column) left out of the cohort, e.g. the 12 RSNA ids whose
full-resolution originals must stay unseen; the labels are rewritten to DIR/labels.csv
without them and ingest reads only the files that CSV names.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
HEARTBEAT_S = 10.0  # how often a running step records its wall time so far
NO_TRACK_ENV = "BONEAGE_NO_TRACK"  # boneage.tracking: no MLflow run in any command


def steps(a: argparse.Namespace, work: Path) -> list[tuple[str, list[str]]]:
    """(name, boneage argv) in pipeline order."""
    p = ["--params", str(a.profile)]
    loc = ["--ingest", "ingest", "--attend-root", "attend"]
    track = ["--no-track"] if a.no_track else []
    out: list[tuple[str, list[str]]] = [
        ("ingest", ["ingest", "--cohort", str(a.cohort), "--labels", str(labels_path(a, work)),
                    "--out", "ingest", "--summary", "reports/ingest_summary.json",
                    "--no-progress", *p]),
        ("validate", ["validate", "--manifest", "ingest/manifest.parquet", "--rejected",
                      "ingest/rejected.parquet", "--out", "reports/validation", *p]),
    ]  # fmt: skip
    for s in ("hand", "r1", "r2"):
        out += [
            (f"localizer_{s}", ["train-localizer", "--stage", s, *loc, "--out",
                                f"models/localizer_{s}", "--metrics",
                                f"reports/localizer_{s}.json", "--no-progress", *track, *p]),
            (f"attend_{s}", ["attend", "--stage", s, *loc, "--model", f"models/localizer_{s}",
                             "--reports", f"reports/attend/{s}", "--no-progress", *p]),
        ]  # fmt: skip
    if a.annotations:
        out.append(("localization", ["check-regions", "--annotations", str(a.annotations),
                                     "--attend-root", "attend", "--ingest", "ingest",
                                     "--out", "reports/localization_rsna"]))  # fmt: skip
    out += [
        ("aggregator", ["train-aggregator", *loc, "--out", "models/aggregator", "--metrics",
                        "reports/aggregator.json", "--no-progress", *track, *p]),
        ("evaluate", ["evaluate", *loc, "--model", "models/aggregator", "--out",
                      "reports/evaluate", *track, *p]),
        ("carpal", ["train-aggregator", "--carpal", *loc, "--out", "models/carpal",
                    "--no-progress", *track, *p]),
        ("ablation", ["ablation", *loc, "--models-root", "models", "--reports", "reports",
                      "--resume", *p]),
    ]  # fmt: skip
    if a.small_ablation:
        out.append(("ablation_small", ["ablation", *loc, "--models-root", "models/small",
                                        "--reports", "reports/small", "--resume",
                                        "--params", str(a.small_ablation)]))  # fmt: skip
    return out


def final_steps(a: argparse.Namespace, best: str) -> list[tuple[str, list[str]]]:
    p = ["--params", str(a.profile)]
    export = ["export", "--bundle", "models/bundle", "--out", "export/rsna299", "--weights",
              a.weights, "--ingest", "ingest", "--cohort", str(a.cohort), "--evaluation",
              "reports/evaluate_final", "--ablation", "reports/ablation.json",
              "--command", a.command or " ".join(sys.argv), "--title", a.export_title,
              "--use-path", "models/rsna299", "--timings", "timings.tsv"]  # fmt: skip
    if a.machine:
        export += ["--machine", a.machine]
    if a.data_card:
        export += ["--data-card", str(a.data_card)]
    if a.export_status:
        export += ["--status", a.export_status]
    loc = ["--ingest", "ingest", "--attend-root", "attend"]
    agg = f"models/ablation/{best}"
    cal = "models/calibration/calibration.json"
    return [
        ("calibrate", ["calibrate", *loc, "--aggregator", agg, "--carpal", "models/carpal",
                       "--out", "models/calibration", *p]),
        ("evaluate_final", ["evaluate", *loc, "--model", agg, "--calibration", cal, "--out",
                            "reports/evaluate_final", "--reuse", f"reports/ablation/{best}",
                            *(["--no-track"] if a.no_track else []), *p]),  # fmt: skip
        ("bundle", ["bundle", "--models-root", "models", "--aggregator", agg, "--calibration",
                    cal, "--out", "models/bundle", *p]),
        ("export", export),
    ]  # fmt: skip


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def labels_path(a: argparse.Namespace, work: Path) -> Path:
    return work / "labels.csv" if a.holdout else Path(a.labels)


def write_labels(a: argparse.Namespace, work: Path) -> None:
    """DIR/labels.csv: the labels without the holdout ids (none: the labels as given)."""
    if not a.holdout:
        return
    with open(a.holdout, newline="") as f:
        held = {row[0] for i, row in enumerate(csv.reader(f)) if i and row}
    with open(a.labels, newline="") as f, open(work / "labels.csv", "w", newline="") as g:
        r, w = csv.reader(f), csv.writer(g)
        w.writerow(next(r))
        kept = [row for row in r if row and row[0] not in held]
        w.writerows(kept)
    print(f"labels: {len(kept)} rows, {len(held)} holdout ids left out -> {work / 'labels.csv'}")


def reuse_aggregator(work: Path) -> None:
    """The aggregator just trained and evaluated is the ablation row of its region set:
    copied there, so `ablation --resume` reuses it (it checks the budget is the same)
    instead of training the same model twice."""
    cfg = work / "models" / "aggregator" / "config.json"
    if not cfg.is_file():
        return
    name = "+".join(json.loads(cfg.read_text())["regions"])
    for src, dst in (("models/aggregator", f"models/ablation/{name}"),
                     ("reports/evaluate", f"reports/ablation/{name}")):  # fmt: skip
        shutil.rmtree(work / dst, ignore_errors=True)
        shutil.copytree(work / src, work / dst)


def best_row(work: Path) -> str:
    rows = json.loads((work / "reports" / "ablation.json").read_text())["rows"]
    return min(rows, key=lambda r: r["val_mae"])["regions"].replace(" ", "_")


# The profile sections each step reads (a step's key covers them, its command and the
# steps before it): tuning attend.r1 re-runs attend_r1 and what follows, nothing before.
STAGE_SECTIONS = {
    "localizer": ("localizer.model", "localizer.train", "localizer.augment",
                  "localizer.cam_window"),
    "attend": ("attend.batch_size", "attend.device", "attend.amp", "attend.overlays_per_split",
               "attend.png_store"),
}  # fmt: skip
PACKAGED = ("ingest", "localizer", "attend", "aggregator", "carpal", "calibrate", "score",
            "registry")  # fmt: skip
READS = {
    "ingest": ("ingest",),
    "validate": ("validate",),
    **{f"localizer_{s}": (*STAGE_SECTIONS["localizer"], f"localizer.{s}")
       for s in ("hand", "r1", "r2")},
    **{f"attend_{s}": (*STAGE_SECTIONS["attend"], f"attend.{s}") for s in ("hand", "r1", "r2")},
    "localization": (),
    "aggregator": ("aggregator",),
    "evaluate": ("aggregator", "evaluate"),
    "carpal": ("aggregator", "carpal"),
    "ablation": ("aggregator", "evaluate", "ablation"),
    "ablation_small": (),  # reads its own profile: its command names it, its key hashes it
    "calibrate": ("aggregator", "calibrate"),
    "evaluate_final": ("evaluate", "calibrate"),
    "bundle": PACKAGED,
    "export": (*PACKAGED, "evaluate"),
}  # fmt: skip


def _section(profile: dict, dotted: str):
    node = profile
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


class Steps:
    """Done-markers, keys and timings of a work dir."""

    def __init__(self, work: Path, profile: Path):
        self.dir = work / ".steps"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.profile_path = profile
        self.profile = yaml.safe_load(profile.read_text()) or {}
        self.key = ""
        self.work = work

    def step_key(self, name: str, argv: list[str]) -> str:
        """Hash of the previous step's key, this step's command (paths of the profile and
        inputs included) and the profile sections it reads."""
        reads = {d: _section(self.profile, d) for d in READS[name]}
        # another profile in the command (ablation_small's) counts by its content
        yamls = [Path(v) for v in argv if v.endswith(".yaml")]
        other = [f.read_text() for f in yamls if f.is_file() and f != self.profile_path]
        blob = "\x1f".join(
            [self.key, *argv, json.dumps(reads, sort_keys=True, default=str), *other]
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def run(self, name: str, argv: list[str]) -> None:
        self.key = self.step_key(name, argv)
        marker = self.dir / f"{name}.json"
        if marker.is_file() and json.loads(marker.read_text()).get("key") == self.key:
            print(f"== {name}: done before, skipped", flush=True)
            return
        marker.unlink(missing_ok=True)
        before = self.earlier_attempts(name)
        print(f"== {name}: boneage {' '.join(argv)}", flush=True)
        t0, cpu0 = time.perf_counter(), _children_cpu()
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(name, before, t0, stop),
                                daemon=True)  # fmt: skip
        beat.start()
        try:
            rc = subprocess.call([sys.executable, "-m", "boneage.cli", *argv], cwd=self.work)
        finally:
            stop.set()
            beat.join()
        seconds, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
        self._write_attempts(name, before, seconds)
        if rc != 0:
            raise SystemExit(f"step {name} failed (exit {rc}); fix and re-run to resume")
        # wall time of every attempt (an interrupted one up to its last heartbeat); the CPU
        # time only of the attempt that finished (a killed process reports none)
        info = {"key": self.key, "seconds": round(before["seconds"] + seconds, 1),
                "cpu_seconds": round(cpu, 1), "attempts": before["attempts"] + 1,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        marker.write_text(json.dumps(info) + "\n")
        (self.dir / f"{name}.attempts").unlink(missing_ok=True)
        self.write_timings()
        print(f"== {name}: {info['seconds']:.1f} s"
              + (f" over {info['attempts']} attempts" if info["attempts"] > 1 else ""),
              flush=True)  # fmt: skip

    def earlier_attempts(self, name: str) -> dict:
        """Wall seconds and count of this step's earlier, unfinished attempts with the same
        key (DIR/.steps/STEP.attempts, kept by a heartbeat while the step runs)."""
        f = self.dir / f"{name}.attempts"
        if f.is_file():
            info = json.loads(f.read_text())
            if info.get("key") == self.key:
                return {"seconds": float(info["seconds"]), "attempts": int(info["attempts"])}
        return {"seconds": 0.0, "attempts": 0}

    def _write_attempts(self, name: str, before: dict, seconds: float) -> None:
        info = {"key": self.key, "seconds": round(before["seconds"] + seconds, 1),
                "attempts": before["attempts"] + 1}  # fmt: skip
        tmp = self.dir / f"{name}.attempts.tmp"
        tmp.write_text(json.dumps(info) + "\n")
        tmp.replace(self.dir / f"{name}.attempts")

    def _heartbeat(self, name: str, before: dict, t0: float, stop: threading.Event) -> None:
        """At once and every HEARTBEAT_S, record how long this attempt has run, so a
        killed run's time still counts in the step's wall time when a re-run finishes it."""
        self._write_attempts(name, before, time.perf_counter() - t0)
        while not stop.wait(HEARTBEAT_S):
            self._write_attempts(name, before, time.perf_counter() - t0)

    def write_timings(self) -> None:
        """timings.tsv: step, wall seconds (every attempt of a step a kill interrupted),
        CPU seconds (user + system of the step's processes in the attempt that finished:
        what the step costs whatever else shares the machine), attempts."""
        rows = []
        for f in sorted(self.dir.glob("*.json"), key=lambda f: f.stat().st_mtime):
            info = json.loads(f.read_text())
            rows.append((f.stem, info["seconds"], info.get("cpu_seconds"),
                         info.get("attempts", 1)))  # fmt: skip
        total = sum(r[1] for r in rows)
        cpu = sum(r[2] or 0.0 for r in rows)
        lines = ["step\twall_s\tcpu_s\tattempts"]
        lines += [f"{n}\t{s:.1f}\t{'' if c is None else f'{c:.1f}'}\t{k}"
                  for n, s, c, k in rows]  # fmt: skip
        lines.append(f"total\t{total:.1f}\t{cpu:.1f}\t{sum(r[3] for r in rows)}")
        (self.work / "timings.tsv").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--labels", type=Path, required=True)
    ap.add_argument("--holdout", type=Path, help="CSV whose first column lists ids to leave out")
    ap.add_argument("--annotations", type=Path, help="RSNA ROI annotations (localization step)")
    ap.add_argument("--until", help="stop after this step")
    ap.add_argument("--skip", action="append", default=[], metavar="STEP",
                    help="leave this step out (repeatable)")  # fmt: skip
    ap.add_argument("--small-ablation", type=Path,
                    help="profile of a second ablation (smaller budget, more rows)")  # fmt: skip
    ap.add_argument("--no-track", action="store_true", help="no MLflow tracking")
    ap.add_argument("--weights", default="int8", help="export weights: int8 | fp16 | fp32")
    ap.add_argument("--export-title", default="boneage rsna299 reference model")
    ap.add_argument("--export-status", default=None)
    ap.add_argument("--data-card", type=Path, default=REPO / "profiles" / "rsna_data_card.md")
    ap.add_argument("--command", default=None, help="the command the model card quotes")
    ap.add_argument("--machine", default=None,
                    help="what the run runs on (quoted in the card with step times)")  # fmt: skip
    a = ap.parse_args()
    for name in ("profile", "cohort", "labels", "holdout", "annotations", "data_card",
                 "small_ablation"):  # fmt: skip
        v = getattr(a, name)
        if v is not None:
            setattr(a, name, v.resolve())
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    if a.no_track:  # every step (ablation has no flag in its argv)
        os.environ[NO_TRACK_ENV] = "1"
        print("MLflow tracking is off (--no-track): metrics go to the reports/ files only")
    write_labels(a, work)
    done = Steps(work, a.profile)
    plan = steps(a, work)
    names = [n for n, _ in plan] + ["calibrate", "evaluate_final", "bundle", "export"]
    for step in ([a.until] if a.until else []) + a.skip:
        if step not in names:
            raise SystemExit(f"{step}: not a step ({', '.join(names)})")
    for name, argv in plan:
        if name in a.skip:
            print(f"== {name}: skipped (--skip {name})", flush=True)
            continue
        if name == "ablation":
            reuse_aggregator(work)
        done.run(name, argv)
        if name == a.until:
            return
    best = best_row(work)
    print(f"reference: ablation row {best} (lowest validation MAE)")
    for name, argv in final_steps(a, best):
        done.run(name, argv)
        if name == a.until:
            return
    for f in ("reports/ablation.md", "timings.tsv"):
        print((work / f).read_text())
    print(f"export: {work / 'export' / 'rsna299'}")


if __name__ == "__main__":
    main()
