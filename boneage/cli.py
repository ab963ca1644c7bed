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

    cfg = _params(params).ingest
    if workers is not None:
        cfg = cfg.model_copy(update={"workers": workers})
    try:
        result = run_ingest(cohort, labels, out, cfg, progress=progress)
    except CohortError as exc:
        _fail(str(exc))
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
    """Run the Great Expectations suite; exit 1 naming the failed expectations."""
    from boneage.validate import validate_files

    cfg = _params(params).validate_
    if not manifest.is_file():
        _fail(f"{manifest}: manifest not found")
    report = validate_files(manifest, rejected, cfg, out)
    n_ok = sum(o.success for o in report.outcomes)
    typer.echo(
        f"validation: {n_ok}/{len(report.outcomes)} expectations passed on {report.n_rows} rows "
        f"({report.n_rejected} rejected, fraction {report.rejected_fraction:.4f}) -> {out}"
    )
    if not report.success:
        for o in report.failed():
            typer.echo(f"  FAILED {o.name}({o.column or ''}): {o.details}", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
