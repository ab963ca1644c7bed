"""Calibration of a model's estimates, fitted on the VALIDATION split only.

A label-distribution head gives, per image, an estimate (the expectation) and a spread
(the distribution's SD). Neither is calibrated: estimates can be biased, and the spread's
central intervals need not cover what they say. This module fits, on validation
predictions, what a reader can take at its word:

1. **Bias correction** of the estimate, linear in the predicted age
   (``corrected = a + b · predicted``, least squares), kept only when it lowers the MAE in
   K-fold cross-validation *within* the validation split and the split holds at least
   ``bias_min_n`` images (a two-parameter fit on a few dozen images follows their noise:
   on the demo's 36 it lowered cross-validated MAE yet raised the test MAE by 4 months);
   otherwise identity, and the result says why.
2. **Intervals** for nominal levels (0.5, 0.8, 0.9, 0.95) around the corrected estimate,
   by split-conformal quantiles of the residuals, two candidates:
   - ``sd_scaled``: ``± s_q · SD`` with ``s_q`` the conformal quantile of |residual| / SD
     (the interval widens where the model is unsure);
   - ``constant``: ``± c_q`` with ``c_q`` the conformal quantile of |residual|;
   the one with the smaller mean width at equal (cross-validated) coverage is kept.
   Conformal quantile: the ⌈(n+1)q⌉-th smallest score, so coverage ≥ q on exchangeable
   data.
3. **A calibrated SD**: ``k · SD`` with ``k`` the conformal quantile of |residual| / SD at
   68.27 % (± one calibrated SD covers what one SD of a normal would), and the
   ``low_confidence`` threshold on it: its ``low_confidence_quantile`` on validation, so
   that the flagged share is known and (measured on validation, then test) flagged images
   err more.

The fitted result is a small JSON document (``FORMAT``) with a content-derived
``version``; :func:`apply` turns raw (estimate, SD) into calibrated outputs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from boneage.fingerprint import file_hash

FORMAT = "boneage-calibration/1"
LEVELS = (0.5, 0.8, 0.9, 0.95)
ONE_SD = 0.6827
METHODS = ("sd_scaled", "constant")


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ⌈(n+1)·level⌉-th smallest score (the largest when that exceeds n)."""
    s = np.sort(np.asarray(scores, dtype=float))
    if len(s) == 0:
        raise ValueError("no scores to take a conformal quantile of")
    k = min(len(s), math.ceil((len(s) + 1) * level))
    return float(s[k - 1])


def fit_linear(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of the least-squares line y ≈ a + b · pred."""
    if len(pred) < 2 or float(np.ptp(pred)) == 0.0:
        return 0.0, 1.0
    b, a = np.polyfit(pred, y, 1)
    return float(a), float(b)


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    idx = np.random.default_rng(seed).permutation(n)
    return [f for f in np.array_split(idx, min(k, n)) if len(f)]


def _scale(sd: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(sd, dtype=float), 1e-6)


def _half_widths(method: str, scale: float, sd: np.ndarray) -> np.ndarray:
    return scale * _scale(sd) if method == "sd_scaled" else np.full(len(sd), scale)


def _scores(method: str, resid: np.ndarray, sd: np.ndarray) -> np.ndarray:
    r = np.abs(resid)
    return r / _scale(sd) if method == "sd_scaled" else r


def fit_calibration(
    pred: Sequence[float], sd: Sequence[float], y: Sequence[float], *,
    levels: Sequence[float] = LEVELS, folds: int = 5, seed: int = 0,
    low_confidence_quantile: float = 0.9, source: dict | None = None, bias_min_n: int = 100,
) -> dict:  # fmt: skip
    """Fit bias correction, intervals and calibrated SD on validation predictions."""
    pred, sd, y = (np.asarray(v, dtype=float) for v in (pred, sd, y))
    if not (len(pred) == len(sd) == len(y)):
        raise ValueError("pred, sd and y must have the same length")
    ok = np.isfinite(pred) & np.isfinite(sd) & np.isfinite(y)
    pred, sd, y = pred[ok], sd[ok], y[ok]
    if len(pred) < 10:
        raise ValueError(f"calibration needs at least 10 validation images, got {len(pred)}")
    levels = tuple(float(q) for q in levels)
    parts = _folds(len(pred), folds, seed)

    # 1. bias: cross-validated MAE of identity vs the linear correction
    cv_lin = np.empty_like(pred)
    for f in parts:
        tr = np.setdiff1d(np.arange(len(pred)), f)
        a, b = fit_linear(pred[tr], y[tr])
        cv_lin[f] = a + b * pred[f]
    mae_id = float(np.mean(np.abs(pred - y)))
    mae_lin = float(np.mean(np.abs(cv_lin - y)))
    use_linear = mae_lin < mae_id and len(pred) >= bias_min_n
    if len(pred) < bias_min_n:
        why = f"identity: {len(pred)} validation images < bias_min_n {bias_min_n}"
    else:
        why = f"{'linear' if use_linear else 'identity'}: lower cross-validated MAE"
    a, b = fit_linear(pred, y) if use_linear else (0.0, 1.0)
    corrected = a + b * pred

    # 2. intervals: cross-validated coverage and width of each method (bias chosen above,
    #    refitted in each fold so no fold sees its own residuals)
    cv: dict[str, dict] = {}
    for method in METHODS:
        cover = {q: 0.0 for q in levels}
        width = {q: 0.0 for q in levels}
        for f in parts:
            tr = np.setdiff1d(np.arange(len(pred)), f)
            fa, fb = fit_linear(pred[tr], y[tr]) if use_linear else (0.0, 1.0)
            resid_tr = y[tr] - (fa + fb * pred[tr])
            est_f = fa + fb * pred[f]
            for q in levels:
                s = conformal_quantile(_scores(method, resid_tr, sd[tr]), q)
                hw = _half_widths(method, s, sd[f])
                cover[q] += float(np.sum(np.abs(y[f] - est_f) <= hw))
                width[q] += float(np.sum(2 * hw))
        cv[method] = {
            "coverage": {str(q): cover[q] / len(pred) for q in levels},
            "mean_width_months": {str(q): width[q] / len(pred) for q in levels},
        }
    method = min(METHODS, key=lambda m: np.mean(list(cv[m]["mean_width_months"].values())))
    resid = y - corrected
    scales = {str(q): conformal_quantile(_scores(method, resid, sd), q) for q in levels}

    # 3. calibrated SD and the low-confidence threshold on it
    sd_factor = conformal_quantile(np.abs(resid) / _scale(sd), ONE_SD)
    sd_cal = sd_factor * _scale(sd)
    low_sd = float(np.quantile(sd_cal, low_confidence_quantile))
    flagged = sd_cal > low_sd
    body = {
        "format": FORMAT,
        "fitted_on": {"split": "val", "n": int(len(pred)), **(source or {})},
        "bias": {"kind": "linear" if use_linear else "none", "a": a, "b": b,
                 "cv_mae_identity": mae_id, "cv_mae_linear": mae_lin, "folds": len(parts),
                 "min_n": bias_min_n, "why": why},
        "interval": {"method": method, "levels": list(levels), "scales": scales,
                     "cv": cv},
        "sd": {"factor": sd_factor, "covers": ONE_SD},
        "low_confidence": {
            "sd_months": low_sd, "quantile": low_confidence_quantile,
            "val_mae_flagged": float(np.mean(np.abs(resid[flagged]))) if flagged.any()
            else None,
            "val_mae_unflagged": float(np.mean(np.abs(resid[~flagged]))),
        },
    }  # fmt: skip
    body["version"] = version_of(body)
    return body


def version_of(cal: dict) -> str:
    """'cal-' + 10 hex digits of the SHA-256 of the calibration's content (sans version)."""
    content = {k: v for k, v in cal.items() if k != "version"}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return f"cal-{digest[:10]}"


def apply(cal: dict, pred: Sequence[float], sd: Sequence[float]) -> dict[str, np.ndarray]:
    """Calibrated outputs of raw estimates/SDs: 'estimate', 'sd', 'low_confidence' and,
    for every fitted level q, 'lo_q' / 'hi_q' (e.g. 'lo_0.9')."""
    check(cal)
    pred, sd = np.asarray(pred, dtype=float), np.asarray(sd, dtype=float)
    b = cal["bias"]
    est = b["a"] + b["b"] * pred
    out = {"estimate": est, "sd": cal["sd"]["factor"] * _scale(sd)}
    out["low_confidence"] = out["sd"] > cal["low_confidence"]["sd_months"]
    method = cal["interval"]["method"]
    for q, s in cal["interval"]["scales"].items():
        hw = _half_widths(method, float(s), sd)
        out[f"lo_{q}"], out[f"hi_{q}"] = est - hw, est + hw
    return out


def interval(cal: dict, level: float, pred, sd) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the calibrated central interval at a fitted level."""
    out = apply(cal, pred, sd)
    key = _level_key(cal, level)
    return out[f"lo_{key}"], out[f"hi_{key}"]


def half_width_from_calibrated_sd(cal: dict, level: float, sd_cal) -> np.ndarray:
    """Half-width of the calibrated central interval at a fitted level, from the
    CALIBRATED SD that predictions report (what a report can compute without the raw SD)."""
    sd_raw = np.asarray(sd_cal, dtype=float) / cal["sd"]["factor"]
    scale = float(cal["interval"]["scales"][_level_key(cal, level)])
    return _half_widths(cal["interval"]["method"], scale, sd_raw)


def _level_key(cal: dict, level: float) -> str:
    for q in cal["interval"]["scales"]:
        if abs(float(q) - level) < 1e-9:
            return q
    raise ValueError(f"calibration {cal.get('version')} has no {level:g} interval "
                     f"(levels {', '.join(cal['interval']['scales'])})")  # fmt: skip


def check(cal: dict) -> dict:
    if cal.get("format") != FORMAT:
        raise ValueError(f"not a boneage calibration (format {cal.get('format')!r}, "
                         f"expected {FORMAT!r})")  # fmt: skip
    if cal.get("version") != version_of(cal):
        raise ValueError(f"calibration {cal.get('version')!r}: content does not match its "
                         "version (edited by hand?)")  # fmt: skip
    return cal


def load(path: Path) -> dict:
    """A calibration file: {'aggregator': cal, 'carpal': cal} (see `calibrate`)."""
    doc = json.loads(Path(path).read_text())
    for name, cal in doc.get("models", {}).items():
        try:
            check(cal)
        except ValueError as exc:
            raise ValueError(f"{path}: {name}: {exc}") from None
    return doc


def coverage_table(true, lo, hi) -> float:
    t, lo, hi = (np.asarray(v, dtype=float) for v in (true, lo, hi))
    return float(np.mean((t >= lo) & (t <= hi))) if len(t) else math.nan


def calibrate_models(
    params, paths, model_dirs: dict[str, Path], out_dir: Path
) -> dict:  # fmt: skip
    """Fit a calibration for each model (e.g. {'aggregator': dir, 'carpal': dir}) on its
    predictions for the VALIDATION split — only validation images are loaded, so no other
    split can reach the fit — and write OUT/calibration.json (+ metrics.json)."""
    import torch

    from boneage.aggregator import load_region_data
    from boneage.ldl import distribution_sd, expectation
    from boneage.localizer import read_manifest
    from boneage.precision import resolve_device
    from boneage.training import load_model, predict

    cfg = params.calibrate
    manifest = read_manifest(paths.manifest)
    val = manifest[(manifest["split"] == "val") & manifest["boneage_months"].notna()]
    device = resolve_device(params.aggregator.train.device)
    models = {}
    for name, model_dir in model_dirs.items():
        model, meta = load_model(Path(model_dir), device)
        data, _ = load_region_data(paths, val, tuple(meta["regions"]), int(meta["img_size"]))
        d = data["val"]
        with torch.no_grad():
            p = predict(model, d, device, tta_shift=params.aggregator.tta_shift)
        models[name] = fit_calibration(
            expectation(p).numpy(), distribution_sd(p).numpy(), d.age.numpy(),
            levels=cfg.levels, folds=cfg.folds, seed=cfg.seed,
            low_confidence_quantile=cfg.low_confidence_quantile, bias_min_n=cfg.bias_min_n,
            source={"model_dir": str(model_dir), "model_sha256": file_hash(
                Path(model_dir) / "model.pt"), "regions": list(meta["regions"])},
        )  # fmt: skip
    doc = {"format": FORMAT, "models": models}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "calibration.json").write_text(json.dumps(doc, indent=2) + "\n")
    summary = {
        name: {
            "version": c["version"], "n_val": c["fitted_on"]["n"], "bias": c["bias"]["kind"],
            "interval_method": c["interval"]["method"],
            "scales": c["interval"]["scales"], "sd_factor": c["sd"]["factor"],
            "low_confidence_sd_months": c["low_confidence"]["sd_months"],
        }
        for name, c in models.items()
    }  # fmt: skip
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return doc
