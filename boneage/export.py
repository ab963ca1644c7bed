"""Export a bundle for distribution: compact weights and a model card.

`export_bundle` copies a predictor bundle (see `boneage.bundle`) with every network's
weights stored as fp16 or weight-only int8 (`boneage.training.compact_state`; loading
restores fp32, so the exported bundle is scored exactly like any other), then measures
what it ships: the exported bundle and the original are both scored end to end
(`score_frame`: ingest → three CAM stages → aggregator, from the image files) on the test
split of the ingest that trained them, and the card states the exported model's error on
those images — MAE with a bootstrap 95 % interval, absolute-error quantiles, the 90 %
interval's coverage, and the MAE a small cohort should stay under — next to the
full-precision pipeline's evaluation and the region ablation when given.

Outputs in OUT: the bundle (bundle.json gains `weights_precision` and `exported`),
card.json (machine-readable: what tests and users check predictions against), MODEL_CARD.md.
"""

from __future__ import annotations

import json
import platform
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from boneage.bundle import CALIBRATION_FILE, COMPONENTS, load_bundle, seal_bundle
from boneage.cohort import Candidate
from boneage.compaction import compact_format, compact_state
from boneage.config import EvaluateConfig
from boneage.evaluate import compute_metrics
from boneage.fingerprint import file_hash
from boneage.registry import open_model
from boneage.score import score_in_shards

CARD_FORMAT = "boneage-model-card/1"
COHORT_SIZES = (10, 25, 100)  # the MAE bound a cohort of n images should stay under
BOOTSTRAP = 2000


def _size_mb(root: Path) -> float:
    return sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file()) / 1e6


def write_compact_bundle(bundle_dir: Path, out: Path, precision: str) -> dict:
    """Copy the bundle at `bundle_dir` to `out` with compacted weights; returns the new
    bundle.json. An earlier export in `out` is replaced; any other non-empty dir is refused."""
    src = load_bundle(bundle_dir)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / "bundle.json").is_file():
            raise FileExistsError(f"{out}: exists and is not an earlier export; refusing to "
                                  "overwrite it")  # fmt: skip
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shutil.copy2(src.root / "params.yaml", tmp / "params.yaml")
    if (src.root / CALIBRATION_FILE).is_file():  # fitted on the full-precision model
        shutil.copy2(src.root / CALIBRATION_FILE, tmp / CALIBRATION_FILE)
    for c in COMPONENTS:
        (tmp / c).mkdir()
        for f in ("config.json", "metrics.json"):
            if (src.root / c / f).is_file():
                shutil.copy2(src.root / c / f, tmp / c / f)
        state = torch.load(src.root / c / "model.pt", map_location="cpu", weights_only=True)
        if compact_format(state) is not None:
            raise ValueError(
                f"{src.root / c / 'model.pt'}: already exported ({compact_format(state)}); "
                "export from full-precision weights"
            )
        torch.save(compact_state(state, precision), tmp / c / "model.pt")
    if (src.root / "qc").is_dir():  # the QC network is tiny: copied as it is
        shutil.copytree(src.root / "qc", tmp / "qc")
    meta = dict(src.meta)
    meta["weights_precision"] = precision
    meta["weights_sha256"] = {c: file_hash(tmp / c / "model.pt") for c in COMPONENTS}
    meta["exported"] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "from_weights_sha256": src.meta.get("weights_sha256"),
        "from_created": src.meta.get("created"),
    }
    meta = seal_bundle(tmp, meta)
    tmp.rename(out)
    return meta


def check_candidates(manifest: pd.DataFrame, cohort: Path, split: str = "test",
                     max_images: int | None = None) -> list[Candidate]:  # fmt: skip
    """The ingest manifest's `split` rows as scoring candidates, labels included (scoring
    reports them as reference_boneage_months)."""
    rows = manifest[manifest["split"] == split].sort_values("id")
    if max_images is not None:
        rows = rows.head(max_images)
    if rows.empty:
        raise ValueError(f"no {split!r} rows in the ingest manifest to check the export on")
    cands = []
    for r in rows.to_dict("records"):
        sex = r["sex"] if r["sex"] in ("M", "F") else None
        cands.append(Candidate(str(r["id"]), (Path(cohort) / r["source"]).resolve(),
                               str(r["source"]), sex, "csv" if sex else "missing",
                               float(r["boneage_months"]), None, None))  # fmt: skip
    missing = [str(c.path) for c in cands if not c.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: image of the {split} split not found under "
                                f"--cohort {cohort} ({len(missing)} missing)")  # fmt: skip
    return cands


def _scored(pred: pd.DataFrame) -> pd.DataFrame:
    """Scoring output under the column names compute_metrics expects."""
    return pred.rename(columns={"boneage_months": "pred_months", "p05_months": "lo_months",
                                "p95_months": "hi_months", "sex_used": "sex",
                                "reference_boneage_months": "true_months"})  # fmt: skip


def error_statement(abs_err: np.ndarray, seed: int = 0) -> dict:
    """Bootstrap statements about the absolute errors of one model on one test set."""
    rng = np.random.default_rng(seed)
    n = len(abs_err)
    means = abs_err[rng.integers(0, n, size=(BOOTSTRAP, n))].mean(axis=1)
    cohort = {}
    for m in COHORT_SIZES:
        draws = abs_err[rng.integers(0, n, size=(BOOTSTRAP, m))].mean(axis=1)
        cohort[str(m)] = float(np.quantile(draws, 0.95))
    return {
        "mae_ci95": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))],
        "abs_error_quantiles": {
            q: float(np.quantile(abs_err, float(q) / 100)) for q in ("50", "90", "95")
        },
        "cohort_mae_upper95": cohort,
        "bootstrap": {"resamples": BOOTSTRAP, "seed": seed},
    }


def measure_export(bundle_dir: Path, exported: Path, cands: list[Candidate]) -> dict:
    """Score `cands` with both bundles; the exported model's metrics + the precision loss."""
    full = _scored(score_in_shards(open_model(bundle_dir), cands))
    comp = _scored(score_in_shards(open_model(exported), cands))
    ok = comp[(comp["status"] == "ok") & comp["pred_months"].notna()]
    if ok.empty:
        raise ValueError("the exported bundle scored none of the check images")
    metrics = compute_metrics(ok, EvaluateConfig())
    metrics.update(error_statement((ok["pred_months"] - ok["true_months"]).abs().to_numpy()))
    metrics["n_input"] = len(cands)
    metrics["n_not_scored"] = len(cands) - len(ok)
    both = full.merge(comp, on="id", suffixes=("_full", "_export"))
    both = both[both["pred_months_full"].notna() & both["pred_months_export"].notna()]
    delta = (both["pred_months_export"] - both["pred_months_full"]).abs()
    full_ok = full[full["pred_months"].notna()]
    precision = {
        "n": int(len(both)),
        "max_abs_delta_months": float(delta.max()) if len(both) else None,
        "mean_abs_delta_months": float(delta.mean()) if len(both) else None,
        "median_abs_delta_months": float(delta.median()) if len(both) else None,
        "p90_abs_delta_months": float(delta.quantile(0.9)) if len(both) else None,
        "mae_full_precision": float((full_ok["pred_months"] - full_ok["true_months"]).abs().mean()),
        "mae_exported": metrics["mae"],
        "status_changed": int((both["status_full"] != both["status_export"]).sum()),
    }
    return {"metrics": metrics, "precision_check": precision}


def export_bundle(
    bundle_dir: Path,
    out: Path,
    precision: str = "int8",
    ingest: Path | None = None,
    cohort: Path | None = None,
    evaluation: Path | None = None,
    ablation: Path | None = None,
    data_card: Path | None = None,
    command: str | None = None,
    title: str | None = None,
    status: str | None = None,
    check_max: int | None = None,
    use_path: str | None = None,
    timings: Path | None = None,
    machine: str | None = None,
) -> dict:
    """Write the compact bundle + card.json + MODEL_CARD.md to `out`; returns the card.
    `timings`: a profiles/run.py timings.tsv (step, wall_s, cpu_s) quoted in the card with
    `machine`, what the run ran on."""
    if (ingest is None) != (cohort is None):
        raise ValueError("give --ingest and --cohort together (the check images and labels)")
    for p, what in ((evaluation, "--evaluation"), (ablation, "--ablation"),
                    (data_card, "--data-card"), (ingest, "--ingest"),
                    (timings, "--timings")):  # fmt: skip
        if p is not None and not Path(p).exists():
            raise FileNotFoundError(f"{p}: {what} not found")
    out = Path(out)
    meta = write_compact_bundle(bundle_dir, out, precision)
    card: dict = {
        "format": CARD_FORMAT,
        "title": title or f"boneage model '{meta.get('name', 'boneage')}'",
        "status": status,
        "created": meta["exported"]["created"],
        "regions": meta["regions"],
        "train_age_range_months": meta.get("train_age_range_months"),
        "weights_precision": precision,
        "weights_mb": round(
            sum((out / c / "model.pt").stat().st_size for c in COMPONENTS) / 1e6, 2
        ),
        "source_weights_mb": round(
            sum((Path(bundle_dir) / c / "model.pt").stat().st_size for c in COMPONENTS) / 1e6, 2
        ),
        "bundle_mb": round(_size_mb(out), 2),
        "command": command,
        "exported_on": f"{platform.system()} {platform.machine()}, {_device()}",
        "components": {c: _component(out / c) for c in COMPONENTS},
    }
    if ingest is not None:
        manifest = pd.read_parquet(Path(ingest) / "manifest.parquet")
        cands = check_candidates(manifest, cohort, max_images=check_max)
        card.update(measure_export(bundle_dir, out, cands))
        card["split"] = _split_counts(manifest)
    if evaluation is not None:
        card["evaluation_full_precision"] = json.loads(
            (Path(evaluation) / "metrics.json").read_text()
        )
    if ablation is not None:
        card["ablation"] = json.loads(Path(ablation).read_text())
    if timings is not None:
        card["timings"] = read_timings(Path(timings), machine)
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    from boneage.modelcard import render_card

    data_md = Path(data_card).read_text() if data_card is not None else None
    (out / "MODEL_CARD.md").write_text(render_card(card, out, data_md, use_path))
    seal_bundle(out, json.loads((out / "bundle.json").read_text()))  # the card is in it too
    return card


def read_timings(path: Path, machine: str | None) -> dict:
    """timings.tsv (step, wall_s, cpu_s[, attempts]; cpu_s may be empty) → {'machine',
    'steps'}."""
    df = pd.read_csv(path, sep="\t")
    if list(df.columns[:2]) != ["step", "wall_s"]:
        raise ValueError(f"{path}: not a timings.tsv (columns {list(df.columns)})")
    steps = [{"step": str(r["step"]), "wall_s": float(r["wall_s"]),
              "cpu_s": None if pd.isna(r.get("cpu_s")) else float(r["cpu_s"]),
              "attempts": 1 if pd.isna(r.get("attempts", 1)) else int(r.get("attempts", 1))}
             for r in df.to_dict("records")]  # fmt: skip
    return {"machine": machine or "not stated", "steps": steps}


def _device() -> str:
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _component(d: Path) -> dict:
    cfg = json.loads((d / "config.json").read_text())
    out = {"backbone": cfg["model"]["backbone"], "pretrained": cfg["model"]["pretrained"],
           "img_size": cfg.get("img_size"), "kind": cfg.get("kind"),
           "versions": cfg.get("versions"), "train": cfg.get("train")}  # fmt: skip
    if (d / "metrics.json").is_file():
        out["metrics"] = json.loads((d / "metrics.json").read_text())
    return out


def _split_counts(man: pd.DataFrame) -> dict:
    out = {}
    order = {"train": 0, "val": 1, "test": 2}
    for split in sorted(man["split"].astype(str).unique(), key=lambda s: (order.get(s, 3), s)):
        g = man[man["split"] == split]
        out[split] = {
            "n": int(len(g)),
            "female": int((g["sex"] == "F").sum()),
            "male": int((g["sex"] == "M").sum()),
            "boneage_months_range": [
                float(g["boneage_months"].min()),
                float(g["boneage_months"].max()),
            ],
        }
    return out
