"""Ingest a cohort: decode every image once, normalize it, and write the image store,
`manifest.parquet` and the rejected list.

One implementation, called by the CLI (and so by the DVC stage) and by the Prefect task.
Decoding runs in a process pool over all cores; the parent only writes shards.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from boneage.cohort import Candidate, Cohort, Rejected, discover
from boneage.config import IngestConfig
from boneage.imageio import decode_file, encode_png, resize_long_side, resize_square
from boneage.rejects import Reason, RejectError
from boneage.split import assign_split, split_balance
from boneage.store import StoreWriter

MANIFEST_COLUMNS = [
    "id", "sex", "boneage_months", "chronological_age_months", "split", "source", "format",
    "sha256", "orig_height", "orig_width", "store_height", "store_width", "scale", "shard",
    "sex_source", "age_source", "label_row", "qc_flags", "qc_hand_score", "qc_distance",
]  # fmt: skip
REJECTED_COLUMNS = ["id", "source", "row", "reason", "detail"]


@dataclass
class IngestResult:
    out: Path
    manifest: pd.DataFrame
    rejected: pd.DataFrame
    seconds: float

    @property
    def summary(self) -> dict:
        return {
            "n_input": len(self.manifest) + len(self.rejected),
            "n_ingested": len(self.manifest),
            "n_rejected": len(self.rejected),
            "rejected_by_reason": dict(
                sorted(Counter(self.rejected["reason"]).items()) if len(self.rejected) else []
            ),
            "splits": {
                s: int((self.manifest["split"] == s).sum()) for s in ("train", "val", "test")
            },
            "seconds": round(self.seconds, 2),
            "images_per_second": round(len(self.manifest) / self.seconds, 2)
            if self.seconds
            else None,
        }


QC_BATCH = 16  # images per QC forward pass (and per pool task)


def _decode_checked(path: Path, cfg: IngestConfig) -> tuple[dict, np.ndarray]:
    """Read, hash, decode and check one image (before QC): (fields so far, pixels)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RejectError(Reason.UNREADABLE_IMAGE, f"cannot read file: {exc.strerror}") from exc
    if not data:
        raise RejectError(Reason.UNREADABLE_IMAGE, "empty file (0 bytes)")
    sha = hashlib.sha256(data).hexdigest()
    img = decode_file(path, data, cfg.max_pixels)
    px = img.pixels
    if px.ndim != 2 or min(px.shape) < 1:
        raise RejectError(Reason.UNREADABLE_IMAGE, f"unexpected decoded shape {px.shape}")
    if cfg.qc.enabled:  # size first: a 10x10 image is too small, whatever it holds
        from boneage.qc import size_problem

        problem = size_problem(*px.shape, cfg.qc)
        if problem:
            raise RejectError(Reason.TOO_SMALL, problem)
    std = float(px[::4, ::4].std())  # subsampled: blank detection needs no full pass
    if std < cfg.min_std:
        raise RejectError(
            Reason.BLANK_IMAGE,
            f"blank or constant image (pixel std {std:.2f} < min_std {cfg.min_std:g})",
        )
    rec = {
        "sha256": sha,
        "format": img.format,
        "dicom_sex": img.sex,
        "dicom_age": img.chronological_age_months,
        "dicom_age_source": img.age_source,
    }
    return rec, px


def _finish_image(rec: dict, px, verdict, cfg: IngestConfig) -> dict:
    """Apply the QC verdict (reject, or the corrected pixels) and encode the stored image."""
    qc = {"qc_flags": None, "qc_hand_score": None, "qc_distance": None}
    if verdict is not None:  # corrected (turned / inverted back) or rejected as not a hand
        if verdict.reject:
            raise RejectError(Reason.NOT_A_HAND, verdict.reject)
        px = verdict.pixels
        qc = {"qc_flags": ";".join(verdict.flags), "qc_hand_score": verdict.hand_prob,
              "qc_distance": verdict.distance}  # fmt: skip
    resize = resize_square if cfg.store_geometry == "square" else resize_long_side
    small, scale = resize(px, cfg.store_long_side)
    return {
        "png": encode_png(small, cfg.png_compress_level),
        "height": int(small.shape[0]),
        "width": int(small.shape[1]),
        "orig_height": int(px.shape[0]),
        "orig_width": int(px.shape[1]),
        "scale": float(scale),
        **rec,
        **qc,
    }


def _reject(exc: Exception) -> tuple[None, tuple[Reason, str]]:
    if isinstance(exc, RejectError):
        return None, (exc.reason, exc.detail)
    return None, (Reason.UNREADABLE_IMAGE, f"{type(exc).__name__}: {exc}")


def _work_chunk(args: tuple[list[Path], IngestConfig]) -> list[tuple[dict | None, tuple | None]]:
    """(store fields, None) or (None, (reason, detail)) for each image of a chunk, in order.
    Decoding and checks run per image; the QC model sees the chunk's surviving images in
    one batch (one forward pass instead of one per image). One bad image never stops the
    chunk: a QC batch that fails is retried image by image."""
    paths, cfg = args
    out: list = [None] * len(paths)
    pending = []
    for k, path in enumerate(paths):
        try:
            pending.append((k, *_decode_checked(path, cfg)))
        except Exception as exc:  # noqa: BLE001 - one bad image never stops the batch
            out[k] = _reject(exc)
    verdicts: list = [None] * len(pending)
    if cfg.qc.enabled and pending:
        from boneage.qc import load_qc

        qc = load_qc(cfg.qc.model)
        try:
            verdicts = qc.assess_many([px for _, _, px in pending])
        except Exception:  # noqa: BLE001 - find the image that fails, alone
            verdicts = []
            for k, _, px in pending:
                try:
                    verdicts.append(qc.assess(px))
                except Exception as exc:  # noqa: BLE001
                    out[k] = _reject(exc)
                    verdicts.append(None)
    for (k, rec, px), verdict in zip(pending, verdicts, strict=True):
        if out[k] is not None:
            continue
        try:
            out[k] = (_finish_image(rec, px, verdict, cfg), None)
        except Exception as exc:  # noqa: BLE001
            out[k] = _reject(exc)
    return out


def _pool_context() -> mp.context.BaseContext:
    """fork (fast) in a single-threaded process; forkserver when other threads exist
    (Prefect/Ray workers, thread pools): forking a multi-threaded process can deadlock on
    a lock another thread held at the fork."""
    methods = mp.get_all_start_methods()
    if threading.active_count() > 1 and "forkserver" in methods:
        return mp.get_context("forkserver")
    return mp.get_context("fork" if "fork" in methods else "spawn")


def _iter_results(cands: list[Candidate], cfg: IngestConfig, workers: int, progress: bool):
    # chunks of QC_BATCH images (fewer when that would leave a worker idle)
    size = QC_BATCH if workers <= 1 else max(1, min(QC_BATCH, len(cands) // (workers * 4)))
    jobs = [([c.path for c in cands[i : i + size]], cfg) for i in range(0, len(cands), size)]
    bar = tqdm(total=len(cands), desc="ingest", unit="img", disable=not progress,
               file=sys.stderr)  # fmt: skip
    try:
        if workers <= 1 or len(jobs) <= 1:
            for chunk in map(_work_chunk, jobs):
                yield from chunk
                bar.update(len(chunk))
        else:
            with _pool_context().Pool(workers) as pool:
                for chunk in pool.imap(_work_chunk, jobs):
                    yield from chunk
                    bar.update(len(chunk))
    finally:
        bar.close()


def _finish_row(c: Candidate, rec: dict, cfg: IngestConfig) -> tuple[dict | None, Rejected | None]:
    """Combine CSV and DICOM metadata; reject what only decoding could reveal."""
    sex, sex_source = c.sex, c.sex_source
    if sex is None and rec["dicom_sex"] in ("M", "F"):
        sex, sex_source = rec["dicom_sex"], "dicom"
    if sex is None:
        if not cfg.allow_unknown_sex:
            return None, Rejected(
                Reason.UNKNOWN_SEX,
                "no sex in the CSV or the DICOM header",
                c.id,
                c.source,
                c.label_row,
            )
        sex = "U"
    chrono, age_source = c.chronological_age_months, "csv"
    if chrono is None:
        chrono, age_source = rec["dicom_age"], rec["dicom_age_source"]
        if chrono is not None and not 0 <= chrono <= 240:
            return None, Rejected(
                Reason.LABEL_OUT_OF_RANGE,
                f"chronological age {chrono:.1f} months from the DICOM header outside 0-240",
                c.id,
                c.source,
                c.label_row,
            )
    return {
        "id": c.id,
        "sex": sex,
        "boneage_months": c.boneage_months,
        "chronological_age_months": chrono,
        "split": assign_split(c.id, cfg.split),
        "source": c.source,
        "format": rec["format"],
        "sha256": rec["sha256"],
        "orig_height": rec["orig_height"],
        "orig_width": rec["orig_width"],
        "store_height": rec["height"],
        "store_width": rec["width"],
        "scale": rec["scale"],
        "sex_source": sex_source,
        "age_source": age_source if chrono is not None else None,
        "label_row": c.label_row,
        "qc_flags": rec.get("qc_flags"),
        "qc_hand_score": rec.get("qc_hand_score"),
        "qc_distance": rec.get("qc_distance"),
    }, None


def ingest(
    cohort_dir: Path,
    labels: Path | None,
    out: Path,
    cfg: IngestConfig,
    *,
    progress: bool = True,
) -> IngestResult:
    """Ingest a cohort into OUT: store/, manifest.parquet, rejected.{csv,parquet}, summary.json.

    Raises CohortError when the cohort as a whole cannot be read, boneage.qc.QCModelError
    when ingest.qc is enabled and its model cannot be loaded.
    """
    t0 = time.perf_counter()
    cohort: Cohort = discover(
        cohort_dir,
        labels,
        require_labels=cfg.require_labels,
        allow_unknown_sex=cfg.allow_unknown_sex,
        allow_external_links=cfg.allow_external_links,
    )
    return ingest_candidates(cohort.candidates, cohort.rejected, out, cfg,
                             progress=progress, t0=t0)  # fmt: skip


def ingest_candidates(
    candidates: list[Candidate],
    rejected_before: list[Rejected],
    out: Path,
    cfg: IngestConfig,
    *,
    progress: bool = True,
    t0: float | None = None,
    reject_duplicates: bool = True,
) -> IngestResult:
    """Ingest already discovered candidates (a whole cohort, or one scoring shard) into
    OUT; `rejected_before` (discovery's rejections) go to the rejected list first. A file
    whose bytes equal those of an image already ingested under another id is rejected
    (`duplicate_content`: it could land in two splits) unless `reject_duplicates` is
    False (scoring flags such rows instead)."""
    t0 = time.perf_counter() if t0 is None else t0
    out = Path(out)
    if cfg.qc.enabled:  # a QC model that cannot be loaded stops the ingest (QCModelError)
        from boneage.qc import load_qc

        load_qc(cfg.qc.model)
    rejected: list[Rejected] = list(rejected_before)
    rows: list[dict] = []
    workers = cfg.workers or os.cpu_count() or 1
    out.mkdir(parents=True, exist_ok=True)
    first_with: dict[str, str] = {}  # sha256 of the file → the id ingested with it
    with StoreWriter(out / "store", cfg.shard_size, cfg.store_long_side) as writer:
        results = _iter_results(candidates, cfg, workers, progress)
        for c, (rec, err) in zip(candidates, results, strict=True):
            if err is not None:
                rejected.append(Rejected(err[0], err[1], c.id, c.source, c.label_row))
                continue
            if reject_duplicates and rec["sha256"] in first_with:
                detail = (f"the same file content (sha256 {rec['sha256'][:16]}...) as the "
                          f"image of id {first_with[rec['sha256']]!r}")  # fmt: skip
                rejected.append(
                    Rejected(Reason.DUPLICATE_CONTENT, detail, c.id, c.source, c.label_row)
                )
                continue
            row, bad = _finish_row(c, rec, cfg)
            if bad is not None:
                rejected.append(bad)
                continue
            first_with.setdefault(rec["sha256"], c.id)
            row["shard"] = writer.add(
                {
                    k: rec[k]
                    for k in (
                        "png",
                        "height",
                        "width",
                        "orig_height",
                        "orig_width",
                        "scale",
                        "sha256",
                    )
                }
                | {"id": c.id}
            )
            rows.append(row)
    manifest = _frame(rows, MANIFEST_COLUMNS)
    rej = _frame([r.as_dict() for r in rejected], REJECTED_COLUMNS)
    write_tables(out, manifest, rej)
    result = IngestResult(
        out=out, manifest=manifest, rejected=rej, seconds=time.perf_counter() - t0
    )
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2) + "\n")
    return result


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=columns)
    for col in ("boneage_months", "chronological_age_months", "scale", "qc_hand_score",
                "qc_distance"):  # fmt: skip
        if col in df:
            df[col] = df[col].astype("float64")
    for col in ("orig_height", "orig_width", "store_height", "store_width"):
        if col in df:
            df[col] = df[col].astype("int64")
    for col in ("label_row", "row"):
        if col in df:
            df[col] = df[col].astype("Int64")
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].astype("string")
    return df


def write_tables(out: Path, manifest: pd.DataFrame, rejected: pd.DataFrame) -> None:
    manifest.to_parquet(out / "manifest.parquet", index=False)
    rejected.to_parquet(out / "rejected.parquet", index=False)
    rejected.to_csv(out / "rejected.csv", index=False)


def format_summary(result: IngestResult) -> str:
    s = result.summary
    lines = [
        f"ingested {s['n_ingested']} of {s['n_input']} inputs in {s['seconds']:.1f}s "
        f"({s['images_per_second'] or 0:.1f} img/s) -> {result.out}",
        "splits: " + ", ".join(f"{k}={v}" for k, v in s["splits"].items()),
        f"rejected: {s['n_rejected']}",
    ]
    for reason, n in s["rejected_by_reason"].items():
        lines.append(f"  {reason:<22} {n}")
    if len(result.manifest):
        bal = split_balance(result.manifest)
        lines.append("split shares by stratum (age band x sex):")
        for (band, sex), r in bal.iterrows():
            lines.append(
                f"  {band:<7} {sex}  n={int(r['train'] + r['val'] + r['test']):>5}  "
                f"train {r['train_share']:.2f}  val {r['val_share']:.2f}  "
                f"test {r['test_share']:.2f}"
            )
    return "\n".join(lines)
