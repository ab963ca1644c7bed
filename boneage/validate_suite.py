"""The Great Expectations plumbing of `boneage validate`: the ephemeral data context and
data-docs site, the manifest's expectation suite (built from params `validate`), running a
suite on a DataFrame, and turning GE's results into boneage's ExpectationOutcome rows with
a readable detail line each. boneage.validate holds the public API and the report types.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from boneage.config import ValidateConfig

AGE_MIN_MONTHS = 0.0
AGE_MAX_MONTHS = 240.0
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


SITE_NAME = "local_site"
PARTIAL_LIST_MAX = 10


def import_gx():
    import great_expectations as gx
    import great_expectations.expectations as gxe

    return gx, gxe


def make_context(gx, docs_dir: Path):
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
            SITE_NAME: {
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


def manifest_expectations(gxe, cfg: ValidateConfig, allowed_sex: list[str], splits: list[str]):
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


def run_suite(gx, context, datasource, name: str, df: pd.DataFrame, expectations):
    batch_def = datasource.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=list(expectations)))
    order = {e.id: i for i, e in enumerate(suite.expectations)}
    vdef = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch_def, suite=suite)
    )
    result = vdef.run(
        batch_parameters={"dataframe": df},
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": PARTIAL_LIST_MAX},
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
            kwargs=jsonable(kwargs),
            success=False,
            observed_value=None,
            details=f"error: {message}",
        )
    observed = _observed(res)
    return ExpectationOutcome(
        name=conf.type,
        column=kwargs.get("column"),
        kwargs=jsonable(kwargs),
        success=bool(r.success),
        observed_value=jsonable(observed),
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
            return one_line(str(entry.get("exception_message") or "exception during validation"))
    return None


def _observed(res: dict) -> Any:
    if "unexpected_count" in res:  # column map expectation: summarise the offenders
        return {
            "element_count": res.get("element_count"),
            "missing_count": res.get("missing_count"),
            "unexpected_count": res.get("unexpected_count"),
            "unexpected_percent": res.get("unexpected_percent"),
            "partial_unexpected_list": list(res.get("partial_unexpected_list") or [])[
                :PARTIAL_LIST_MAX
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
            text += f", e.g. {json.dumps(jsonable(examples))}"
        return one_line(text)
    if name == "expect_column_distinct_values_to_contain_set":
        want = list(kwargs.get("value_set") or [])
        got = set(res.get("partial_missing_list") or [])
        missing = [v for v in want if v in got] + sorted(str(v) for v in got if v not in want)
        return f"no rows for: {json.dumps(jsonable(missing))}" if missing else "all present"
    if name == "expect_table_columns_to_match_set":
        mism = (res.get("details") or {}).get("mismatched") or {}
        missing = jsonable(mism.get("missing") or [])
        return f"missing columns: {json.dumps(missing)}" if missing else "all columns present"
    observed = json.dumps(jsonable(res.get("observed_value")))
    return one_line(f"observed {observed}, expected {_bounds(kwargs)}")


def _bounds(kwargs: dict) -> str:
    lo, hi = jsonable(kwargs.get("min_value")), jsonable(kwargs.get("max_value"))
    if lo is not None and hi is not None:
        return f"between {lo:g} and {hi:g}"
    if lo is not None:
        return f">= {lo:g}"
    if hi is not None:
        return f"<= {hi:g}"
    return "any value"


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
            "kwargs": jsonable(self.kwargs),
            "success": bool(self.success),
            "observed_value": jsonable(self.observed_value),
            "details": self.details,
        }


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def jsonable(value: Any) -> Any:
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
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return [jsonable(v) for v in sorted(value, key=str)]
    if isinstance(value, list | tuple | np.ndarray | pd.Series | pd.Index):
        return [jsonable(v) for v in list(value)]
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
            return jsonable(value.item())
        except (TypeError, ValueError):
            pass
    if hasattr(value, "to_json_dict"):
        return jsonable(value.to_json_dict())
    return str(value)
