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
) -> dict:
    """Evaluate the aggregator in model_dir on the test split; see the module docstring.
    `calibration`: the aggregator's fitted calibration (boneage.calibration); metrics then
    also report the calibrated estimates and intervals ('calibrated') beside the raw ones,
    and plots/reliability.png compares their coverage with the nominal levels."""
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
    raw_levels = None
    for split in ("train", "val", "test"):
        d = data[split]
        tta = 0.0 if split == "train" else params.aggregator.tta_shift
        p = predict(model, d, device, tta_shift=tta)
        frames.append(predictions_frame(d.ids, [split] * len(d), [str(sex_of[i]) for i in d.ids],
                                        d.age.numpy(), p, cfg.interval))  # fmt: skip
        if split == "test" and calibration is not None:
            raw_levels = _raw_intervals(p, calibration)
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
    test = preds[(preds["split"] == "test") & (preds["status"] == "ok")]
    if test.empty:
        raise ValueError("no test-split image could be evaluated (empty test split?)")
    metrics = compute_metrics(test, cfg)
    train_mean = float(data["train"].age.mean()) if len(data["train"]) else math.nan
    metrics["mae_predict_train_mean"] = float((test["true_months"] - train_mean).abs().mean())
    metrics["regions"] = region_name(regions)
    metrics["tta_shift"] = params.aggregator.tta_shift
    metrics["n_test_excluded"] = int(((preds["split"] == "test")
                                      & (preds["status"] == "excluded")).sum())  # fmt: skip
    if calibration is not None:
        preds = add_calibrated(preds, calibration, cfg.interval)
        test = preds[(preds["split"] == "test") & (preds["status"] == "ok")]
        metrics["calibrated"] = calibrated_metrics(test, raw_levels, calibration, cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preds.to_parquet(out_dir / "predictions.parquet", index=False)
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


def write_reliability(cm: dict, plot_dir: Path) -> None:
    """Nominal vs observed coverage of the central intervals, before and after
    calibration (plots/reliability.png and .csv)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(cm["intervals_after"], key=float)
    rows = [{"nominal": float(q), "observed_raw": cm["intervals_before"][q]["all"]["coverage"],
             "observed_calibrated": cm["intervals_after"][q]["all"]["coverage"],
             "width_raw_months": cm["intervals_before"][q]["all"]["mean_width_months"],
             "width_calibrated_months": cm["intervals_after"][q]["all"]["mean_width_months"]}
            for q in levels]  # fmt: skip
    df = pd.DataFrame(rows)
    plot_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(plot_dir / "reliability.csv", index=False)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    ax.plot(df["nominal"], df["observed_raw"], "o-", label="predicted distribution (raw)")
    ax.plot(df["nominal"], df["observed_calibrated"], "s-",
            label=f"calibrated ({cm['version']})")  # fmt: skip
    for r in df.itertuples():
        ax.annotate(f"{r.width_calibrated_months:.0f} mo", (r.nominal, r.observed_calibrated),
                    textcoords="offset points", xytext=(4, -10), fontsize=7)  # fmt: skip
    ax.set(xlabel="nominal coverage of the central interval",
           ylabel="observed coverage (test split)", xlim=(0.4, 1), ylim=(0.4, 1.01),
           title="Reliability of the intervals")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(plot_dir / "reliability.png", dpi=110)
    plt.close(fig)


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


def write_plots(test: pd.DataFrame, metrics: dict, cfg: EvaluateConfig, plot_dir: Path) -> None:
    """PNG plots + CSV plot data (for `dvc plots show`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    t, p = test["true_months"].to_numpy(), test["pred_months"].to_numpy()
    pd.DataFrame({"true_months": t, "pred_months": p}).to_csv(
        plot_dir / "pred_vs_true.csv", index=False)  # fmt: skip
    mean, diff = (t + p) / 2, p - t
    pd.DataFrame({"mean_months": mean, "diff_months": diff}).to_csv(
        plot_dir / "bland_altman.csv", index=False)  # fmt: skip
    bands = metrics["mae_by_age_band"]
    pd.DataFrame({"age_band": list(bands), "mae_months": [b["mae"] for b in bands.values()],
                  "n": [b["n"] for b in bands.values()]}).to_csv(
        plot_dir / "mae_by_age_band.csv", index=False)  # fmt: skip
    counts, edges = np.histogram(diff, bins=30) if len(diff) else (np.zeros(0), np.zeros(1))
    pd.DataFrame({"error_bin_months": np.round((edges[:-1] + edges[1:]) / 2, 1),
                  "images": counts}).to_csv(plot_dir / "error_hist.csv", index=False)  # fmt: skip
    title = f"{metrics['regions']} — test n={metrics['n']}, MAE {metrics['mae']:.2f} mo"

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(t, p, s=8, alpha=0.6)
    lim = [0, max(240.0, float(np.nanmax(np.r_[t, p])) if len(t) else 240.0)]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set(xlabel="true bone age (months)", ylabel="predicted (months)", xlim=lim, ylim=lim,
           title=title)  # fmt: skip
    fig.tight_layout()
    fig.savefig(plot_dir / "pred_vs_true.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(mean, diff, s=8, alpha=0.6)
    bias, sd = float(np.mean(diff)), float(np.std(diff, ddof=1)) if len(diff) > 1 else 0.0
    for y, style in ((bias, "-"), (bias + 1.96 * sd, "--"), (bias - 1.96 * sd, "--")):
        ax.axhline(y, color="k", ls=style, lw=1)
    ax.set(xlabel="mean of predicted and true (months)", ylabel="predicted − true (months)",
           title=f"Bland–Altman: bias {bias:.2f}, limits ±{1.96 * sd:.2f} mo")  # fmt: skip
    fig.tight_layout()
    fig.savefig(plot_dir / "bland_altman.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    vals = [b["mae"] if b["mae"] is not None else 0.0 for b in bands.values()]
    ax.bar(list(bands), vals)
    for i, b in enumerate(bands.values()):
        ax.text(i, vals[i], f"n={b['n']}", ha="center", va="bottom", fontsize=8)
    ax.set(xlabel="true bone age band", ylabel="MAE (months)", title="MAE by age band")
    fig.tight_layout()
    fig.savefig(plot_dir / "mae_by_age_band.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(diff, bins=30)
    ax.set(xlabel="predicted − true (months)", ylabel="images", title="Error histogram")
    fig.tight_layout()
    fig.savefig(plot_dir / "error_hist.png", dpi=110)
    plt.close(fig)
