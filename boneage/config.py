"""Typed, validated configuration: one model per params.yaml section.

Unknown keys are errors, so a typo in params.yaml fails loudly instead of being ignored.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """params.yaml (or an override) is missing, malformed or has invalid values."""


# Tracing which params a process reads (tests/test_demo_acceptance.py checks that every
# DVC stage declares exactly those): with BONEAGE_TRACE_PARAMS=FILE, every leaf value read
# from a Params tree that `load_params` made (attribute access, or model_dump of a
# section) is recorded by its dotted key, and one JSON line {"argv", "reads"} is appended
# to FILE when the process exits.
TRACE_ENV = "BONEAGE_TRACE_PARAMS"
_READS: set[str] | None = None


def _write_trace(path: str) -> None:
    line = json.dumps({"argv": sys.argv[1:], "reads": sorted(_READS or ())}) + "\n"
    with open(path, "a") as f:
        f.write(line)


if os.environ.get(TRACE_ENV):
    _READS = set()
    atexit.register(_write_trace, os.environ[TRACE_ENV])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    _trace_path: str | None = PrivateAttr(default=None)


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Strict)


def _traced_getattribute(self: Strict, name: str):
    value = object.__getattribute__(self, name)
    if name.startswith("_") or name not in type(self).model_fields:
        return value
    path = object.__getattribute__(self, "__pydantic_private__").get("_trace_path")
    if path is None:
        return value
    name = type(self).model_fields[name].alias or name  # validate_ → validate
    key = f"{path}.{name}" if path else name
    if isinstance(value, Strict):
        if value._trace_path is None:
            value._trace_path = key
    else:
        _READS.add(key)
    return value


def _trace_all(model: Strict) -> None:
    """Record every leaf under `model` as read (each getattr is a traced read)."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Strict):
            _trace_all(value)


def _traced(dump):
    def traced_dump(self, *args, **kwargs):
        _trace_all(self)
        return dump(self, *args, **kwargs)

    return traced_dump


if _READS is not None:  # only then: attribute reads of params cost nothing extra otherwise
    Strict.__getattribute__ = _traced_getattribute
    Strict.model_dump = _traced(BaseModel.model_dump)
    Strict.model_dump_json = _traced(BaseModel.model_dump_json)


class SplitConfig(Strict):
    """Deterministic train/val/test split derived from a hash of (seed, id)."""

    train: float = Field(ge=0, le=1)
    val: float = Field(ge=0, le=1)
    test: float = Field(ge=0, le=1)
    seed: int

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self


class DataConfig(Strict):
    """Where the cohort to train on lives (relative to the repo root or absolute)."""

    cohort: str
    labels: str | None


class DemoConfig(Strict):
    n: int = Field(ge=1)
    seed: int
    size: int = Field(ge=128, le=4096)


class IngestQCConfig(Strict):
    """Image QC while ingesting (boneage.qc): too small → reject `too_small`; sideways /
    upside down / inverted → corrected and flagged; not a hand → reject `not_a_hand`.
    Scoring always runs it (params score.qc); for training ingests it is this switch."""

    enabled: bool
    # the QC network: 'default' = the one shipped with the package (boneage/qc_model,
    # trained by `boneage train-qc` on the RSNA training split), or a directory
    model: str
    min_side: int = Field(ge=1)  # shorter side below this: too_small
    max_aspect: float = Field(ge=1)  # long / short side above this: too_small


class IngestConfig(Strict):
    store_long_side: int = Field(ge=32)
    # keep_aspect: long side resized, aspect kept; square: both sides resized to the long
    # side (the short one stretched), as the RSNA 299-px copies were made. Boxes map back
    # to input pixels per axis either way.
    store_geometry: str = Field(pattern="^(keep_aspect|square)$")
    max_pixels: int = Field(ge=1)
    min_std: float = Field(ge=0)
    png_compress_level: int = Field(ge=0, le=9)
    shard_size: int = Field(ge=1)
    workers: int = Field(ge=0)  # 0 = all cores
    require_labels: bool
    allow_unknown_sex: bool
    # files must lie in the cohort dir after resolving symbolic links; true accepts links
    # that resolve outside it (a cohort made of links into a trusted image collection)
    allow_external_links: bool
    split: SplitConfig
    qc: IngestQCConfig


class ValidateConfig(Strict):
    max_rejected_fraction: float = Field(ge=0, le=1)
    min_image_side: int = Field(ge=1)
    max_image_side: int = Field(ge=1)
    require_labels: bool


# ----------------------------------------------------------------------------- models


class ModelConfig(Strict):
    backbone: str
    pretrained: str  # offline-imagenet | hub | none
    pool: str = Field(pattern="^(avg|max)$")
    output_stride: int = Field(description="32, or 16/8 for finer CAMs (timm models)")
    sex_dim: int = Field(ge=0)  # 0 = no sex input
    k: int = Field(ge=2)
    dropout: float = Field(ge=0, lt=1)
    # How several stacked regions enter the network (aggregator): "stack" = as the channels
    # of one backbone (paper); "per_region" = one backbone per region, pooled features
    # concatenated before the head (3x the compute and weights for H+R1+R2).
    fusion: str = Field(pattern="^(stack|per_region)$")


class TrainConfig(Strict):
    @field_validator("amp", mode="before")
    @classmethod
    def _amp_bool(cls, v: Any) -> Any:
        return {True: "auto", False: "fp32"}.get(v, v) if isinstance(v, bool) else v

    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    eval_batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_frac: float = Field(ge=0, lt=1)
    patience: int = Field(ge=1)  # epochs without val-MAE improvement before stopping
    seed: int
    max_train_images: int | None = Field(ge=1)  # subset for CPU runs
    max_val_images: int | None = Field(ge=1)
    sigma: float = Field(gt=0)  # Gaussian label distribution width (months)
    lam: float = Field(ge=0)  # weight of KL(G || p) next to |y - E[p]|
    # exponential moving average of the weights (decay per step; 0 = off): the averaged
    # weights are validated, kept and saved
    ema: float = Field(ge=0, lt=1)
    device: str  # auto | cpu | cuda | cuda:N
    # bf16 autocast: auto = on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), fp32
    # elsewhere; bf16 = always; fp32 = never (true/false: auto/fp32, as older configs say)
    amp: str = Field(pattern="^(auto|bf16|fp32)$")
    channels_last: bool  # NHWC memory format (faster convolutions on CUDA and CPU)
    compile: bool  # torch.compile the model (CUDA)
    threads: int = Field(ge=0)  # torch CPU threads, 0 = library default
    # CUDA: keep the whole uint8 training set on the GPU when it takes at most this share
    # of free GPU memory (batches are then indexed there: no host→device copy per step)
    data_on_device_max_frac: float = Field(ge=0, le=1)
    # progressive resizing: the first `low_res_epochs` epochs train on batches resized
    # (antialiased) to `low_res_size` px — cheaper steps while the network learns coarse
    # features — and the rest at the stage's full size; validation is always at full size
    low_res_size: int | None = Field(ge=32)
    low_res_epochs: int = Field(ge=0)

    @model_validator(mode="after")
    def _low_res_needs_a_size(self) -> TrainConfig:
        if self.low_res_epochs and self.low_res_size is None:
            raise ValueError(f"low_res_epochs={self.low_res_epochs} needs low_res_size")
        return self


class AugmentConfig(Strict):
    rotation_deg: float = Field(ge=0, le=180)
    scale: tuple[float, float]
    shift: float = Field(ge=0, le=0.5)  # fraction of the side
    hflip_p: float = Field(ge=0, le=1)  # hands are left hands: off by default
    brightness: float = Field(ge=0, le=1)  # additive, fraction of full range
    contrast: tuple[float, float]
    gamma: tuple[float, float]


class LocalizerStageConfig(Strict):
    """Per-stage settings of a localizer (hand / r1 / r2)."""

    img_size: int = Field(ge=32)  # network input side (letterboxed square)
    epochs: int | None = Field(ge=1)  # overrides localizer.train.epochs
    # hide-and-seek while training: grid×grid patches, each hidden with probability
    # hide_p, so the CAM covers the whole region rather than its most telling part
    hide_grid: int = Field(ge=0)
    hide_p: float = Field(ge=0, le=1)


class LocalizerConfig(Strict):
    model: ModelConfig
    train: TrainConfig
    augment: AugmentConfig
    # CAM class weights: those of the classes within ±cam_window months of the predicted
    # age; null: every class weighted by its predicted probability (expected weights
    # under the predicted distribution; measured better on the demo's R1/R2, see README).
    cam_window: int | None = Field(ge=0)
    hand: LocalizerStageConfig
    r1: LocalizerStageConfig
    r2: LocalizerStageConfig

    def stage(self, name: str) -> LocalizerStageConfig:
        return getattr(self, name)


RelBox = tuple[float, float, float, float]


class AttendStageConfig(Strict):
    # Network input side for the CAM pass (None: the localizer's training size). The
    # localizer is fully convolutional: the age (and so the CAM's class window) is
    # predicted at the trained size, the feature maps for the CAM come from a pass at
    # cam_size; ~2x the training size gives a grid twice as fine and localizes markedly
    # better (measured on the demo cohort).
    cam_size: int | None = Field(ge=32)
    tau: float = Field(gt=0, le=1)  # CAM threshold (CAM normalised to [0, 1])
    margin: float = Field(ge=0, le=1)  # box growth per side, fraction of box size
    crop_size: int = Field(ge=16)  # side of the square crop written to the crop store
    min_area: float = Field(ge=0, lt=1)  # smallest component, fraction of the input
    # Box used when no CAM component passes (status 'fallback_prior'), relative to the
    # stage's input view: (x0, y0, x1, y1) in [0, 1].
    prior: RelBox
    erase: str = Field(pattern="^(mean|noise|blur)$")  # r1: how E fills the R1 box
    # Box refinement after the CAM: 'none' keeps the CAM component's box; 'foreground'
    # takes the radiograph's foreground component (Otsu threshold of the smoothed view,
    # padding excluded) holding the most CAM mass: a class activation map lights up the
    # most age-discriminative bones, not the whole hand, so its box alone under-covers the
    # hand; the CAM still decides which object is the hand (no annotations either way).
    refine: str = Field(pattern="^(none|foreground)$")
    # 'foreground': the CAM is set to 0 off the radiograph's foreground (Otsu, grown by 3
    # px) before thresholding: regions of a hand lie on the hand. Measured on the demo: R2
    # boxes on the true region 70 % → 82 % (CAMs were drawn to background and to the edges
    # of the erased R1 rectangle).
    cam_mask: str = Field(pattern="^(none|foreground)$")
    # Foreground threshold for `refine`/`cam_mask`: this fraction of the way from the
    # background level (5th percentile) up to Otsu's threshold. 1 = Otsu's; lower keeps
    # thin soft tissue (fingertips, thumb) that Otsu's threshold cuts off (hand boxes on
    # annotated RSNA images: see docs/localization.md).
    fg_level: float = Field(gt=0, le=1)
    # Anatomical prior: the CAM is weighted by a Gaussian centred on the `prior` box, SDs
    # prior_sigma × its width/height (null = no weighting), before thresholding: the CAM
    # picks the place, the prior keeps it on the right part of the view (chosen on
    # annotated RSNA images, never trained on them: docs/localization.md).
    prior_sigma: float | None = Field(gt=0)
    # Smallest box (before margin) as fractions of the view's width/height; a CAM
    # component smaller than that is grown about its centre (null = no minimum).
    min_size: tuple[float, float] | None


class AttendConfig(Strict):
    batch_size: int = Field(ge=1)
    device: str
    # CAM passes under bf16 autocast: auto = CUDA or a CPU with native bf16 (see
    # TrainConfig.amp); fp32 = never
    amp: str = Field(pattern="^(auto|bf16|fp32)$")
    overlays_per_split: int = Field(ge=0)
    png_store: bool  # also write every crop as a PNG file for review
    # processes for the per-image work after the CAM pass (box, refinement, crop, PNG
    # encoding): 1 = in this process; 0 = one per CPU core. Passes over fewer than
    # boneage.attend.POOL_MIN_IMAGES images (scoring's shards) always stay in-process.
    workers: int = Field(ge=0)
    hand: AttendStageConfig
    r1: AttendStageConfig
    r2: AttendStageConfig

    def stage(self, name: str) -> AttendStageConfig:
        return getattr(self, name)


REGIONS = ("O", "H", "R1", "R2", "E")


class AggregatorConfig(Strict):
    """The age aggregator over image regions (paper: H, R1, R2 stacked as channels).

    Regions: O = whole image (ingest store), H = hand crop, R1 = carpal crop, R2 =
    metacarpal/phalanx crop, E = hand crop with R1 erased (attend outputs).
    """

    regions: tuple[str, ...]
    img_size: int = Field(ge=32)  # every region is resized to img_size x img_size
    model: ModelConfig
    train: TrainConfig
    augment: AugmentConfig
    # test-time augmentation when predicting (evaluate, calibrate, score; not the training
    # validation): the image and 4 copies shifted by this fraction of the side, averaged
    tta_shift: float = Field(ge=0, lt=0.5)

    @field_validator("regions")
    @classmethod
    def _known_regions(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [r for r in v if r not in REGIONS]
        if bad or not v:
            raise ValueError(f"regions must be a non-empty list of {', '.join(REGIONS)}; got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"regions listed twice: {v}")
        return v


class EvaluateConfig(Strict):
    interval: float = Field(gt=0, lt=1)  # central interval of the predicted distribution
    age_bands_years: tuple[float, ...]  # MAE by band [a, b)


class CalibrateConfig(Strict):
    """Calibration fitted on the validation split (boneage.calibration)."""

    levels: tuple[float, ...]  # nominal central interval levels
    folds: int = Field(ge=2)  # cross-validation folds within the validation split
    seed: int
    # low_confidence: calibrated SD above its this-quantile on validation
    low_confidence_quantile: float = Field(gt=0, lt=1)
    # the linear bias correction is considered only on at least this many val images
    bias_min_n: int = Field(ge=10)

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 < q < 1 for q in v):
            raise ValueError(f"levels must lie strictly between 0 and 1, got {v}")
        return v


class LocalizationConfig(Strict):
    # folder of manual RSNA ROI annotations (boneage.roi_eval); only measured against
    annotations: str


class AblationConfig(Strict):
    # region sets trained and evaluated with the aggregator's budget (params aggregator)
    configs: tuple[tuple[str, ...], ...]  # fmt: skip
    # region sets trained once more with fusion per_region (one backbone per region,
    # features concatenated), same budget otherwise: the measured case for that mode
    per_region: tuple[tuple[str, ...], ...]

    @field_validator("configs", "per_region")
    @classmethod
    def _known(cls, v: tuple[tuple[str, ...], ...], info) -> tuple[tuple[str, ...], ...]:
        for regions in v:
            bad = [r for r in regions if r not in REGIONS]
            if bad or not regions or len(set(regions)) != len(regions):
                raise ValueError(f"ablation.{info.field_name}: bad region set {list(regions)}")
            if info.field_name == "per_region" and len(regions) < 2:
                raise ValueError(f"ablation.per_region: {list(regions)} has one region; "
                                 "per-region fusion needs at least two")  # fmt: skip
        return v


class CarpalConfig(Strict):
    """The carpal-only head (region R1 alone) whose age is reported beside the main one:
    the aggregator's model/training settings with this resolution and epoch count."""

    img_size: int = Field(ge=32)
    epochs: int = Field(ge=1)


class ScoreConfig(Strict):
    """Scoring new cohorts (boneage score)."""

    shard_size: int = Field(ge=1)  # images per resumable shard
    low_confidence_sd_months: float = Field(gt=0)  # flag when the predicted SD exceeds it
    sds_flag: float = Field(gt=0)  # flag when |SDS| exceeds it
    overlays: bool
    report_thumbnails: int = Field(ge=0)  # at most this many overlay thumbnails in report.html
    qc: bool  # image QC before scoring (ingest.qc's model and size limits)


class QCTrainConfig(Strict):
    max_images: int | None = Field(ge=1)  # training-split images used (CPU budget)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=8)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    negative_frac: float = Field(ge=0, lt=1)  # share of each batch: synthetic non-hands
    seed: int
    threads: int = Field(ge=0)  # torch CPU threads, 0 = library default


class QCConfig(Strict):
    """The QC network (boneage train-qc): a small CNN at low resolution with three heads,
    trained without annotations: rotation (0/90/180/270) and inversion of the ingest's
    training images (self-supervised), and hand vs synthetic non-hand images; plus a
    feature-space (Mahalanobis) distance to the training images. Thresholds are set on
    the validation split so that each reject signal rejects at most
    `target_false_reject` of the validation radiographs."""

    img_size: int = Field(ge=32, le=256)
    channels: tuple[int, ...]
    train: QCTrainConfig
    target_false_reject: float = Field(gt=0, lt=0.5)
    # correct orientation / inversion only when the predicted probability reaches this
    min_correct_prob: float = Field(ge=0.25, le=1)


class RegistryConfig(Strict):
    """Model registry and the promotion gate (boneage register / promote)."""

    model_name: str = Field(pattern="^[A-Za-z0-9_.-]+$")
    margin_months: float = Field(ge=0)  # challenger must beat champion MAE by this much
    # the fixed evaluation set both models are scored on: the labelled rows of this
    # cohort whose project split (ingest.split, by id hash) is `eval_split`
    eval_cohort: str
    eval_labels: str
    eval_split: str = Field(pattern="^(train|val|test|all)$")


class OrchestrationConfig(Strict):
    """Prefect deployments (flows/deployments.py)."""

    retrain_cron: str  # every Monday 03:00
    timezone: str
    retrain_workdir: str
    retrain_cohort: str | None  # None = the synthetic demo cohort
    retrain_labels: str | None


class Params(Strict):
    """All of params.yaml. Sections are optional; missing ones take their defaults."""

    data: DataConfig
    demo: DemoConfig
    ingest: IngestConfig
    validate_: ValidateConfig = Field(alias="validate")
    localizer: LocalizerConfig
    attend: AttendConfig
    aggregator: AggregatorConfig
    evaluate: EvaluateConfig
    calibrate: CalibrateConfig
    localization: LocalizationConfig
    ablation: AblationConfig
    carpal: CarpalConfig
    score: ScoreConfig
    qc: QCConfig
    registry: RegistryConfig
    orchestration: OrchestrationConfig

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- defaults
# params.yaml at the repository root is the ONLY source of default values: the classes
# above declare types and bounds, no defaults; at import every field gets its default from
# params.yaml (a section's field from that section; a class used by several sections,
# e.g. TrainConfig in localizer.train and aggregator.train, takes its own field defaults
# from the first of them in params.yaml). A key params.yaml lacks is an import error.
DEFAULTS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"


def missing_keys(raw: Any, cls: type[Strict] = None, where: str = "") -> list[str]:
    """The dotted keys of the schema that `raw` (a params mapping) does not state."""
    cls = cls or Params
    out: list[str] = []
    for name, field in cls.model_fields.items():
        key = field.alias or name
        dotted = f"{where}.{key}" if where else key
        if not isinstance(raw, dict) or key not in raw:
            out.append(dotted)
        elif _is_section(field.annotation):
            out += missing_keys(raw[key], field.annotation, dotted)
    return out


def _set_defaults(cls: type[Strict], data: Any, where: str, done: set[type]) -> None:
    if not where and (gaps := missing_keys(data)):
        raise ConfigError(f"{DEFAULTS_FILE}: {', '.join(gaps)} is missing; "
                          "params.yaml holds the default of every parameter")  # fmt: skip
    first = cls not in done
    done.add(cls)
    for name, field in cls.model_fields.items():
        if _is_section(field.annotation):
            key = field.alias or name
            _set_defaults(field.annotation, data[key], f"{where}.{key}" if where else key, done)
    value = cls.model_validate(data)  # validated: bounds, patterns, lists → tuples
    for name, field in cls.model_fields.items():
        if first or _is_section(field.annotation):
            field.default = getattr(value, name)
    cls.model_rebuild(force=True)


def defaults() -> Params:
    """The params params.yaml gives (every default)."""
    return Params()


def _load_defaults() -> dict[str, Any]:
    try:
        raw = yaml.safe_load(DEFAULTS_FILE.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{DEFAULTS_FILE}: cannot read the default params ({exc})") from exc
    _set_defaults(Params, raw, "", set())
    return raw


_DEFAULTS_RAW = _load_defaults()


# Keys added after bundles were first sealed, with the value that reproduces how a model
# made before them was made (the feature off). A bundle whose params lack one of these
# loads with that value; any other missing key is an error (see `load_params`).
ADDED_LATER: dict[str, Any] = {
    "localizer.train.low_res_size": None,
    "localizer.train.low_res_epochs": 0,
    "aggregator.train.low_res_size": None,
    "aggregator.train.low_res_epochs": 0,
    "aggregator.tta_shift": 0.0,
    "ingest.store_geometry": "keep_aspect",
}


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def load_params(
    path: str | Path = DEFAULT_PARAMS,
    overrides: dict[str, Any] | None = None,
    complete: tuple[str, ...] | None = None,
    trace: bool = True,
) -> Params:
    """Load and validate a params file: its keys over the defaults (params.yaml at the
    repository root, DEFAULTS_FILE), then `overrides`. A profile need only state what
    differs from params.yaml; a missing file gives all defaults.

    `complete`: sections the file itself must state in full (a model bundle's params are
    what its networks were trained with: a gap filled from today's params.yaml could
    silently change an old model) — a missing key is a ConfigError naming it.
    `trace=False`: reads of these params are not recorded (BONEAGE_TRACE_PARAMS): they
    are a model's, not the pipeline's params.yaml."""
    path = Path(path)
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    if complete:
        gaps = [k for k in missing_keys(raw) if k.split(".")[0] in complete]
        for k in [g for g in gaps if g in ADDED_LATER]:  # made before the key existed
            _set_dotted(raw, k, ADDED_LATER[k])
        gaps = [g for g in gaps if g not in ADDED_LATER]
        if gaps:
            more = " ..." if len(gaps) > 12 else ""
            raise ConfigError(f"{path}: does not state {len(gaps)} key(s) it must: "
                              f"{', '.join(gaps[:12])}{more}")  # fmt: skip
    raw = _deep_merge(_DEFAULTS_RAW, raw)
    if overrides:
        raw = _deep_merge(raw, overrides)
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid parameters\n{_format_errors(exc)}") from exc
    if _READS is not None and trace:
        params._trace_path = ""  # the root: its sections are traced as 'ingest', ...
    return params


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
