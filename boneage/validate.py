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
import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from boneage.config import ValidateConfig

log = logging.getLogger(__name__)

# GE must never phone home. GE 1.24 has no usage-statistics client left, but the variable is
# still documented as the switch, so set it before GE is first imported (and disable it in the
# context config as well, below).
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

AGE_MIN_MONTHS = 0.0
AGE_MAX_MONTHS = 240.0
DEFAULT_ALLOWED_SEX: frozenset[str] = frozenset({"M", "F"})
DEFAULT_SPLITS: tuple[str, ...] = ("train", "val", "test")
SHA256_REGEX = r"^[0-9a-f]{64}$"

#: Every column ingest writes to manifest.parquet; all must be present.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "id",
    "sex",
    "boneage_months",
    "chronological_age_months",
    "split",
    "source",
    "format",
    "sha256",
    "orig_height",
    "orig_width",
    "store_height",
    "store_width",
    "scale",
    "shard",
    "sex_source",
    "label_row",
)
#: Columns that may hold no nulls (plus ``boneage_months`` when labels are required).
REQUIRED_NON_NULL: tuple[str, ...] = (
    "id",
    "sex",
    "split",
    "sha256",
    "source",
    "orig_height",
    "orig_width",
    "store_height",
    "store_width",
)

VALIDATION_JSON = "validation.json"
DATA_DOCS_DIR = "data_docs"
_SITE_NAME = "local_site"
_PARTIAL_LIST_MAX = 10


# --------------------------------------------------------------------------- report types


@dataclass
class ExpectationOutcome:
    """One expectation's result. ``name`` is the GE expectation type."""

    name: str
    column: str | None
    kwargs: dict
    success: bool
    observed_value: Any
    details: str  # one line, human readable

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "column": self.column,
            "kwargs": _jsonable(self.kwargs),
            "success": bool(self.success),
            "observed_value": _jsonable(self.observed_value),
            "details": self.details,
        }


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
        return _jsonable(
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

    gx, gxe = _import_gx()
    docs_dir = out_dir / DATA_DOCS_DIR
    if docs_dir.exists():  # the in-memory context only knows this run; drop stale pages
        shutil.rmtree(docs_dir)
    context = _make_context(gx, docs_dir)
    datasource = context.data_sources.add_pandas("boneage")

    manifest_exps = _manifest_expectations(gxe, cfg, allowed, splits)
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
        outcomes += _run_suite(gx, context, datasource, name, df, exps)

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
        context.build_data_docs(site_names=[_SITE_NAME])
        index = docs_dir / "index.html"
        if not index.is_file():
            raise FileNotFoundError(f"GE did not write {index}")
        report.data_docs = index
    except Exception as exc:  # any GE rendering failure
        log.warning("could not build GE data docs: %s", exc)
        extra["data_docs"] = None
        extra["data_docs_error"] = _one_line(f"{type(exc).__name__}: {exc}")

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


def _import_gx():
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx, gxe


def _make_context(gx, docs_dir: Path):
    """An in-memory context whose only data docs site writes to ``docs_dir``."""
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites={
            _SITE_NAME: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _manifest_expectations(gxe, cfg: ValidateConfig, allowed_sex: list[str], splits: list[str]):
    age_desc = f"within [{AGE_MIN_MONTHS:g}, {AGE_MAX_MONTHS:g}] months (nulls allowed)"
    side = f"between {cfg.min_image_side} and {cfg.max_image_side} px"
    exps = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=list(MANIFEST_COLUMNS),
            exact_match=False,
            description="Every manifest column written by ingest is present.",
        ),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=1, description="The manifest has at least one row."
        ),
        gxe.ExpectColumnValuesToBeUnique(column="id", description="Image ids are unique."),
    ]
    non_null = list(REQUIRED_NON_NULL)
    if cfg.require_labels:
        non_null.append("boneage_months")
    exps += [
        gxe.ExpectColumnValuesToNotBeNull(column=c, description=f"`{c}` is never null.")
        for c in non_null
    ]
    exps += [
        gxe.ExpectColumnValuesToBeBetween(
            column="boneage_months",
            min_value=AGE_MIN_MONTHS,
            max_value=AGE_MAX_MONTHS,
            description=f"Bone age {age_desc}.",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="chronological_age_months",
            min_value=AGE_MIN_MONTHS,
            max_value=AGE_MAX_MONTHS,
            description=f"Chronological age {age_desc}.",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="sex",
            value_set=allowed_sex,
            description=f"Sex is one of {allowed_sex}.",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="split", value_set=splits, description=f"Split is one of {splits}."
        ),
        gxe.ExpectColumnDistinctValuesToContainSet(
            column="split",
            value_set=splits,
            description=f"Every split in {splits} has at least one image.",
        ),
    ]
    exps += [
        gxe.ExpectColumnValuesToBeBetween(
            column=c,
            min_value=cfg.min_image_side,
            max_value=cfg.max_image_side,
            description=f"Original image side `{c}` is {side}.",
        )
        for c in ("orig_height", "orig_width")
    ]
    exps += [
        gxe.ExpectColumnValuesToBeBetween(
            column=c, min_value=1, description=f"Stored image side `{c}` is at least 1 px."
        )
        for c in ("store_height", "store_width")
    ]
    exps.append(
        gxe.ExpectColumnValuesToMatchRegex(
            column="sha256",
            regex=SHA256_REGEX,
            description="sha256 is 64 lowercase hex digits.",
        )
    )
    return exps


def _run_suite(gx, context, datasource, name: str, df: pd.DataFrame, expectations):
    batch_def = datasource.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=list(expectations)))
    order = {e.id: i for i, e in enumerate(suite.expectations)}
    vdef = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch_def, suite=suite)
    )
    result = vdef.run(
        batch_parameters={"dataframe": df},
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": _PARTIAL_LIST_MAX},
    )
    # GE groups results by domain, not in suite order; restore the suite order.
    results = sorted(result.results, key=lambda r: order.get(r.expectation_config.id, len(order)))
    return [_outcome(r) for r in results]


def _outcome(r) -> ExpectationOutcome:
    conf = r.expectation_config
    kwargs = {k: v for k, v in dict(conf.kwargs).items() if k != "batch_id"}
    res = dict(r.result or {})
    message = _exception_message(r.exception_info)
    if message is not None:
        return ExpectationOutcome(
            name=conf.type,
            column=kwargs.get("column"),
            kwargs=_jsonable(kwargs),
            success=False,
            observed_value=None,
            details=f"error: {message}",
        )
    observed = _observed(res)
    return ExpectationOutcome(
        name=conf.type,
        column=kwargs.get("column"),
        kwargs=_jsonable(kwargs),
        success=bool(r.success),
        observed_value=_jsonable(observed),
        details=_details(conf.type, kwargs, res),
    )


def _exception_message(info: Any) -> str | None:
    """GE's exception_info is either one {raised_exception, exception_message, ...} dict or,
    when a metric fails (e.g. a missing column), a dict of those keyed by metric id."""
    if not isinstance(info, dict) or not info:
        return None
    entries = [info] if "raised_exception" in info else list(info.values())
    for entry in entries:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            return _one_line(str(entry.get("exception_message") or "exception during validation"))
    return None


def _observed(res: dict) -> Any:
    if "unexpected_count" in res:  # column map expectation: summarise the offenders
        return {
            "element_count": res.get("element_count"),
            "missing_count": res.get("missing_count"),
            "unexpected_count": res.get("unexpected_count"),
            "unexpected_percent": res.get("unexpected_percent"),
            "partial_unexpected_list": list(res.get("partial_unexpected_list") or [])[
                :_PARTIAL_LIST_MAX
            ],
        }
    if "partial_missing_list" in res or "missing_count" in res:  # distinct values ⊇ set
        return {"missing_from_column": list(res.get("partial_missing_list") or [])}
    if "details" in res and isinstance(res["details"], dict):  # table columns ⊇ set
        return {"observed_value": res.get("observed_value"), **res["details"]}
    return res.get("observed_value")


def _details(name: str, kwargs: dict, res: dict) -> str:
    if "unexpected_count" in res:  # column map expectation
        n_bad = res.get("unexpected_count") or 0
        n_all = res.get("element_count") or 0
        n_null = res.get("missing_count") or 0
        if name == "expect_column_values_to_not_be_null":
            return f"{n_bad} of {n_all} values are null"
        if name == "expect_column_values_to_be_unique":
            text = f"{n_bad} of {n_all} values are duplicated"
        else:
            text = f"{n_bad} of {n_all - n_null} non-null values unexpected"
        examples = list(res.get("partial_unexpected_list") or [])[:5]
        if n_bad and examples:
            text += f", e.g. {json.dumps(_jsonable(examples))}"
        return _one_line(text)
    if name == "expect_column_distinct_values_to_contain_set":
        want = list(kwargs.get("value_set") or [])
        got = set(res.get("partial_missing_list") or [])
        missing = [v for v in want if v in got] + sorted(str(v) for v in got if v not in want)
        return f"no rows for: {json.dumps(_jsonable(missing))}" if missing else "all present"
    if name == "expect_table_columns_to_match_set":
        mism = (res.get("details") or {}).get("mismatched") or {}
        missing = _jsonable(mism.get("missing") or [])
        return f"missing columns: {json.dumps(missing)}" if missing else "all columns present"
    observed = json.dumps(_jsonable(res.get("observed_value")))
    return _one_line(f"observed {observed}, expected {_bounds(kwargs)}")


def _bounds(kwargs: dict) -> str:
    lo, hi = _jsonable(kwargs.get("min_value")), _jsonable(kwargs.get("max_value"))
    if lo is not None and hi is not None:
        return f"between {lo:g} and {hi:g}"
    if lo is not None:
        return f">= {lo:g}"
    if hi is not None:
        return f"<= {hi:g}"
    return "any value"


# --------------------------------------------------------------------------- helpers


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _jsonable(value: Any) -> Any:
    """Convert numpy/pandas scalars, NaN/NA, sets, paths, dates … into plain JSON values."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return [_jsonable(v) for v in sorted(value, key=str)]
    if isinstance(value, list | tuple | np.ndarray | pd.Series | pd.Index):
        return [_jsonable(v) for v in list(value)]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime | date | pd.Timestamp):
        return value.isoformat()
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(value, "item"):
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    if hasattr(value, "to_json_dict"):
        return _jsonable(value.to_json_dict())
    return str(value)
