"""Will the profile's training fit the time the job has left? If not, fewer epochs.

    python profiles/gpu/fit_budget.py --profile P --throughput T.json --manifest M.parquet
        --seconds LEFT --out FITTED.yaml [--report BUDGET.json]

The job runs this after the throughput benchmark (real training images/s at the
aggregator's size on THIS machine) and before the rest of the pipeline. The training
images every remaining step will process — epochs × training images (and a third of that
for validation, forward only), scaled by (side / benchmark side)² — over the measured
images/s gives the training time; FIXED_S (attend × 3, evaluate, calibrate, the final
evaluation, bundle, export, the start-up of 15 processes: what does not scale with
epochs) is added. When that
exceeds LEFT × SAFETY, every epoch count is scaled down by the same factor (at least 1
each) and the result written to --out, which the job then runs instead; the header of
--out and the log say so. Otherwise (or when every epoch count is 1 already) nothing is
written and the profile runs as it is. A fitted profile is another file, named in every
step's command, so profiles/run.py runs ingest once more (seconds).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import yaml

FIXED_S = 260.0  # seconds of the rest of the pipeline that do not scale with epochs
SAFETY = 0.8  # plan to use at most this share of the time left
STAGES = ("hand", "r1", "r2")


def training_plan(prof: dict, n_train: int, n_val: int) -> list[dict]:
    """One entry per training the pipeline still runs: name, epochs (and where they are set
    in the profile), images per epoch, side in px."""
    loc, agg, carpal = prof["localizer"], prof["aggregator"], prof["carpal"]
    lt, at = loc["train"], agg["train"]
    out = []
    for s in STAGES:
        st = loc[s]
        key = ("localizer", s, "epochs") if st.get("epochs") else ("localizer", "train", "epochs")
        out.append({"name": f"localizer_{s}", "epochs": st.get("epochs") or lt["epochs"],
                    "key": key, "side": st["img_size"],
                    "train": min(n_train, lt.get("max_train_images") or n_train),
                    "val": min(n_val, lt.get("max_val_images") or n_val)})  # fmt: skip
    n_agg = min(n_train, at.get("max_train_images") or n_train)
    v_agg = min(n_val, at.get("max_val_images") or n_val)
    rows = [r for r in prof.get("ablation", {}).get("configs", []) if list(r) != agg["regions"]]
    for name in ["aggregator"] + [f"ablation_{'+'.join(r)}" for r in rows]:
        out.append({"name": name, "epochs": at["epochs"], "key": ("aggregator", "train", "epochs"),
                    "side": agg["img_size"], "train": n_agg, "val": v_agg})  # fmt: skip
    out.append({"name": "carpal", "epochs": carpal["epochs"], "key": ("carpal", "epochs"),
                "side": carpal["img_size"], "train": n_agg, "val": v_agg})  # fmt: skip
    return out


def seconds(plan: list[dict], ips: float, side: int, factor: float = 1.0) -> float:
    total = 0.0
    for t in plan:
        epochs = max(1, math.floor(t["epochs"] * factor)) if factor < 1 else t["epochs"]
        images = epochs * (t["train"] + t["val"] / 3)
        total += images * (t["side"] / side) ** 2 / ips
    return total


def fit(prof: dict, throughput: dict, n_train: int, n_val: int, left: float) -> dict:
    """The decision: {'fits', 'estimate_s', 'available_s', 'factor', 'profile' (fitted)}."""
    plan = training_plan(prof, n_train, n_val)
    ips, side = float(throughput["real_images_per_second"]), int(throughput["size"])
    need = seconds(plan, ips, side)
    avail = left * SAFETY - FIXED_S
    out = {"estimate_s": round(need + FIXED_S), "training_s": round(need),
           "available_s": round(left * SAFETY), "images_per_second": ips, "factor": 1.0,
           "fits": need <= avail, "profile": None}  # fmt: skip
    if out["fits"]:
        return out
    factor = max(0.0, avail) / need
    fitted = json.loads(json.dumps(prof))  # a deep copy
    changed = False
    for key in {t["key"] for t in plan}:
        node = fitted
        for k in key[:-1]:
            node = node[k]
        new = max(1, math.floor(node[key[-1]] * factor))
        changed |= new != node[key[-1]]
        node[key[-1]] = new
    out.update(factor=round(factor, 3), fitted_training_s=round(seconds(plan, ips, side, factor)),
               profile=fitted if changed else None)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--throughput", type=Path, required=True)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--seconds", type=float, required=True, help="time left for the pipeline")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report", type=Path, default=None, help="the decision as JSON")
    a = ap.parse_args()
    prof = yaml.safe_load(a.profile.read_text())
    split = pd.read_parquet(a.manifest, columns=["split"])["split"]
    n_train, n_val = int((split == "train").sum()), int((split == "val").sum())
    d = fit(prof, json.loads(a.throughput.read_text()), n_train, n_val, a.seconds)
    print(f"budget: the profile needs ~{d['training_s']} s of training at the measured "
          f"{d['images_per_second']:.0f} img/s + ~{FIXED_S:.0f} s for the rest = "
          f"~{d['estimate_s']} s; {d['available_s']} s available ({SAFETY:.0%} of "
          f"{a.seconds:.0f} s left)")  # fmt: skip
    a.out.unlink(missing_ok=True)
    if a.report is not None:
        report = {k: v for k, v in d.items() if k != "profile"}
        report.update(seconds_left=round(a.seconds), fixed_s=FIXED_S, safety=SAFETY,
                      n_train=n_train, n_val=n_val)  # fmt: skip
        a.report.write_text(json.dumps(report, indent=2) + "\n")
    if d["fits"]:
        print("budget: the profile fits; it runs as it is")
        return
    if d["profile"] is None:
        print("budget: TOO SLOW for the profile, but every epoch count is at its minimum "
              "(1) already; it runs as it is")  # fmt: skip
        return
    head = (f"# {a.profile.name} with every epoch count scaled by {d['factor']} (at least 1) "
            f"by profiles/gpu/fit_budget.py: at the measured {d['images_per_second']:.0f} "
            f"img/s the profile would not have finished before the job's deadline\n")  # fmt: skip
    a.out.write_text(head + yaml.safe_dump(d["profile"], sort_keys=False))
    print(
        f"budget: TOO SLOW for the profile; epochs scaled by {d['factor']} "
        f"(~{d['fitted_training_s']} s of training) -> {a.out}"
    )


if __name__ == "__main__":
    main()
