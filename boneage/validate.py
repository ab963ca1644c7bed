"""Validate the ingest manifest with a Great Expectations suite.

This is the only module of the library that imports Great Expectations. GE is imported
lazily (inside the functions), so importing this module stays cheap for the CLI.

Two GE validations run in one ephemeral (in-memory) data context:

* ``manifest`` — the expectation suite on ``manifest.parquet`` (unique ids, required
  columns non-null, age ranges, sex codes, split coverage, image sizes, sha256 format);
* ``rejected_summary`` — a one-row DataFrame with the share of rejected input rows,
  ``n_rejected / (n_rows + n_rejected)``, checked against ``max_rejected_fraction``.

Outputs under ``out_dir`` (nothing is written anywhere else):

* ``validation.json`` — overall success, counts, and every expectation with its name,
  column, kwargs, observed value and pass/fail;
* ``data_docs/`` — GE's HTML data docs (``data_docs/index.html``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from boneage.config import ValidateConfig
from boneage.validate_suite import (
    SITE_NAME,
    ExpectationOutcome,
    import_gx,
    jsonable,
    make_context,
    manifest_expectations,
    one_line,
    run_suite,
)

log = logging.getLogger(__name__)

# GE must never phone home. GE 1.24 has no usage-statistics client left, but the variable is
# still documented as the switch, so set it before GE is first imported (and disable it in the
# context config as well, below).
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

DEFAULT_ALLOWED_SEX: frozenset[str] = frozenset({"M", "F"})
DEFAULT_SPLITS: tuple[str, ...] = ("train", "val", "test")


VALIDATION_JSON = "validation.json"
DATA_DOCS_DIR = "data_docs"


# --------------------------------------------------------------------------- report types


@dataclass
class ValidationReport:
    success: bool
    outcomes: list[ExpectationOutcome]
    n_rows: int
    n_rejected: int
    rejected_fraction: float
    data_docs: Path | None  # out_dir/data_docs/index.html, or None when it could not be built
    extra: dict[str, Any] = field(default_factory=dict)

    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def summary(self) -> str:
        """Multi-line text for a terminal: the verdict, then one line per failure."""
        head = (
            f"validation {'passed' if self.success else 'FAILED'}: "
            f"{len(self.outcomes) - len(self.failed())}/{len(self.outcomes)} expectations met; "
            f"{self.n_rows} rows, {self.n_rejected} rejected "
            f"({self.rejected_fraction:.2%} of input)"
        )
        lines = [head]
        for o in self.failed():
            where = f"[{o.column}] " if o.column else ""
            lines.append(f"  FAIL {o.name} {where}{o.details}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        failed = self.failed()
        return jsonable(
            {
                "success": bool(self.success),
                "n_rows": int(self.n_rows),
                "n_rejected": int(self.n_rejected),
                "rejected_fraction": float(self.rejected_fraction),
                "n_expectations": len(self.outcomes),
                "n_failed": len(failed),
                "failed": [
                    {"name": o.name, "column": o.column, "details": o.details} for o in failed
                ],
                **self.extra,
                "expectations": [o.to_dict() for o in self.outcomes],
            }
        )


class ValidationFailed(RuntimeError):
    """Raised by :func:`raise_if_failed` so a pipeline stage can fail loudly."""

    def __init__(self, report: ValidationReport):
        super().__init__(report.summary())
        self.report = report


def raise_if_failed(report: ValidationReport) -> ValidationReport:
    if not report.success:
        raise ValidationFailed(report)
    return report


# --------------------------------------------------------------------------- public API


def validate_manifest(
    manifest: pd.DataFrame,
    rejected: pd.DataFrame | None,
    cfg: ValidateConfig,
    out_dir: Path,
    allowed_sex: Iterable[str] = DEFAULT_ALLOWED_SEX,
    required_splits: Iterable[str] = DEFAULT_SPLITS,
) -> ValidationReport:
    """Run the GE suite on ``manifest`` and the rejected-share check; write the outputs.

    ``rejected`` is the rejected-rows table (only its length is used); ``None`` means none.
    Never raises on bad data: missing columns, an empty manifest etc. give a failed report.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    allowed = sorted(set(allowed_sex))
    splits = list(dict.fromkeys(required_splits))

    n_rows = len(manifest)
    n_rejected = 0 if rejected is None else len(rejected)
    total = n_rows + n_rejected
    fraction = n_rejected / total if total else 0.0

    gx, gxe = import_gx()
    docs_dir = out_dir / DATA_DOCS_DIR
    if docs_dir.exists():  # the in-memory context only knows this run; drop stale pages
        shutil.rmtree(docs_dir)
    context = make_context(gx, docs_dir)
    datasource = context.data_sources.add_pandas("boneage")

    manifest_exps = manifest_expectations(gxe, cfg, allowed, splits)
    summary_exps = [
        gxe.ExpectColumnMaxToBeBetween(
            column="rejected_fraction",
            min_value=0.0,
            max_value=float(cfg.max_rejected_fraction),
            description="Share of input rows rejected by ingest, "
            "n_rejected / (n_rows + n_rejected), is at most validate.max_rejected_fraction.",
        )
    ]
    summary_df = pd.DataFrame(
        {
            "n_rows": [n_rows],
            "n_rejected": [n_rejected],
            "rejected_fraction": [float(fraction)],
        }
    )

    outcomes: list[ExpectationOutcome] = []
    for name, df, exps in (
        ("manifest", manifest, manifest_exps),
        ("rejected_summary", summary_df, summary_exps),
    ):
        outcomes += run_suite(gx, context, datasource, name, df, exps)

    success = all(o.success for o in outcomes)
    rejected_reasons: dict[str, int] = {}
    if rejected is not None and "reason" in rejected.columns and len(rejected):
        counts = rejected["reason"].astype("object").fillna("<missing>").value_counts()
        rejected_reasons = {str(k): int(v) for k, v in counts.sort_index().items()}

    extra = {
        "max_rejected_fraction": float(cfg.max_rejected_fraction),
        "rejected_reasons": rejected_reasons,
        "config": cfg.model_dump(),
        "allowed_sex": allowed,
        "required_splits": splits,
        "great_expectations_version": gx.__version__,
        "data_docs": f"{DATA_DOCS_DIR}/index.html",
    }
    report = ValidationReport(
        success=success,
        outcomes=outcomes,
        n_rows=n_rows,
        n_rejected=n_rejected,
        rejected_fraction=float(fraction),
        data_docs=None,
        extra=extra,
    )

    # Data docs are a by-product: a rendering problem must not hide the verdict, so it is
    # recorded (and logged) instead of raised.
    try:
        context.build_data_docs(site_names=[SITE_NAME])
        index = docs_dir / "index.html"
        if not index.is_file():
            raise FileNotFoundError(f"GE did not write {index}")
        report.data_docs = index
    except Exception as exc:  # any GE rendering failure
        log.warning("could not build GE data docs: %s", exc)
        extra["data_docs"] = None
        extra["data_docs_error"] = one_line(f"{type(exc).__name__}: {exc}")

    (out_dir / VALIDATION_JSON).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def validate_files(
    manifest_path: Path,
    rejected_path: Path | None,
    cfg: ValidateConfig,
    out_dir: Path,
    allowed_sex: Iterable[str] = DEFAULT_ALLOWED_SEX,
    required_splits: Iterable[str] = DEFAULT_SPLITS,
) -> ValidationReport:
    """Read ``manifest.parquet`` (and ``rejected.parquet`` or ``.csv``) and validate them."""
    manifest = pd.read_parquet(Path(manifest_path))
    rejected = None
    if rejected_path is not None:
        rejected_path = Path(rejected_path)
        if rejected_path.suffix.lower() == ".csv":
            rejected = pd.read_csv(rejected_path)
        else:
            rejected = pd.read_parquet(rejected_path)
    return validate_manifest(
        manifest,
        rejected,
        cfg,
        out_dir,
        allowed_sex=allowed_sex,
        required_splits=required_splits,
    )


# --------------------------------------------------------------------------- GE plumbing


# --------------------------------------------------------------------------- helpers
