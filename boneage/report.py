"""report.html for a scored cohort: one self-contained page (no network; images and plots
inlined as data: URIs) with the summary, flags, plots, the predictions table and overlay
thumbnails. Written atomically beside predictions.csv."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from boneage.reference import REFERENCE_ID  # noqa: E402

TABLE_COLUMNS = [
    ("id", "id"), ("status", "status"), ("sex_used", "sex"), ("boneage_years", "BA (y)"),
    ("boneage_months", "BA (mo)"), ("sd_months", "SD (mo)"), ("p05_months", "p05"),
    ("p95_months", "p95"), ("carpal_boneage_months", "carpal BA (mo)"),
    ("chronological_age_months", "CA (mo)"), ("ba_minus_ca_months", "BA−CA (mo)"),
    ("sds", "SDS"), ("flags", "flags"), ("error", "error"),
]  # fmt: skip

CSS = """
body{font-family:system-ui,Arial,sans-serif;margin:24px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
td.l,th{text-align:left}tr.error{background:#fde8e8}tr.flag{background:#fff6da}
.kv td{text-align:left}.thumbs{display:flex;flex-wrap:wrap;gap:8px}
.thumbs figure{margin:0;font-size:11px}.note{color:#555;font-size:12px;max-width:900px}
"""


def _png_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _identity_scatter(x, y, lim: float, xlabel: str, ylabel: str) -> str:
    """Scatter with the y = x line from 0 to lim, as a data: URI."""
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.scatter(x, y, s=12)
    ax.plot([0, lim], [0, lim], "k--", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _png_uri(fig)


def _plots(ok: pd.DataFrame) -> list[tuple[str, str]]:
    out = []
    if len(ok):
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.hist(ok["boneage_years"], bins=min(30, max(5, len(ok) // 3)), color="#4a7ab7")
        ax.set_xlabel("predicted bone age (years)")
        ax.set_ylabel("images")
        out.append(("Predicted bone age", _png_uri(fig)))
    ca = ok[ok["chronological_age_months"].notna()]
    if len(ca):
        lim = max(20.0, float(ca["boneage_years"].max()) + 1)
        out.append(("Bone age vs chronological age", _identity_scatter(
            ca["chronological_age_months"] / 12, ca["boneage_years"], lim,
            "chronological age (years)", "predicted bone age (years)")))  # fmt: skip
    ref = ok[ok["reference_boneage_months"].notna()]
    if len(ref):
        out.append(("Predicted vs reference bone age", _identity_scatter(
            ref["reference_boneage_months"], ref["boneage_months"], 240.0,
            "reference bone age (months)", "predicted (months)")))  # fmt: skip
    return out


def _thumb_uri(path: Path, width: int = 320) -> str | None:
    if not path.is_file():
        return None
    img = Image.open(path).convert("RGB")
    img = img.resize((width, max(1, round(img.height * width / img.width))))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)) or v is pd.NA:
        return ""
    if isinstance(v, float):
        return f"{v:.2f}"
    return html.escape(str(v))


def _reliability(ref: pd.DataFrame, cal: dict) -> str:
    """Nominal vs observed coverage of the calibrated intervals on the labelled images."""
    from boneage.calibration import half_width_from_calibrated_sd

    levels = sorted(float(q) for q in cal["interval"]["scales"])
    err = (ref["boneage_months"] - ref["reference_boneage_months"]).abs().to_numpy()
    obs = [float((err <= half_width_from_calibrated_sd(cal, q, ref["sd_months"])).mean())
           for q in levels]  # fmt: skip
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot(levels, obs, "s-")
    for q, o in zip(levels, obs, strict=True):
        ax.annotate(f"{o:.0%}", (q, o), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlim=(0.4, 1), ylim=(0.4, 1.01), xlabel="nominal coverage of the interval",
           ylabel=f"observed (n={len(ref)} labelled)")  # fmt: skip
    return _png_uri(fig)


def write_report(
    preds: pd.DataFrame, summary: dict, out: Path, max_thumbnails: int = 200,
    calibration: dict | None = None,
) -> Path:  # fmt: skip
    """`calibration`: the bundle's aggregator calibration (None: uncalibrated, warned)."""
    out = Path(out)
    e = html.escape
    ok = preds[preds["status"] == "ok"]
    title = f"Bone age report — {summary['model']} {summary['model_version']}"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<table class='kv'>",
        f"<tr><td>images</td><td id='n-images'>{summary['n']}</td></tr>",
        f"<tr><td>scored</td><td id='n-ok'>{summary['n_ok']}</td></tr>",
        f"<tr><td>errors (QC reject / failed)</td><td>{summary['n_error']}</td></tr>",
        f"<tr><td>calibration</td><td id='calibration'>"
        f"{e(str(summary.get('calibration', 'none')))}</td></tr>",
    ]
    if "mae_vs_reference_months" in summary:
        parts.append(f"<tr><td>MAE vs reference labels</td><td>"
                     f"{summary['mae_vs_reference_months']:.2f} months "
                     f"(n={summary['n_with_reference']})</td></tr>")  # fmt: skip
    for f, n in summary.get("flags", {}).items():
        parts.append(f"<tr><td>flag {e(f)}</td><td>{n}</td></tr>")
    parts.append("</table>")
    if calibration is None:
        parts.append(
            "<p class='note' id='calibration-warning'><b>Warning: this model carries no "
            "calibration.</b> Estimates are not bias-corrected and the SD and p05–p95 interval "
            "are the raw spread of the predicted distribution, which need not cover what it "
            "says (rebuild the bundle with <code>boneage calibrate</code>).</p>")  # fmt: skip
        spread = "SD and p05–p95 (90% interval) come from that distribution"
    else:
        spread = (f"estimates are bias-corrected and SD and p05–p95 (90% interval) calibrated "
                  f"on the validation split (calibration {e(calibration['version'])}, "
                  f"{e(calibration['interval']['method'])} intervals)")  # fmt: skip
    parts.append(
        f"<p class='note'>Bone age is the expectation of the predicted age distribution; {spread}"
        ". SDS = (BA − CA) / SD of bone age "
        f"at that chronological age and sex in the reference {e(REFERENCE_ID)} (Greulich &amp; "
        "Pyle 1959, Brush Foundation); the reference table was entered by hand and must be "
        "checked against the atlas before clinical use. Carpal BA comes from the carpal region "
        "(R1) alone. This software is a research tool, not a medical device.</p>")  # fmt: skip
    plots = _plots(ok)
    labelled = ok[ok["reference_boneage_months"].notna()]
    if calibration is not None and len(labelled):
        rel = _reliability(labelled, calibration)
        plots.append(("Reliability of the calibrated intervals", rel))
    if plots:
        parts.append("<h2>Plots</h2><div class='thumbs'>")
        for name, uri in plots:
            parts.append(f"<figure><img alt='{e(name)}' src='{uri}'><figcaption>{e(name)}"
                         "</figcaption></figure>")  # fmt: skip
        parts.append("</div>")
    parts.append("<h2>Predictions</h2><table id='predictions'><thead><tr>")
    parts += [f"<th>{e(label)}</th>" for _, label in TABLE_COLUMNS]
    parts.append("</tr></thead><tbody id='prediction-rows'>")
    for r in preds.to_dict("records"):
        cls = "error" if r["status"] == "error" else ("flag" if r.get("flags") else "")
        parts.append(f"<tr class='{cls}'>")
        for col, _ in TABLE_COLUMNS:
            c = "l" if col in ("id", "status", "sex_used", "flags", "error") else ""
            parts.append(f"<td class='{c}'>{_cell(r[col])}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table>")
    thumbs = []
    for id_ in ok["id"].head(max_thumbnails):
        uri = _thumb_uri(out / "overlays" / f"{id_}.png")
        if uri:
            thumbs.append(f"<figure><img alt='overlay {e(str(id_))}' src='{uri}'>"
                          f"<figcaption>{e(str(id_))}</figcaption></figure>")  # fmt: skip
    if thumbs:
        parts.append(f"<h2>Overlays (first {len(thumbs)}; hand CAM, hand=green, R1=red, "
                     "R2=cyan)</h2><div class='thumbs'>")  # fmt: skip
        parts += thumbs
        parts.append("</div>")
    parts.append("</body></html>\n")
    path = out / "report.html"
    tmp = out / ".report.html.tmp"
    tmp.write_text("".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path
