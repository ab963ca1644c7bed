"""Deterministic, stable train/val/test split.

Each id's split is a pure function of (seed, id): u = H(seed, id) ∈ [0, 1) from SHA-256,
and the split is the fraction bucket u falls into. Consequences:

- deterministic: same seed + id → same split, on any machine, in any order;
- stable: adding or removing other rows, or correcting a label, never moves an id;
- stratified by age band × sex in expectation: u is uniform and independent of age and
  sex, so within every stratum the split shares are binomial around the configured
  fractions (±1 percentage point for a stratum of 1,000 at 10 %). `split_balance`
  reports the realised shares per stratum; ingest prints them and tests check them on
  the real RSNA set.

Exact per-stratum quotas would need rank-based assignment, which moves existing ids when
rows are added; stability is worth more here (a test image must never migrate into
training after a re-ingest).
"""

from __future__ import annotations

import hashlib

import pandas as pd

from boneage.config import SplitConfig

SPLITS = ("train", "val", "test")
AGE_BANDS_YEARS = (0, 5, 10, 15, 20)


def age_band(age_months: float | None) -> str:
    """'0-5y', '5-10y', '10-15y', '15-20y' (ages ≥ 240 fall into the last), 'unknown'."""
    if age_months is None or pd.isna(age_months):
        return "unknown"
    years = float(age_months) / 12.0
    for lo, hi in zip(AGE_BANDS_YEARS[:-1], AGE_BANDS_YEARS[1:], strict=True):
        if years < hi:
            return f"{lo}-{hi}y"
    return f"{AGE_BANDS_YEARS[-2]}-{AGE_BANDS_YEARS[-1]}y"


def unit_hash(*parts: object) -> float:
    """A uniform number in [0, 1) from SHA-256 of the parts."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(id_: str, cfg: SplitConfig) -> str:
    u = unit_hash(cfg.seed, id_)
    if u < cfg.train:
        return "train"
    if u < cfg.train + cfg.val:
        return "val"
    return "test"


def split_balance(manifest: pd.DataFrame) -> pd.DataFrame:
    """Share of each split within each stratum (rows: age band × sex)."""
    bands = [
        f"{lo}-{hi}y" for lo, hi in zip(AGE_BANDS_YEARS[:-1], AGE_BANDS_YEARS[1:], strict=True)
    ]
    band = pd.Categorical(manifest["boneage_months"].map(age_band), [*bands, "unknown"])
    df = manifest.assign(band=band)
    counts = (
        df.groupby(["band", "sex", "split"], observed=True).size().unstack("split", fill_value=0)
    )
    for s in SPLITS:
        if s not in counts:
            counts[s] = 0
    counts = counts[list(SPLITS)]
    shares = counts.div(counts.sum(axis=1), axis=0)
    return counts.join(shares, rsuffix="_share")
