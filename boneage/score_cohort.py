"""Scoring a whole cohort, resumably (`boneage score`, flows/score_cohort.py):
`plan_scoring` (discover the cohort, cut it into shards, write OUT/shards/plan.json) →
`score_shard` for each shard (boneage.score.score_candidates) → `finish_scoring`.

Shards are written with atomic renames; a rerun skips finished shards and yields exactly
one row per input file. Outputs (OUT): predictions.parquet / predictions.csv (one row per
input, columns boneage.score.PREDICTION_COLUMNS), overlays/ID.png (hand CAM + hand/R1/R2
boxes), report.html (self-contained) and summary.json.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from boneage.bundle import OpenedModel, ScoreError, calibration_version
from boneage.cohort import Candidate, discover
from boneage.fingerprint import file_hash
from boneage.reference import REFERENCE_ID
from boneage.registry import open_model
from boneage.score import PREDICTION_COLUMNS, rejected_rows, score_candidates, typed_predictions


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _atomic_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cand_dict(c: Candidate) -> dict:
    return {
        "id": c.id, "path": str(c.path), "source": c.source, "sex": c.sex,
        "sex_source": c.sex_source, "boneage_months": c.boneage_months,
        "chronological_age_months": c.chronological_age_months, "label_row": c.label_row,
    }  # fmt: skip


def _cand(d: dict) -> Candidate:
    return Candidate(
        d["id"], Path(d["path"]), d["source"], d["sex"], d["sex_source"],
        d["boneage_months"], d["chronological_age_months"], d["label_row"],
    )  # fmt: skip


def plan_scoring(
    opened: OpenedModel,
    cohort_dir: Path,
    out: Path,
    labels: Path | None = None,
    shard_size: int | None = None,
) -> dict:
    """Discover the cohort, cut it into shards and write OUT/shards/plan.json (the
    self-contained list of every shard's inputs) and the rows of the files rejected at
    discovery. A rerun into the same OUT must find the same plan; another cohort, model or
    shard size is refused. Returns the plan."""
    from boneage.cohort import CohortError

    shard_size = shard_size or opened.bundle.params.score.shard_size
    out = Path(out)
    _check_out(out, Path(cohort_dir))
    try:
        cohort = discover(Path(cohort_dir), labels, require_labels=False, allow_unknown_sex=True)
    except CohortError as exc:
        raise ScoreError(str(exc)) from exc
    if not cohort.candidates and not cohort.rejected:
        raise ScoreError(f"{cohort_dir}: no files to score")
    shards_dir = out / "shards"
    cands = cohort.candidates
    plan = {
        "model": opened.uri, "model_version": opened.version,
        "cohort": str(Path(cohort_dir).resolve()),
        "labels": str(Path(labels).resolve()) if labels else None,
        "shards": [[_cand_dict(c) for c in cands[i : i + shard_size]]
                   for i in range(0, len(cands), shard_size)],
        "rejected": [r.as_dict() for r in cohort.rejected],
        "duplicate_content": _duplicate_content(cands),
    }  # fmt: skip
    plan_f = shards_dir / "plan.json"
    if plan_f.is_file():
        try:
            earlier = json.loads(plan_f.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ScoreError(f"{plan_f}: unreadable ({exc}); use a new --out") from exc
        if earlier != plan:
            raise ScoreError(
                f"{out}: holds a scoring run of a different cohort, model or shard size "
                f"(see {plan_f}); use a new --out")  # fmt: skip
    else:
        try:
            shards_dir.mkdir(parents=True, exist_ok=True)
            _atomic_text(json.dumps(plan, indent=1) + "\n", plan_f)
        except OSError as exc:
            raise ScoreError(f"{out}: cannot write the outputs there ({exc.strerror or exc})"
                             ) from exc  # fmt: skip
    rej_f = shards_dir / "rejected.parquet"
    if not rej_f.is_file():
        _atomic_parquet(rejected_rows(opened, cohort.rejected), rej_f)
    return plan


def _check_out(out: Path, cohort_dir: Path) -> None:
    """OUT must be a new or empty folder, or one holding an earlier `boneage score` run
    (shards/plan.json; plan_scoring then checks it is of the same cohort and model) —
    scoring never writes into, or deletes from, a folder of the user's; nor may OUT lie
    inside the cohort (its outputs would become inputs). Raises ScoreError."""
    if out.exists() and not out.is_dir():
        raise ScoreError(f"{out}: --out exists and is not a folder")
    if cohort_dir.is_dir() and out.resolve().is_relative_to(cohort_dir.resolve()):
        raise ScoreError(f"{out}: --out lies inside the cohort folder {cohort_dir}; "
                         "choose a folder outside it")  # fmt: skip
    if out.is_dir():
        try:
            # an empty shards/ left by a run killed before its plan was written is ours
            entries = [
                e
                for e in out.iterdir()
                if not (e.name == "shards" and e.is_dir() and not any(e.iterdir()))
            ]
        except OSError as exc:
            raise ScoreError(f"{out}: cannot read the --out folder ({exc.strerror or exc})"
                             ) from exc  # fmt: skip
        if entries and not (out / "shards" / "plan.json").is_file():
            raise ScoreError(
                f"{out}: the folder is not empty and holds no earlier `boneage score` run "
                "(no shards/plan.json); scoring writes only into a new or empty folder, or "
                "resumes its own run there. Nothing in it was changed.")  # fmt: skip
    else:
        try:
            out.mkdir(parents=True)
        except OSError as exc:
            raise ScoreError(f"{out}: cannot create the --out folder ({exc.strerror or exc})"
                             ) from exc  # fmt: skip
    if not os.access(out, os.W_OK | os.X_OK):
        raise ScoreError(f"{out}: the --out folder is not writable")


def _duplicate_content(cands: list[Candidate]) -> dict[str, str]:
    """{id: first id with the same file bytes} for every id whose file is byte-identical
    to an earlier candidate's (the same radiograph under two ids; flagged, both scored)."""
    first: dict[str, str] = {}
    dup: dict[str, str] = {}
    for c in cands:
        try:
            h = file_hash(c.path)
        except OSError:
            continue  # unreadable: ingest reports it
        if h in first:
            dup[c.id] = first[h]
            dup.setdefault(first[h], first[h])
        else:
            first[h] = c.id
    return dup


def _remove_scratch(out: Path, n_shards: int) -> None:
    """Delete only what score_shard created: OUT/.work/shard-K (and .work once empty)."""
    work = out / ".work"
    for k in range(n_shards):
        shutil.rmtree(work / f"shard-{k:05d}", ignore_errors=True)
    try:
        work.rmdir()
    except OSError:
        pass  # absent, or holds something score did not make: left alone


def read_plan(out: Path) -> dict:
    f = Path(out) / "shards" / "plan.json"
    if not f.is_file():
        raise ScoreError(f"{f}: no scoring plan (plan_scoring first)")
    return json.loads(f.read_text())


def score_shard(opened: OpenedModel, out: Path, k: int, plan: dict | None = None) -> dict:
    """Score shard k of OUT's plan unless its file exists (atomic rename when done).
    `plan`: the plan already in memory (else read from OUT)."""
    out = Path(out)
    plan = plan or read_plan(out)
    f = out / "shards" / f"shard-{k:05d}.parquet"
    if f.is_file():
        return {"shard": k, "skipped": True}
    started = time.time()
    work = out / ".work" / f"shard-{k:05d}"
    dup = plan.get("duplicate_content") or {}
    extra = {i: ["duplicate_content"] for i in dup}
    df = score_candidates(opened, [_cand(d) for d in plan["shards"][k]], work, out / "overlays",
                          extra)  # fmt: skip
    _atomic_parquet(df, f)
    shutil.rmtree(work, ignore_errors=True)
    return {"shard": k, "skipped": False, "n": len(df), "n_ok": int((df["status"] == "ok").sum()),
            "started": started, "finished": time.time()}  # fmt: skip


def finish_scoring(opened: OpenedModel, out: Path, shard_results: list[dict],
                   seconds: float | None = None) -> dict:  # fmt: skip
    """Assemble every shard (in plan order) + the rejected rows into predictions.parquet /
    .csv, summary.json and report.html."""
    out = Path(out)
    plan = read_plan(out)
    n = len(plan["shards"])
    missing = [k for k in range(n) if not (out / "shards" / f"shard-{k:05d}.parquet").is_file()]
    if missing:
        raise ScoreError(f"{out}: shards {missing} not scored yet")
    _remove_scratch(out, n)
    parts = [pd.read_parquet(out / "shards" / f"shard-{k:05d}.parquet") for k in range(n)]
    preds = pd.concat(parts + [pd.read_parquet(out / "shards" / "rejected.parquet")],
                      ignore_index=True)  # fmt: skip
    preds = typed_predictions(preds[PREDICTION_COLUMNS])
    _atomic_parquet(preds, out / "predictions.parquet")
    _atomic_text(preds.to_csv(index=False, float_format="%.2f"), out / "predictions.csv")
    summary = summarize(preds, opened)
    summary.update(shards=n, shards_scored_now=sum(not r.get("skipped") for r in shard_results),
                   shards_reused=sum(bool(r.get("skipped")) for r in shard_results))  # fmt: skip
    timed = [r for r in shard_results if "started" in r]
    if timed:  # the shards scored now: from the first start to the last end (any workers)
        t0, t1 = min(r["started"] for r in timed), max(r["finished"] for r in timed)
        rate = sum(r["n"] for r in timed) / max(t1 - t0, 1e-9)
        summary.update(first_shard_started=t0, last_shard_finished=t1,
                       images_per_second=round(rate, 3))  # fmt: skip
    if seconds is not None:
        summary["seconds"] = round(seconds, 1)
    summary["model_verified"] = not opened.modified
    if opened.modified:  # --trust-modified: what was not as bundle.json records it
        summary["trust_modified"] = True
        summary["modified_files"] = list(opened.modified)
    _atomic_text(json.dumps(summary, indent=2) + "\n", out / "summary.json")
    from boneage.report import write_report

    write_report(preds, summary, out, max_thumbnails=opened.bundle.params.score.report_thumbnails,
                 calibration=(opened.bundle.calibration or {}).get("aggregator"))  # fmt: skip
    return summary


def score_cohort(
    model: str | Path | OpenedModel,
    cohort_dir: Path,
    out: Path,
    labels: Path | None = None,
    shard_size: int | None = None,
    log: Callable[[str], None] = lambda s: None,
    trust_modified: bool = False,
) -> dict:
    """Score every file of a cohort into OUT (resumable; see the module docstring):
    plan_scoring → score_shard for each shard → finish_scoring (flows/score_cohort.py maps
    the same three steps over workers). Raises ScoreError when the model or the cohort
    cannot be opened, or OUT cannot be used (`_check_out`). `trust_modified`: score with
    a bundle whose files differ from its bundle.json (recorded in every output)."""
    t0 = time.perf_counter()
    _check_out(Path(out), Path(cohort_dir))  # before the model is even opened
    opened = model if isinstance(model, OpenedModel) else open_model(model, trust_modified)
    opened.check()
    plan = plan_scoring(opened, cohort_dir, out, labels, shard_size)
    results = []
    for k in range(len(plan["shards"])):
        r = score_shard(opened, out, k, plan)
        results.append(r)
        if not r["skipped"]:
            log(f"shard {k + 1}/{len(plan['shards'])}: {r['n_ok']}/{r['n']} ok")
    return finish_scoring(opened, out, results, time.perf_counter() - t0)


def summarize(preds: pd.DataFrame, opened: OpenedModel) -> dict:
    ok = preds[preds["status"] == "ok"]
    flags = [f for s in ok["flags"].fillna("") for f in s.split(";") if f]
    out = {
        "model": opened.name, "model_version": opened.version, "n": len(preds),
        "n_ok": len(ok), "n_error": int((preds["status"] == "error").sum()),
        "flags": {f: flags.count(f) for f in sorted(set(flags))},
        "sds_reference": REFERENCE_ID, "calibration": calibration_version(opened.bundle),
    }  # fmt: skip
    ref = ok["reference_boneage_months"]
    if ref.notna().any():
        err = (ok["boneage_months"] - ref)[ref.notna()]
        out["mae_vs_reference_months"] = float(err.abs().mean())
        out["n_with_reference"] = int(ref.notna().sum())
    return out
