"""Evaluation of an aggregator on the test split: metrics, predictions, plots.

Writes to OUT (default data/reports/evaluate):
- `metrics.json`: MAE, RMSE, median AE, mean error (bias, predicted − true), MAE by sex and
  by age band, coverage of the central `interval` (params) of the predicted distribution,
  mean predicted SD, n, and the train-mean predictor's MAE on the same images;
- `predictions.parquet`: one row per labelled image of every split (split column), with
  prediction, SD, interval bounds and error; images that lacked a region have
  status=excluded and the reason. Test-time augmentation (aggregator.tta_shift) applies
  to the val and test rows, which every reported figure uses; the training split's rows
  are single-view predictions (with TTA they were most of evaluate's time);
- `plots/*.png`: predicted vs true, Bland–Altman, MAE by age band, error histogram;
- `plots/*.csv`: the same data for `dvc plots show` (declared in dvc.yaml).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from boneage.aggregator import load_region_data, region_name
from boneage.config import EvaluateConfig, Params
from boneage.evaluate_plots import write_plots, write_reliability
from boneage.fingerprint import file_hash
from boneage.ldl import distribution_quantiles, distribution_sd, expectation
from boneage.localizer import StagePaths, read_manifest
from boneage.precision import resolve_device
from boneage.tracking import Tracker
from boneage.training import load_model, predict

PREDICTION_COLUMNS = [
    "id", "split", "sex", "true_months", "pred_months", "sd_months", "lo_months",
    "hi_months", "error_months", "abs_error_months", "status", "message",
]  # fmt: skip


def band_labels(edges_years: tuple[float, ...]) -> list[str]:
    return [f"{a:g}-{b:g}y" for a, b in zip(edges_years[:-1], edges_years[1:], strict=True)]


def compute_metrics(df: pd.DataFrame, cfg: EvaluateConfig) -> dict:
    """Metrics of rows with true_months, pred_months, lo_months, hi_months, sex.

    Age bands are [a, b) in years of the TRUE bone age; the last band also takes b.
    """
    err = df["pred_months"] - df["true_months"]
    ae = err.abs()
    out: dict = {
        "n": int(len(df)),
        "mae": float(ae.mean()) if len(df) else math.nan,
        "rmse": float(np.sqrt((err**2).mean())) if len(df) else math.nan,
        "median_ae": float(ae.median()) if len(df) else math.nan,
        "bias": float(err.mean()) if len(df) else math.nan,
        "interval": cfg.interval,
        "coverage": float(((df["true_months"] >= df["lo_months"])
                           & (df["true_months"] <= df["hi_months"])).mean())
        if len(df) else math.nan,
        "mean_sd_months": float(df["sd_months"].mean()) if "sd_months" in df and len(df)
        else math.nan,
    }  # fmt: skip
    out["mae_by_sex"] = {
        str(s): {"n": int(len(g)), "mae": float((g["pred_months"] - g["true_months"]).abs().mean())}
        for s, g in df.groupby("sex", sort=True)
    }
    edges = [e * 12 for e in cfg.age_bands_years]
    bands = {}
    for label, lo, hi in zip(band_labels(cfg.age_bands_years), edges[:-1], edges[1:], strict=True):
        last = hi == edges[-1]
        sel = (df["true_months"] >= lo) & ((df["true_months"] <= hi) if last
                                           else (df["true_months"] < hi))  # fmt: skip
        g = df[sel]
        bands[label] = {
            "n": int(len(g)),
            "mae": float((g["pred_months"] - g["true_months"]).abs().mean()) if len(g) else None,
        }
    out["mae_by_age_band"] = bands
    return out


def predictions_frame(
    ids: list[str], split: list[str], sex: list[str], true: np.ndarray, p: torch.Tensor,
    interval: float,
) -> pd.DataFrame:  # fmt: skip
    lo_q, hi_q = (1 - interval) / 2, 1 - (1 - interval) / 2
    q = distribution_quantiles(p, [lo_q, hi_q]).numpy() if len(ids) else np.zeros((0, 2))
    pred = expectation(p).numpy() if len(ids) else np.zeros(0)
    sd = distribution_sd(p).numpy() if len(ids) else np.zeros(0)
    df = pd.DataFrame({
        "id": ids, "split": split, "sex": sex, "true_months": true, "pred_months": pred,
        "sd_months": sd, "lo_months": q[:, 0], "hi_months": q[:, 1],
    })  # fmt: skip
    df["error_months"] = df["pred_months"] - df["true_months"]
    df["abs_error_months"] = df["error_months"].abs()
    df["status"] = "ok"
    df["message"] = None
    return df


def evaluate(
    params: Params,
    paths: StagePaths,
    model_dir: Path,
    out_dir: Path,
    tracker: Tracker | None = None,
    calibration: dict | None = None,
    reuse: Path | None = None,
) -> dict:
    """Evaluate the aggregator in model_dir on the test split; see the module docstring.
    `calibration`: the aggregator's fitted calibration (boneage.calibration); metrics then
    also report the calibrated estimates and intervals ('calibrated') beside the raw ones,
    and plots/reliability.png compares their coverage with the nominal levels.
    `reuse`: an earlier evaluate's OUT for the same model weights, test-time augmentation
    and test images: its predictions are taken instead of predicted again (checked, else
    ValueError) — what the full-set profile does to add the calibration."""
    cfg = params.evaluate
    if reuse is not None:
        preds, test_p, meta = _reused(Path(reuse), params, paths, model_dir)
    else:
        preds, test_p, meta = _predict_splits(params, paths, model_dir)
    test = preds[(preds["split"] == "test") & (preds["status"] == "ok")]
    if test.empty:
        raise ValueError("no test-split image could be evaluated (empty test split?)")
    metrics = compute_metrics(test, cfg)
    train = preds[(preds["split"] == "train") & (preds["status"] == "ok")]
    train_mean = float(train["true_months"].mean()) if len(train) else math.nan
    metrics["mae_predict_train_mean"] = float((test["true_months"] - train_mean).abs().mean())
    metrics["regions"] = region_name(tuple(meta["regions"]))
    metrics["tta_shift"] = params.aggregator.tta_shift
    metrics["n_test_excluded"] = int(((preds["split"] == "test")
                                      & (preds["status"] == "excluded")).sum())  # fmt: skip
    metrics["model_weights_sha256"] = _weights_sha256(model_dir)
    if reuse is not None:
        metrics["predictions_from"] = str(reuse)
    if calibration is not None:
        raw_levels = _raw_intervals(test_p, calibration)
        preds = add_calibrated(preds, calibration, cfg.interval)
        test = preds[(preds["split"] == "test") & (preds["status"] == "ok")]
        metrics["calibrated"] = calibrated_metrics(test, raw_levels, calibration, cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preds.to_parquet(out_dir / "predictions.parquet", index=False)
    np.savez_compressed(out_dir / DISTRIBUTIONS, ids=test["id"].to_numpy(str),
                        p=test_p.numpy().astype(np.float32))  # fmt: skip
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_plots(test, metrics, cfg, out_dir / "plots")
    if calibration is not None:
        write_reliability(metrics["calibrated"], out_dir / "plots")
    tracker = tracker or Tracker(enabled=False)
    with tracker.run("boneage-aggregator", f"evaluate-{metrics['regions']}",
                     {"regions": metrics["regions"], "kind": "evaluate",
                      "model_dir": str(model_dir),
                      "train_run_id": str(meta.get("mlflow_run_id"))}):  # fmt: skip
        tracker.log_metrics(_flat_numbers(metrics, "test_"))
        tracker.log_artifact(out_dir / "metrics.json")
        tracker.log_artifact(out_dir / "predictions.parquet")
        tracker.log_artifact(out_dir / "plots", "plots")
    return metrics


DISTRIBUTIONS = "test_distributions.npz"  # the test rows' predicted age distributions


def _weights_sha256(model_dir: Path) -> str:
    return file_hash(Path(model_dir) / "model.pt")


def _predict_splits(
    params: Params, paths: StagePaths, model_dir: Path
) -> tuple[pd.DataFrame, torch.Tensor, dict]:
    """Predict every split: (predictions frame, the test rows' distributions, the model's
    config)."""
    cfg = params.evaluate
    device = resolve_device(params.aggregator.train.device)
    model, meta = load_model(model_dir, device)
    if meta.get("kind") != "aggregator":
        raise ValueError(f"{model_dir} holds a {meta.get('kind')!r} model, not an aggregator")
    regions = tuple(meta["regions"])
    manifest = read_manifest(paths.manifest)
    data, excluded = load_region_data(paths, manifest, regions, int(meta["img_size"]))
    sex_of = manifest.set_index("id")["sex"]
    frames = []
    test_p = torch.zeros(0, 1)
    for split in ("train", "val", "test"):
        d = data[split]
        tta = 0.0 if split == "train" else params.aggregator.tta_shift
        p = predict(model, d, device, tta_shift=tta)
        frames.append(predictions_frame(d.ids, [split] * len(d), [str(sex_of[i]) for i in d.ids],
                                        d.age.numpy(), p, cfg.interval))  # fmt: skip
        if split == "test":
            test_p = p.float().cpu()
    if len(excluded):
        ex = excluded.assign(
            sex=[str(sex_of[i]) for i in excluded["id"]],
            true_months=manifest.set_index("id").loc[excluded["id"], "boneage_months"].to_numpy(),
            status="excluded",
        ).rename(columns={"reason": "message"})
        frames.append(ex)
    preds = pd.concat([f for f in frames if len(f)], ignore_index=True).reindex(
        columns=PREDICTION_COLUMNS
    )
    return preds, test_p, meta


def _reused(
    src: Path, params: Params, paths: StagePaths, model_dir: Path
) -> tuple[pd.DataFrame, torch.Tensor, dict]:
    """An earlier evaluate's predictions, checked to be this model's (weights), with this
    test-time augmentation and interval, on this manifest's test images."""
    meta = json.loads((Path(model_dir) / "config.json").read_text())
    if meta.get("kind") != "aggregator":
        raise ValueError(f"{model_dir} holds a {meta.get('kind')!r} model, not an aggregator")
    for name in ("metrics.json", "predictions.parquet", DISTRIBUTIONS):
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src}: no {name} to reuse (evaluate it without --reuse)")
    m = json.loads((src / "metrics.json").read_text())
    why = []
    if m.get("model_weights_sha256") != _weights_sha256(model_dir):
        why.append(f"its model weights are not {model_dir / 'model.pt'}")
    if m.get("tta_shift") != params.aggregator.tta_shift:
        why.append(f"tta_shift {m.get('tta_shift')} != {params.aggregator.tta_shift}")
    if m.get("interval") != params.evaluate.interval:
        why.append(f"interval {m.get('interval')} != {params.evaluate.interval}")
    preds = pd.read_parquet(src / "predictions.parquet").reindex(columns=PREDICTION_COLUMNS)
    manifest = read_manifest(paths.manifest)
    if set(preds["id"]) != set(manifest["id"]):
        why.append(f"its images are not those of {paths.manifest}")
    dist = np.load(src / DISTRIBUTIONS)
    test_ids = preds.loc[(preds["split"] == "test") & (preds["status"] == "ok"), "id"]
    if list(dist["ids"]) != test_ids.astype(str).tolist():
        why.append(f"its {DISTRIBUTIONS} rows are not its test predictions")
    if why:
        raise ValueError(f"cannot reuse {src}: " + "; ".join(why))
    return preds, torch.from_numpy(dist["p"]), meta


def _raw_intervals(p: torch.Tensor, cal: dict) -> dict[str, np.ndarray]:
    """The uncalibrated central intervals of the predicted distributions at the
    calibration's levels: {'lo_q': ..., 'hi_q': ...}."""
    out = {}
    for q in cal["interval"]["scales"]:
        lq = (1 - float(q)) / 2
        b = distribution_quantiles(p, [lq, 1 - lq]).numpy() if len(p) else np.zeros((0, 2))
        out[f"lo_{q}"], out[f"hi_{q}"] = b[:, 0], b[:, 1]
    return out


def add_calibrated(preds: pd.DataFrame, cal: dict, level: float) -> pd.DataFrame:
    """Calibrated columns for the rows with a prediction: estimate, SD, the central
    interval at `level` (when fitted), low_confidence, the calibration version."""
    from boneage.calibration import apply

    ok = preds["status"] == "ok"
    out = apply(cal, preds.loc[ok, "pred_months"].to_numpy(), preds.loc[ok, "sd_months"].to_numpy())
    preds = preds.copy()
    preds.loc[ok, "cal_pred_months"] = out["estimate"]
    preds.loc[ok, "cal_sd_months"] = out["sd"]
    key = next((q for q in cal["interval"]["scales"] if abs(float(q) - level) < 1e-9), None)
    if key is not None:
        preds.loc[ok, "cal_lo_months"] = out[f"lo_{key}"]
        preds.loc[ok, "cal_hi_months"] = out[f"hi_{key}"]
    preds.loc[ok, "low_confidence"] = out["low_confidence"]
    preds["calibration"] = cal["version"]
    return preds


def calibrated_metrics(test: pd.DataFrame, raw: dict, cal: dict, cfg: EvaluateConfig) -> dict:
    """Test-split figures before and after calibration: MAE, bias, coverage and mean width
    of each nominal central interval (overall, by sex, by age band), and the MAE of images
    flagged low_confidence vs the others."""
    from boneage.calibration import apply

    t = test["true_months"].to_numpy(float)
    out_cal = apply(cal, test["pred_months"].to_numpy(), test["sd_months"].to_numpy())
    edges = [e * 12 for e in cfg.age_bands_years]
    groups = {"all": np.ones(len(t), bool)}
    for s in sorted(test["sex"].unique()):
        groups[f"sex {s}"] = (test["sex"] == s).to_numpy()
    for label, lo, hi in zip(band_labels(cfg.age_bands_years), edges[:-1], edges[1:], strict=True):
        groups[label] = (t >= lo) & ((t <= hi) if hi == edges[-1] else (t < hi))

    def cover(lo_, hi_):
        res = {}
        for g, sel in groups.items():
            if sel.any():
                res[g] = {"n": int(sel.sum()),
                          "coverage": float(np.mean((t[sel] >= lo_[sel]) & (t[sel] <= hi_[sel]))),
                          "mean_width_months": float(np.mean(hi_[sel] - lo_[sel]))}  # fmt: skip
        return res

    levels = list(cal["interval"]["scales"])
    before, after = {}, {}
    for q in levels:
        before[q] = cover(raw[f"lo_{q}"], raw[f"hi_{q}"])
        after[q] = cover(out_cal[f"lo_{q}"], out_cal[f"hi_{q}"])
    raw_err = test["pred_months"].to_numpy(float) - t
    cal_err = out_cal["estimate"] - t
    flagged = out_cal["low_confidence"]
    return {
        "version": cal["version"],
        "bias_correction": cal["bias"]["kind"],
        "interval_method": cal["interval"]["method"],
        "mae_before": float(np.mean(np.abs(raw_err))),
        "mae_after": float(np.mean(np.abs(cal_err))),
        "bias_before": float(np.mean(raw_err)),
        "bias_after": float(np.mean(cal_err)),
        "intervals_before": before,
        "intervals_after": after,
        "low_confidence": {
            "sd_threshold_months": cal["low_confidence"]["sd_months"],
            "n_flagged": int(flagged.sum()),
            "mae_flagged": float(np.mean(np.abs(cal_err[flagged]))) if flagged.any() else None,
            "mae_unflagged": float(np.mean(np.abs(cal_err[~flagged]))) if (~flagged).any()
            else None,
        },
    }  # fmt: skip


def _flat_numbers(d: dict, prefix: str) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}".replace(" ", "_").replace("-", "_").replace("+", "_")
        if isinstance(v, dict):
            out.update(_flat_numbers(v, key + "_"))
        elif isinstance(v, int | float) and not isinstance(v, bool) and v is not None:
            if math.isfinite(v):
                out[key] = float(v)
    return out
