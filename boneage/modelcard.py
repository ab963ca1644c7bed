"""MODEL_CARD.md from an export's card.json (see `boneage.export`): what the model is,
what it was trained on and how, what error to expect and where it stops being valid."""

from __future__ import annotations

from pathlib import Path

import yaml

LIMITATIONS = [
    "**Not a medical device.** Bone age estimates are decision support for a reader who "
    "looks at the radiograph; they are not a diagnosis.",
    "**Labels are readers' bone age estimates** (Greulich–Pyle atlas readings for RSNA): "
    "the model learns those readers' estimates, including their disagreement "
    "(inter-reader variation of Greulich–Pyle readings is commonly quoted at 0.5–1 year).",
    "**Population**: the training hospitals' patients only. Performance on other "
    "populations, scanners, post-processing or image sizes is unmeasured.",
    "**Ages outside the training range** (see below) are extrapolations: the age "
    "distribution has support on 0–239 months only, and the tails were rarely seen.",
    "**Sex is an input.** Unknown sex is scored at the midpoint (sex code 0.5) with no SDS "
    "and flag `sex_unknown`; such estimates are less reliable.",
    "**Weakly supervised regions.** The hand, carpal (R1) and metacarpal/phalangeal (R2) "
    "regions come from class activation maps, not annotations; check the overlays when a "
    "result is flagged (`low_confidence`, `*_fallback_prior`).",
]


def _f(x, nd: int = 2) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def _metrics_section(card: dict) -> list[str]:
    m = card.get("metrics")
    if not m:
        return ["No end-to-end check was run for this export (no --ingest/--cohort given).", ""]
    pc = card["precision_check"]
    q = m["abs_error_quantiles"]
    lines = [
        f"Measured by scoring the **{m['n_input']} images of the test split** end to end "
        "with the exported weights (`boneage score` path: image file → hand → R1 → R2 → "
        f"aggregator); {m['n_not_scored']} not scored.",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| MAE (months) | **{_f(m['mae'])}** (95 % bootstrap CI {_f(m['mae_ci95'][0])}–"
        f"{_f(m['mae_ci95'][1])}) |",
        f"| RMSE (months) | {_f(m['rmse'])} |",
        f"| median absolute error (months) | {_f(m['median_ae'])} |",
        f"| 90th / 95th percentile absolute error (months) | {_f(q['90'])} / {_f(q['95'])} |",
        f"| bias, predicted − label (months) | {_f(m['bias'], 2)} |",
        f"| coverage of the predicted 90 % interval (p05–p95) | {m['coverage'] * 100:.1f} % |",
        "",
        "MAE by sex: "
        + ", ".join(f"{s} {_f(v['mae'])} (n={v['n']})" for s, v in m["mae_by_sex"].items())
        + ".",
        "MAE by bone-age band: "
        + ", ".join(f"{b} {_f(v['mae'])} (n={v['n']})" for b, v in m["mae_by_age_band"].items())
        + ".",
        "",
        "### Stated error (what to check predictions against)",
        "",
        f"- Per image: 90 % of test images were within **±{_f(q['90'], 1)} months**, 95 % "
        f"within ±{_f(q['95'], 1)} months.",
        "- Per cohort: the MAE of a random cohort of *n* images like these stays below, with "
        "95 % probability (bootstrap of the test errors): "
        + ", ".join(f"n={n}: **{_f(v, 1)}**" for n, v in m["cohort_mae_upper95"].items())
        + " months.",
        "",
        "### Compact weights",
        "",
        f"Weights stored as **{card['weights_precision']}** ({card['weights_mb']} MB for the "
        f"five networks; {card['source_weights_mb']} MB in fp32). On the same {pc['n']} images "
        f"the full-precision bundle scored MAE {_f(pc['mae_full_precision'], 3)} vs "
        f"{_f(pc['mae_exported'], 3)} exported; per image the estimate moved by "
        f"{_f(pc['mean_abs_delta_months'], 2)} months on average (median "
        f"{_f(pc.get('median_abs_delta_months'), 2)}, 90th percentile "
        f"{_f(pc.get('p90_abs_delta_months'), 2)}, at most "
        f"{_f(pc['max_abs_delta_months'], 2)}); {pc['status_changed']} images changed status.",
        "",
    ]
    return lines


def _evaluation_section(card: dict) -> list[str]:
    lines = []
    ev = card.get("evaluation_full_precision")
    if ev:
        lines += [
            "### Pipeline evaluation (full precision, stored crops)",
            "",
            f"`boneage evaluate` on the test split: MAE {_f(ev['mae'])}, RMSE {_f(ev['rmse'])}, "
            f"bias {_f(ev['bias'])}, {ev['interval'] * 100:.0f} % interval coverage "
            f"{ev['coverage'] * 100:.1f} %, n={ev['n']}; predicting the training mean would "
            f"give MAE {_f(ev.get('mae_predict_train_mean'))}.",
            "",
        ]
    lines += _ablation_lines(card.get("ablation"))
    return lines


def _ablation_lines(ab: dict | None) -> list[str]:
    """The region ablation's rows under the budget they shared (which may be smaller than
    the exported model's own: the budget line says what it was)."""
    if not ab:
        return []
    b = ab.get("budget", {})
    budget = (f"{b['backbone']} at {b['img_size']} px, {b['epochs']} epochs, batch "
              f"{b['batch_size']}, seed {b['seed']}" if {"backbone", "img_size", "epochs",
              "batch_size", "seed"} <= b.keys() else "not recorded")  # fmt: skip
    lines = ["### Region ablation (same budget for every row)", "",
             f"Budget of every row: {budget}; no test-time augmentation unless the "
             "exported model's own figures above say so.", "",
             "| regions | val MAE | test MAE | RMSE | 90 % coverage | paper (Chen et al.) |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in ab["rows"]:
        cov = f"{r['coverage'] * 100:.0f} %"
        lines.append(f"| {r['regions']} | {_f(r.get('val_mae'))} | {_f(r['test_mae'])} | "
                     f"{_f(r['test_rmse'])} | {cov} | {_f(r.get('paper_mae'), 1)} |")  # fmt: skip
    return [*lines, ""]


def _training_section(card: dict, out: Path) -> list[str]:
    params = yaml.safe_load((out / "params.yaml").read_text())
    lines = ["## Training", ""]
    if card.get("command"):
        lines += ["Produced by:", "", "```bash", card["command"], "```", ""]
    lines += [
        "| network | backbone (init) | input px | epochs run / max | val MAE | train images |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, c in card["components"].items():
        m = c.get("metrics", {})
        tr = c.get("train") or {}
        lines.append(f"| {name} | {c['backbone']} ({c['pretrained']}) | {c.get('img_size')} | "
                     f"{m.get('epochs_run', '—')} / {tr.get('epochs', '—')} | "
                     f"{_f(m.get('val_mae'))} | {m.get('n_train', '—')} |")  # fmt: skip
    lines += _timings_lines(card.get("timings"))
    v = next(iter(card["components"].values())).get("versions") or {}
    lines += ["", "Software: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ". "
              f"Exported on {card['exported_on']}. The full parameters are `params.yaml` "
              f"beside this card (sections: {', '.join(params)}).", ""]  # fmt: skip
    return lines


def _timings_lines(t: dict | None) -> list[str]:
    """Per-stage wall and CPU time of the run that trained the model (export --timings)."""
    if not t:
        return []
    lines = ["", f"Per-stage time of the run that produced it ({t['machine']}):", "",
             "| step | wall (min) | CPU (min) |", "|---|---:|---:|"]  # fmt: skip
    resumed = False
    for r in t["steps"]:
        cpu = "—" if r["cpu_s"] is None else f"{r['cpu_s'] / 60:.1f}"
        k = r.get("attempts", 1)
        if k > 1 and r["step"] != "total":
            resumed = True
        mark = f" ({k} attempts)" if k > 1 and r["step"] != "total" else ""
        lines.append(f"| {r['step']}{mark} | {r['wall_s'] / 60:.1f} | {cpu} |")
    if resumed:
        lines += [
            "",
            "A step with more than one attempt was interrupted and resumed: its wall "
            "time adds up every attempt, its CPU time is the last attempt's.",
        ]
    return lines


REGION_NAMES = {
    "O": "the whole radiograph (O)",
    "H": "the hand crop (H)",
    "R1": "the carpal crop (R1)",
    "R2": "the metacarpal/phalangeal crop (R2)",
    "E": "the hand with R1 erased (E)",
}


def render_card(card: dict, out: Path, data_md: str | None, use_path: str | None = None) -> str:
    rng = card.get("train_age_range_months") or [None, None]
    regions = card["regions"]
    lines = [f"# {card['title']}", ""]
    if card.get("status"):
        lines += [f"> **Status:** {card['status']}", ""]
    lines += [
        "Bone age from a left-hand radiograph and sex, after Chen et al. (arXiv 2006.00202): "
        "class activation maps of age classifiers locate the hand, the carpal bones (R1) and "
        "— with R1 erased — the metacarpals/phalanges (R2); an aggregator that also takes "
        "sex predicts a distribution over 240 monthly bins (Gaussian label distribution "
        "learning); the estimate is its expectation, the SD and p05–p95 its spread. This "
        "model's aggregator reads " + ", ".join(REGION_NAMES.get(r, r) for r in regions) + ".",
        "",
    ]
    if list(regions) == ["O"]:
        lines += [
            "Its estimate does not use the attention chain's crops: the region set was chosen "
            "by validation MAE, and at this model's budget the whole radiograph beat the "
            "crops (ablation below). The localizers still run, to draw the overlays and to "
            "feed the carpal-only estimate (R1).",
            "",
        ]
    lines += [
        "## Use",
        "",
        "```bash",
        f"boneage score --model {use_path or out} --cohort DIR [--labels CSV] --out RESULTS",
        "```",
        "",
        "CPU is enough. Outputs: predictions.csv/parquet (one row per input, rejected inputs "
        "with their reason), overlays and report.html — see the project README.",
        "",
        "## Data",
        "",
    ]
    lines += [data_md.strip(), ""] if data_md else ["(no data card given)", ""]
    split = card.get("split")
    if split:
        lines += ["| split | images | female | male | bone age range (months) |",
                  "|---|---:|---:|---:|---|"]  # fmt: skip
        for s, v in split.items():
            lo, hi = v["boneage_months_range"]
            lines.append(f"| {s} | {v['n']} | {v['female']} | {v['male']} | {lo:g}–{hi:g} |")
        lines.append("")
    lines += ["## Performance", ""] + _metrics_section(card) + _evaluation_section(card)
    lines += _training_section(card, out)
    lines += ["## Limitations", "", "Those of the data (above), and:", ""]
    lines += [f"- {x}" for x in LIMITATIONS]
    lines += [f"- Training bone ages span {_f(rng[0], 0)}–{_f(rng[1], 0)} months.", ""]
    return "\n".join(lines)
