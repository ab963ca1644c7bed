"""`boneage` command line: one thin command per pipeline stage.

A stage command reads its params.yaml section, calls the library, writes outputs.
Exit codes: 0 ok, 1 the step ran and failed (e.g. validation), 2 bad input/config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from boneage.config import DEFAULT_PARAMS, ConfigError, load_params
from boneage.distributed import is_main

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Bone age assessment: attention-guided regions + label distribution learning.",
)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read")]


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _params(path: Path):
    try:
        return load_params(path)
    except ConfigError as exc:
        _fail(str(exc))


@app.command("demo-cohort")
def demo_cohort(
    out: Annotated[Path, typer.Argument(help="output directory (RSNA layout)")],
    n: Annotated[int | None, typer.Option(help="number of images [params demo.n]")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed [params demo.seed]")] = None,
    size: Annotated[int | None, typer.Option(help="long side in px [params demo.size]")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Write a SYNTHETIC demo cohort: images/, labels.csv, boxes.csv (ground-truth regions)."""
    from boneage.demo import make_demo_cohort

    cfg = _params(params).demo
    table = make_demo_cohort(
        out,
        n=n if n is not None else cfg.n,
        seed=seed if seed is not None else cfg.seed,
        size=size if size is not None else cfg.size,
    )
    typer.echo(f"wrote {len(table)} synthetic radiographs to {out}")


@app.command()
def ingest(
    cohort: Annotated[Path, typer.Option(help="cohort directory with the images")],
    out: Annotated[Path, typer.Option(help="output directory")],
    labels: Annotated[Path | None, typer.Option(help="labels CSV (RSNA or generic)")] = None,
    summary: Annotated[
        Path | None, typer.Option(help="also write the summary JSON here (a DVC metric)")
    ] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
    workers: Annotated[int | None, typer.Option(help="processes [params ingest.workers]")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Decode a cohort into an image store + manifest.parquet + rejected.{csv,parquet}."""
    from boneage.cohort import CohortError
    from boneage.ingest import format_summary
    from boneage.ingest import ingest as run_ingest
    from boneage.qc import QCModelError

    cfg = _params(params).ingest
    if workers is not None:
        cfg = cfg.model_copy(update={"workers": workers})
    if out.exists() and not out.is_dir():
        _fail(f"{out}: --out exists and is not a folder")
    try:
        result = run_ingest(cohort, labels, out, cfg, progress=progress)
    except (CohortError, QCModelError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the ingest outputs to {out}: {exc.strerror or exc}")
    typer.echo(format_summary(result))
    if summary is not None:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps(result.summary, indent=2) + "\n")
    if len(result.manifest) == 0:
        _fail("no image could be ingested; see rejected.csv", code=1)


@app.command()
def validate(
    manifest: Annotated[Path, typer.Option(help="manifest.parquet from ingest")],
    out: Annotated[Path, typer.Option(help="output directory")],
    rejected: Annotated[Path | None, typer.Option(help="rejected.parquet/.csv")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Run the Great Expectations suite; exit 1 naming the failed expectations. Sex U
    (unknown) is valid when params ingest.allow_unknown_sex lets ingest write it."""
    from boneage.validate import DEFAULT_ALLOWED_SEX, validate_files

    p = _params(params)
    cfg = p.validate_
    if not manifest.is_file():
        _fail(f"{manifest}: manifest not found")
    if rejected is not None and not rejected.is_file():
        _fail(f"{rejected}: rejected list not found")
    allowed = set(DEFAULT_ALLOWED_SEX) | ({"U"} if p.ingest.allow_unknown_sex else set())
    try:
        report = validate_files(manifest, rejected, cfg, out, allowed_sex=allowed)
    except OSError as exc:
        _fail(f"cannot read the inputs or write {out}: {exc.strerror or exc}")
    n_ok = sum(o.success for o in report.outcomes)
    typer.echo(
        f"validation: {n_ok}/{len(report.outcomes)} expectations passed on {report.n_rows} rows "
        f"({report.n_rejected} rejected, fraction {report.rejected_fraction:.4f}) -> {out}"
    )
    if not report.success:
        for o in report.failed():
            typer.echo(f"  FAILED {o.name}({o.column or ''}): {o.details}", err=True)
        raise typer.Exit(1)


StageOpt = Annotated[str, typer.Option(help="localizer stage: hand | r1 | r2")]
IngestDirOpt = Annotated[Path, typer.Option("--ingest", help="ingest output dir")]
AttendRootOpt = Annotated[Path, typer.Option("--attend-root", help="attend outputs root")]


def _check_stage(stage: str) -> None:
    from boneage.localizer import STAGES

    if stage not in STAGES:
        _fail(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")


def _stage_paths(ingest_dir: Path, attend_root: Path):
    from boneage.localizer import StagePaths

    return StagePaths(ingest=ingest_dir, attend_root=attend_root)


@app.command("train-localizer")
def train_localizer(
    stage: StageOpt,
    ingest_dir: IngestDirOpt = Path("data/interim/ingest"),
    attend_root: AttendRootOpt = Path("data/processed/attend"),
    out: Annotated[
        Path | None, typer.Option(help="model dir [data/models/localizer_STAGE]")
    ] = None,
    metrics_out: Annotated[
        Path | None, typer.Option("--metrics", help="also write metrics JSON here (DVC metric)")
    ] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
    track: Annotated[bool, typer.Option(help="log to MLflow")] = True,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train the hand, r1 or r2 age-distribution localizer (checkpoint + config JSON)."""
    from boneage.localizer import train_localizer as run
    from boneage.tracking import Tracker

    _check_stage(stage)
    p = _params(params)
    out = out or Path("data/models") / f"localizer_{stage}"
    try:
        metrics = run(
            stage, p, _stage_paths(ingest_dir, attend_root), out, Tracker(track), progress
        )
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if metrics_out is not None and is_main():  # under torchrun: rank 0 only
        metrics_out.parent.mkdir(parents=True, exist_ok=True)
        metrics_out.write_text(json.dumps(metrics, indent=2) + "\n")
    typer.echo(
        f"localizer {stage}: val MAE {metrics['val_mae']:.2f} months "
        f"(predicting the training mean: {metrics['val_mae_predict_train_mean']:.2f}; "
        f"{100 * metrics['improvement_over_mean']:.0f}% lower) -> {out}"
    )


@app.command()
def attend(
    stage: StageOpt,
    ingest_dir: IngestDirOpt = Path("data/interim/ingest"),
    attend_root: AttendRootOpt = Path("data/processed/attend"),
    model: Annotated[Path | None, typer.Option(help="[data/models/localizer_STAGE]")] = None,
    reports: Annotated[Path | None, typer.Option(help="[data/reports/attend/STAGE]")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Batch CAM generation: boxes, crops from the original resolution, overlays."""
    from boneage.attend import attend as run

    _check_stage(stage)
    p = _params(params)
    model = model or Path("data/models") / f"localizer_{stage}"
    reports = reports or Path("data/reports/attend") / stage
    paths = _stage_paths(ingest_dir, attend_root)
    try:
        summary = run(stage, p, paths, model, paths.attend_dir(stage), reports, progress)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(
        f"attend {stage}: {summary['n']} images, status {summary['status']}, "
        f"{summary['images_per_second']} img/s -> {paths.attend_dir(stage)}"
    )


@app.command("train-aggregator")
def train_aggregator(
    ingest_dir: IngestDirOpt = Path("data/interim/ingest"),
    attend_root: AttendRootOpt = Path("data/processed/attend"),
    out: Annotated[Path, typer.Option(help="model dir")] = Path("data/models/aggregator"),
    metrics_out: Annotated[
        Path | None, typer.Option("--metrics", help="also write metrics JSON here (DVC metric)")
    ] = None,
    regions: Annotated[
        str | None, typer.Option(help="override params: regions joined by '+', e.g. H+R1+R2")
    ] = None,
    carpal: Annotated[
        bool, typer.Option(help="train the carpal-only head (R1; params carpal) instead")
    ] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
    track: Annotated[bool, typer.Option(help="log to MLflow")] = True,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train the aggregator (stacked regions + sex → age distribution)."""
    from boneage.aggregator import carpal_params
    from boneage.aggregator import train_aggregator as run
    from boneage.tracking import Tracker

    p = _params(params)
    if carpal:
        if regions:
            _fail("--carpal and --regions exclude each other (the carpal head is R1 alone)")
        p = carpal_params(p)
    try:
        metrics = run(p, _stage_paths(ingest_dir, attend_root), out, Tracker(track), progress,
                      regions=tuple(regions.split("+")) if regions else None)  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if metrics_out is not None and is_main():  # under torchrun: rank 0 only
        metrics_out.parent.mkdir(parents=True, exist_ok=True)
        metrics_out.write_text(json.dumps(metrics, indent=2) + "\n")
    typer.echo(
        f"aggregator {metrics['regions']}: val MAE {metrics['val_mae']:.2f} months "
        f"(predicting the training mean: {metrics['val_mae_predict_train_mean']:.2f}); "
        f"{metrics['n_excluded']} images excluded (no crop) -> {out}"
    )


@app.command()
def evaluate(
    ingest_dir: IngestDirOpt = Path("data/interim/ingest"),
    attend_root: AttendRootOpt = Path("data/processed/attend"),
    model: Annotated[Path, typer.Option(help="aggregator dir")] = Path("data/models/aggregator"),
    out: Annotated[Path, typer.Option(help="report dir")] = Path("data/reports/evaluate"),
    calibration: Annotated[
        Path | None,
        typer.Option(help="calibration.json (boneage calibrate): also report calibrated figures"),
    ] = None,
    reuse: Annotated[
        Path | None,
        typer.Option(
            help="an earlier evaluate's report dir for the same model: take its "
            "predictions (checked) instead of predicting again"
        ),
    ] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
    track: Annotated[bool, typer.Option(help="log to MLflow")] = True,
) -> None:
    """Test-split metrics, predictions and plots of an aggregator."""
    from boneage.evaluate import evaluate as run
    from boneage.tracking import Tracker

    p = _params(params)
    try:
        cal = _aggregator_calibration(calibration, model) if calibration else None
        m = run(p, _stage_paths(ingest_dir, attend_root), model, out, Tracker(track), cal,
                reuse)  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(
        f"evaluate {m['regions']} on {m['n']} test images: MAE {m['mae']:.2f}, RMSE "
        f"{m['rmse']:.2f}, bias {m['bias']:+.2f} months, {100 * m['interval']:.0f}% interval "
        f"coverage {100 * m['coverage']:.0f}% (train-mean predictor: "
        f"{m['mae_predict_train_mean']:.2f}) -> {out}"
    )
    if "calibrated" in m:
        c = m["calibrated"]
        cov = c["intervals_after"]
        typer.echo(
            f"calibrated ({c['version']}): MAE {c['mae_after']:.2f}, bias {c['bias_after']:+.2f}; "
            + ", ".join(
                f"{float(q):.0%} interval covers {cov[q]['all']['coverage']:.0%}" for q in cov
            )  # fmt: skip
        )


def _aggregator_calibration(path: Path, model: Path) -> dict:
    """The aggregator's calibration from a calibration.json, checked to be for `model`."""
    from boneage.calibration import load

    doc = load(path)
    cal = doc.get("models", {}).get("aggregator")
    if cal is None:
        raise ValueError(f"{path}: no calibration for the aggregator")
    from boneage.fingerprint import file_hash

    fitted = cal["fitted_on"].get("model_sha256")
    if fitted and fitted != file_hash(Path(model) / "model.pt"):
        raise ValueError(f"{path}: fitted for the aggregator in "
                         f"{cal['fitted_on'].get('model_dir')}, not for {model}")  # fmt: skip
    return cal


@app.command()
def calibrate(
    ingest_dir: IngestDirOpt = Path("data/interim/ingest"),
    attend_root: AttendRootOpt = Path("data/processed/attend"),
    aggregator: Annotated[Path, typer.Option(help="aggregator dir")] = Path(
        "data/models/aggregator"
    ),
    carpal: Annotated[Path | None, typer.Option(help="carpal head dir")] = Path(
        "data/models/carpal"
    ),
    out: Annotated[Path, typer.Option(help="output dir")] = Path("data/models/calibration"),
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Fit bias correction, calibrated intervals and the low-confidence threshold on the
    VALIDATION split, for the aggregator and the carpal head (calibration.json)."""
    from boneage.calibration import calibrate_models

    p = _params(params)
    dirs = {"aggregator": aggregator, **({"carpal": carpal} if carpal else {})}
    try:
        doc = calibrate_models(p, _stage_paths(ingest_dir, attend_root), dirs, out)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    for name, c in doc["models"].items():
        s = c["interval"]["scales"]
        typer.echo(
            f"calibration {name} {c['version']} on {c['fitted_on']['n']} val images: bias "
            f"{c['bias']['kind']}, intervals {c['interval']['method']} "
            f"(90%: x{float(s.get('0.9', float('nan'))):.2f}), low_confidence SD > "
            f"{c['low_confidence']['sd_months']:.1f} months -> {out}"
        )


@app.command()
def ablation(
    ingest_dir: IngestDirOpt = Path("data/interim/ingest"),
    attend_root: AttendRootOpt = Path("data/processed/attend"),
    models_root: Annotated[Path, typer.Option(help="models root")] = Path("data/models"),
    reports: Annotated[Path, typer.Option(help="reports root")] = Path("data/reports"),
    params: ParamsOpt = DEFAULT_PARAMS,
    track: Annotated[bool, typer.Option(help="log to MLflow")] = True,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = False,
    resume: Annotated[
        bool, typer.Option(help="reuse region sets already trained+evaluated with this budget")
    ] = False,
) -> None:
    """Train + evaluate every region set of params ablation.configs; write ablation.md."""
    from boneage.ablation import run_ablation
    from boneage.tracking import Tracker

    p = _params(params)
    try:
        run_ablation(p, _stage_paths(ingest_dir, attend_root), models_root, reports,
                     lambda: Tracker(track), progress, log=typer.echo, resume=resume)  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"ablation table -> {reports / 'ablation.md'}")


@app.command("review-montage")
def review_montage(
    ingest_dir: IngestDirOpt = Path("data/interim/ingest"),
    attend_root: AttendRootOpt = Path("data/processed/attend"),
    out: Annotated[Path, typer.Option(help="montage PNG")] = Path(
        "data/reports/regions_montage.png"
    ),
    n: Annotated[int, typer.Option(help="images, spread over the age range")] = 12,
) -> None:
    """Hand (green), R1 (red), R2 (cyan) boxes drawn on stored images, as one montage."""
    from boneage.review import regions_montage

    try:
        ids = regions_montage(_stage_paths(ingest_dir, attend_root), out, n)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"{len(ids)} images -> {out}")


@app.command("check-regions")
def check_regions(
    truth: Annotated[
        Path | None, typer.Option(help="ground-truth boxes.csv (the synthetic demo cohort)")
    ] = None,
    annotations: Annotated[
        Path | None,
        typer.Option(help="manual RSNA ROI annotations folder (rsna-roi-annotations)"),
    ] = None,
    attend_root: Annotated[Path, typer.Option("--attend-root")] = Path("data/processed/attend"),
    ingest_dir: IngestDirOpt = Path("data/interim/ingest"),
    out: Annotated[
        Path | None,
        typer.Option(help="--truth: result JSON; --annotations: output folder (CSV, JSON, PNG)"),
    ] = None,
    split: Annotated[list[str] | None, typer.Option(help="--truth: splits to score [test]")] = None,
) -> None:
    """Score hand/R1/R2 boxes against ground truth: the synthetic demo's boxes.csv
    (--truth) or manual annotations of real RSNA radiographs (--annotations)."""
    if (truth is None) == (annotations is None):
        _fail("give exactly one of --truth (demo boxes.csv) or --annotations (RSNA folder)")
    if annotations is not None:
        _check_annotations(annotations, attend_root, ingest_dir, out)
        return
    from boneage.localization_eval import acceptance, evaluate_localization

    if not truth.is_file():
        _fail(f"{truth}: ground-truth boxes not found")
    result = evaluate_localization(attend_root, truth, tuple(split or ["test"]))
    result["acceptance"] = {
        k: {"observed": v, "goal": g, "passed": ok} for k, (v, g, ok) in acceptance(result).items()
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    typer.echo(f"localization vs ground truth ({', '.join(result['splits'])} split):")
    for name, r in result["acceptance"].items():
        obs = "n/a" if r["observed"] is None else f"{100 * r['observed']:.0f}%"
        typer.echo(f"  {name:<34} {obs:>5}  (goal >= {100 * r['goal']:.0f}%)")


def _check_annotations(ann: Path, attend_root: Path, ingest_dir: Path, out: Path | None) -> None:
    from boneage.roi_eval import check_against_annotations

    out = out or Path("data/reports/localization_rsna")
    try:
        s = check_against_annotations(attend_root, ann, ingest_dir / "store", out)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if s["skipped"]:
        typer.echo(f"localization vs RSNA annotations: skipped ({s['note']}) -> {out}")
        return
    typer.echo(f"localization vs RSNA annotations ({s['n_images']} annotated images) -> {out}")
    for name, g in s["goals"].items():
        obs = "n/a" if g["observed"] is None else f"{g['observed']:.2f}"
        typer.echo(f"  {name:<28} {obs:>6}  (goal {g['goal']}: {'met' if g['met'] else 'NOT met'})")


@app.command("tune-attend")
def tune_attend(
    stage: StageOpt,
    annotations: Annotated[Path, typer.Option(help="manual RSNA ROI annotations folder")],
    grid: Annotated[Path, typer.Option(help="YAML {setting: [values]} of attend.STAGE fields")],
    model: Annotated[Path, typer.Option(help="the stage's localizer model dir")],
    ingest_dir: IngestDirOpt = Path("data/interim/ingest"),
    attend_root: AttendRootOpt = Path("data/processed/attend"),
    out: Annotated[Path, typer.Option(help="output folder (tune_STAGE.csv)")] = Path(
        "data/reports/tune_attend"
    ),
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Score attend settings of one stage on annotated RSNA images (CAMs computed once;
    each setting's boxes made by attend's own code) → tune_STAGE.csv."""
    import yaml

    from boneage.attend_tune import FIGURES
    from boneage.attend_tune import tune_attend as run

    _check_stage(stage)
    try:
        table = run(stage, _params(params), _stage_paths(ingest_dir, attend_root), model,
                    annotations, yaml.safe_load(grid.read_text()) or {}, out)  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    main = FIGURES[stage][0]
    best = table.sort_values(main, ascending=False).head(5)
    typer.echo(f"{len(table) - 1} settings + the current one -> {out / f'tune_{stage}.csv'}")
    typer.echo(best.to_string(index=False))


@app.command("train-qc")
def train_qc(
    ingest_dir: IngestDirOpt = Path("data/interim/ingest"),
    out: Annotated[Path, typer.Option(help="QC model dir")] = Path("data/models/qc"),
    metrics_out: Annotated[
        Path | None, typer.Option("--metrics", help="also write metrics JSON here (DVC metric)")
    ] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    measure_only: Annotated[
        bool, typer.Option(help="re-measure the QC model already in OUT (no training)")
    ] = False,
) -> None:
    """Train the image QC network (rotation, inversion, hand presence; params qc) on the
    ingest's training split, set its thresholds on the validation split and measure it
    on the test split and a generated corpus of bad images (OUT/metrics.json)."""
    from boneage.qc_measure import measure_qc
    from boneage.qc_train import train_qc as run

    p = _params(params)
    if not (ingest_dir / "manifest.parquet").is_file():
        _fail(f"{ingest_dir}: no manifest.parquet (run boneage ingest first)")
    try:
        if measure_only:
            old = out / "metrics.json"
            keep = json.loads(old.read_text()) if old.is_file() else {}
            m = measure_qc(
                p, ingest_dir, out, {k: keep[k] for k in ("train_seconds",) if k in keep}
            )
        else:
            m = run(p, ingest_dir, out, progress, log=typer.echo)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if metrics_out is not None:
        metrics_out.parent.mkdir(parents=True, exist_ok=True)
        metrics_out.write_text(json.dumps(m, indent=2) + "\n")
    t = m.get("test")
    measured = (f"; test split: false-reject rate {100 * t['false_reject_rate']:.2f}% "
                f"(n={t['n']}), corpus catch rate {100 * t['corpus']['catch_rate']:.2f}% "
                f"(n={t['corpus']['n']})" if t else "")  # fmt: skip
    trained = f", trained in {m['train_seconds']:.0f}s" if "train_seconds" in m else ""
    typer.echo(f"QC model ({m['weights_bytes'] / 1e3:.0f} kB{trained}){measured} -> {out}")


@app.command()
def bundle(
    models_root: Annotated[Path, typer.Option(help="dir holding the trained models")] = Path(
        "data/models"
    ),
    out: Annotated[Path, typer.Option(help="bundle dir to write")] = Path("data/models/bundle"),
    aggregator: Annotated[
        Path | None,
        typer.Option(
            help="aggregator dir to use instead of MODELS_ROOT/aggregator (e.g. an ablation row's)"
        ),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(help="calibration.json fitted for this aggregator and carpal head"),
    ] = None,
    qc: Annotated[
        Path | None,
        typer.Option(help="QC model dir to include [params ingest.qc.model: the shipped one]"),
    ] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Package the three localizers, the aggregator, the carpal head (+ their calibration),
    the image QC model and the params into one bundle directory, sealed with the sha256 of
    every file (what `register` logs and `score --model PATH` loads and verifies)."""
    from boneage.bundle import build_bundle, bundle_model_dirs

    p = _params(params)
    dirs = bundle_model_dirs(models_root)
    if aggregator is not None:
        dirs["aggregator"] = aggregator
    if qc is not None:
        dirs["qc"] = qc
    try:
        b = build_bundle(p, dirs, out, p.registry.model_name, calibration)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"bundle {b.meta['name']} ({'+'.join(b.meta['regions'])}) -> {out}")


@app.command()
def export(
    bundle_dir: Annotated[Path, typer.Option("--bundle", help="bundle dir to export")] = Path(
        "data/models/bundle"
    ),
    out: Annotated[Path, typer.Option(help="export dir (e.g. models/rsna299)")] = Path(
        "data/models/export"
    ),
    weights: Annotated[str, typer.Option(help="weights precision: int8 | fp16 | fp32")] = "int8",
    ingest: Annotated[
        Path | None,
        typer.Option(
            help="the ingest that trained the bundle: "
            "its test split is scored to measure the export"
        ),
    ] = None,
    cohort: Annotated[Path | None, typer.Option(help="the image dir that ingest read")] = None,
    evaluation: Annotated[Path | None, typer.Option(help="`boneage evaluate` output dir")] = None,
    ablation: Annotated[Path | None, typer.Option(help="ablation.json to quote")] = None,
    data_card: Annotated[
        Path | None, typer.Option(help="markdown: the data, its terms, its limitations")
    ] = None,
    command: Annotated[str | None, typer.Option(help="the exact command that trained it")] = None,
    title: Annotated[str | None, typer.Option(help="model card title")] = None,
    status: Annotated[str | None, typer.Option(help="status line for the card")] = None,
    check_max: Annotated[int | None, typer.Option(help="score at most N test images")] = None,
    use_path: Annotated[
        str | None, typer.Option(help="model path the card's usage line shows (default: --out)")
    ] = None,
    timings: Annotated[
        Path | None, typer.Option(help="timings.tsv of the run (profiles/run.py) to quote")
    ] = None,
    machine: Annotated[
        str | None, typer.Option(help="what the run ran on, quoted with --timings")
    ] = None,
) -> None:
    """Compact copy of a bundle for distribution (fp16 or weight-only int8) with a model
    card (MODEL_CARD.md + card.json) stating the exported model's measured error."""
    from boneage.bundle import ScoreError
    from boneage.export import export_bundle

    try:
        card = export_bundle(bundle_dir, out, weights, ingest, cohort, evaluation, ablation,
                             data_card, command, title, status, check_max, use_path,
                             timings, machine)  # fmt: skip
    except (ScoreError, FileNotFoundError, FileExistsError, ValueError) as exc:
        _fail(str(exc))
    m = card.get("metrics")
    measured = (f"; test MAE {m['mae']:.2f} months (95 % CI {m['mae_ci95'][0]:.2f}-"
                f"{m['mae_ci95'][1]:.2f}, n={m['n']})" if m else "")  # fmt: skip
    typer.echo(
        f"exported {card['weights_precision']} bundle ({card['weights_mb']} MB weights, "
        f"{card['source_weights_mb']} MB fp32){measured} -> {out}"
    )


@app.command()
def register(
    bundle_dir: Annotated[Path, typer.Option("--bundle", help="bundle dir")] = Path(
        "data/models/bundle"
    ),
    report: Annotated[Path | None, typer.Option(help="write the registration JSON here")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Log the end-to-end predictor as an MLflow pyfunc and register a new version with
    alias `challenger` (tags: git commit, DVC hashes, params hash)."""
    from boneage.bundle import ScoreError
    from boneage.registry import register_bundle, write_json

    p = _params(params)
    try:
        info = register_bundle(bundle_dir, p)
    except ScoreError as exc:
        _fail(str(exc))
    if report is not None:
        write_json(info, report)
    typer.echo(f"registered {info['model_uri']} (alias {info['alias']}, run {info['run_id']})")


@app.command()
def promote(
    report: Annotated[Path | None, typer.Option(help="write the decision JSON here")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Score challenger and champion on the fixed evaluation set (params registry) and
    move alias `champion` only if the challenger is better by the margin (or first)."""
    from boneage.registry import promote as run
    from boneage.registry import write_json

    p = _params(params)
    try:
        r = run(p)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if report is not None:
        write_json(r, report)
    champ = "none" if r["champion_mae"] is None else f"{r['champion_mae']:.2f}"
    typer.echo(
        f"{r['model_name']} v{r['challenger_version']}: MAE {r['challenger_mae']:.2f} vs champion "
        f"{champ} on {r['eval_set']} -> {'PROMOTED' if r['promoted'] else 'not promoted'} "
        f"({r['reason']})"
    )


@app.command()
def score(
    cohort: Annotated[Path, typer.Option(help="cohort dir (RSNA, generic CSV, DICOM or images)")],
    out: Annotated[Path, typer.Option(help="output dir")],
    model: Annotated[str, typer.Option(help="models:/ URI or a local bundle path")] = (
        "models:/boneage@champion"
    ),
    labels: Annotated[Path | None, typer.Option(help="labels CSV (sex, ages)")] = None,
    shard_size: Annotated[int | None, typer.Option(help="images per shard [params]")] = None,
    trust_modified: Annotated[
        bool,
        typer.Option(
            help="score even with a bundle whose files differ from its bundle.json "
            "(experiments only; recorded in every output)"
        ),
    ] = False,
) -> None:
    """Score a cohort: predictions.csv/.parquet, overlays/, report.html. Resumable: rerun
    the same command after an interruption. OUT must be new, empty, or an earlier run of
    the same cohort and model. Exit 1 only if no image could be scored, 2 when the model,
    the cohort or OUT cannot be used."""
    from boneage.bundle import ScoreError
    from boneage.score_cohort import score_cohort

    if labels is not None and not labels.is_file():
        _fail(f"{labels}: labels CSV not found")
    try:
        s = score_cohort(model, cohort, out, labels, shard_size, log=typer.echo,
                         trust_modified=trust_modified)  # fmt: skip
    except ScoreError as exc:
        _fail(str(exc))
    except OSError as exc:  # e.g. the disk filled up, or OUT turned read-only mid-run
        _fail(f"cannot write the outputs to {out}: {exc.strerror or exc}")
    if s.get("trust_modified"):
        typer.echo(f"warning: scored with a MODIFIED bundle ({len(s['modified_files'])} "
                   "files differ from its bundle.json); every row is flagged model_modified",
                   err=True)  # fmt: skip
    typer.echo(
        f"{s['n_ok']}/{s['n']} images scored ({s['n_error']} errors) with {s['model']} "
        f"{s['model_version']} -> {out / 'predictions.csv'}, {out / 'report.html'}"
    )
    if s["n_ok"] == 0:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
