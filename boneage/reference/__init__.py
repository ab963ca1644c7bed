"""Bone-age standard deviation score (SDS) against a published reference.

SDS = (bone age − chronological age) / SD(chronological age, sex), where SD is the
standard deviation of skeletal age at that chronological age in the Brush Foundation
sample of the Greulich & Pyle atlas (Greulich WW, Pyle SI. Radiographic Atlas of Skeletal
Development of the Hand and Wrist, 2nd ed., Stanford University Press, 1959) — the
reference the RSNA labels (GP bone ages) were read against. The table is versioned
(`REFERENCE_ID`, `gp_brush_sd_v1.csv`); every scored row names the reference it used.

Rules: SD is interpolated linearly in chronological age between tabulated ages; outside
the tabulated range of a sex (boys 3–204 months, girls 3–192 months) no SDS is given (None)
rather than extrapolated; sex unknown → no SDS (the reference is sex-specific).

Caveat, stated wherever SDS is shown: the table was entered by hand from the published
values and could not be re-checked against the printed atlas in this project's offline
environment; check it against your copy before any clinical use.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

REFERENCE_ID = "gp1959-brush-sd/v1"
TABLE = Path(__file__).with_name("gp_brush_sd_v1.csv")


@cache
def sd_table() -> pd.DataFrame:
    return pd.read_csv(TABLE, comment="#")


def reference_sd(chronological_age_months: float, sex: str) -> float | None:
    """SD of bone age (months) at this chronological age for 'M' or 'F'; None outside the
    table or for any other sex."""
    if sex not in ("M", "F") or chronological_age_months is None:
        return None
    ca = float(chronological_age_months)
    if not math.isfinite(ca):
        return None
    t = sd_table()
    col = "sd_male_months" if sex == "M" else "sd_female_months"
    sub = t[["chronological_age_months", col]].dropna()
    x, y = sub["chronological_age_months"].to_numpy(float), sub[col].to_numpy(float)
    if ca < x[0] or ca > x[-1]:
        return None
    return float(np.interp(ca, x, y))


def bone_age_sds(
    bone_age_months: float, chronological_age_months: float | None, sex: str
) -> float | None:
    """(BA − CA) / SD(CA, sex), or None when CA is unknown or outside the reference."""
    if chronological_age_months is None:
        return None
    sd = reference_sd(chronological_age_months, sex)
    if sd is None or sd <= 0:
        return None
    return (float(bone_age_months) - float(chronological_age_months)) / sd
