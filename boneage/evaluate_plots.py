"""The plots of `boneage evaluate`: predicted vs true, Bland–Altman, MAE by age band, the
error histogram and, with a calibration, the intervals' reliability — each as PNG plus the
CSV `dvc plots show` renders (declared in dvc.yaml)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from boneage.config import EvaluateConfig


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
