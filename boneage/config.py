"""Typed, validated configuration: one model per params.yaml section.

Unknown keys are errors, so a typo in params.yaml fails loudly instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """params.yaml (or an override) is missing, malformed or has invalid values."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(Strict):
    """Deterministic train/val/test split derived from a hash of (seed, id)."""

    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    seed: int = 42

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self


class DataConfig(Strict):
    """Where the cohort to train on lives (relative to the repo root or absolute)."""

    cohort: str = "data/raw/demo/images"
    labels: str | None = "data/raw/demo/labels.csv"


class DemoConfig(Strict):
    n: int = Field(240, ge=1)
    seed: int = 0
    size: int = Field(512, ge=128, le=4096)


class IngestConfig(Strict):
    store_long_side: int = Field(1024, ge=32)
    max_pixels: int = Field(60_000_000, ge=1)
    min_std: float = Field(2.0, ge=0)
    png_compress_level: int = Field(1, ge=0, le=9)
    shard_size: int = Field(256, ge=1)
    workers: int = Field(0, ge=0)  # 0 = all cores
    require_labels: bool = True
    allow_unknown_sex: bool = False
    split: SplitConfig = SplitConfig()


class ValidateConfig(Strict):
    max_rejected_fraction: float = Field(0.01, ge=0, le=1)
    min_image_side: int = Field(64, ge=1)
    max_image_side: int = Field(20_000, ge=1)
    require_labels: bool = True


class Params(Strict):
    """All of params.yaml. Sections are optional; missing ones take their defaults."""

    data: DataConfig = DataConfig()
    demo: DemoConfig = DemoConfig()
    ingest: IngestConfig = IngestConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def load_params(
    path: str | Path = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None
) -> Params:
    """Load and validate params.yaml. A missing file gives all defaults."""
    path = Path(path)
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    if overrides:
        raw = _deep_merge(raw, overrides)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid parameters\n{_format_errors(exc)}") from exc


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
