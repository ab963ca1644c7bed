"""Do the flags separate? MAE of flagged vs unflagged images, and what image QC changes.

Scores, with a bundle (default: models/rsna299), the images of the project's test split
of `../shared/data/rsna-bone-age-299` that the bundle never trained on (the first 4,012
CSV rows, as models/rsna299 was trained on them, minus the 12 full-resolution ids), plus
copies of the first --bad of them turned 90° and inverted:

- per flag: MAE of the images scored ok that carry it vs those that do not;
- the turned / inverted copies with QC (corrected and flagged) vs the same copies scored
  with QC switched off (what `boneage score` did before QC).

    python benchmarks/qc_flags_mae.py [--model models/rsna299] [--bad 60] [--out DIR]

Writes DIR/qc_flags_mae.json and prints it. Images are copied to DIR/cohort (never into
the repository); a rerun into the same DIR resumes the scoring.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from boneage.bundle import OpenedModel  # noqa: E402
from boneage.cohort import Candidate  # noqa: E402
from boneage.config import SplitConfig  # noqa: E402
from boneage.registry import open_model  # noqa: E402
from boneage.score import score_in_shards  # noqa: E402
from boneage.score_cohort import score_cohort  # noqa: E402
from boneage.split import assign_split  # noqa: E402


def _mae(df: pd.DataFrame) -> float | None:
    ok = df[(df["status"] == "ok") & df["reference_boneage_months"].notna()]
    if ok.empty:
        return None
    return round(float((ok["boneage_months"] - ok["reference_boneage_months"]).abs().mean()), 2)


def per_flag(df: pd.DataFrame) -> dict:
    ok = df[df["status"] == "ok"]
    flags = sorted({f for s in ok["flags"].fillna("") for f in s.split(";") if f})
    out = {}
    for f in flags:
        has = ok["flags"].fillna("").str.split(";").apply(lambda fs, f=f: f in fs)
        out[f] = {"n_flagged": int(has.sum()), "mae_flagged": _mae(ok[has]),
                  "n_unflagged": int((~has).sum()), "mae_unflagged": _mae(ok[~has])}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(REPO / "models" / "rsna299"))
    ap.add_argument("--rsna", default=str(REPO.parent / "shared" / "data" / "rsna-bone-age-299"))
    ap.add_argument("--rows", type=int, default=4012, help="the CSV rows the model trained on")
    ap.add_argument("--bad", type=int, default=60, help="turned and inverted copies of this many")
    ap.add_argument("--out", default="/tmp/boneage-qc-flags")
    a = ap.parse_args()
    rsna, out = Path(a.rsna), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = pd.read_csv(rsna / "boneage-training-dataset.csv").head(a.rows)
    fullres = {1377, 1378, 1380, 1385, 1390, 1400, 1417, 1418, 1430, 1489, 1512, 1520}
    labels = labels[~labels["id"].isin(fullres)]
    labels = labels[[assign_split(str(i), SplitConfig()) == "test" for i in labels["id"]]]
    opened = open_model(a.model)
    d = out / "cohort"  # in OUT, so that a rerun resumes the scoring
    d.mkdir(exist_ok=True)
    rows, bad = [], []
    for k, r in enumerate(labels.itertuples()):
        src = rsna / "boneage-training-dataset" / f"{r.id}.jpg"
        (d / f"{r.id}.jpg").write_bytes(src.read_bytes())
        sex = "M" if r.male else "F"
        rows.append((str(r.id), sex, f"{r.id}.jpg", r.boneage))
        if k < a.bad:
            px = np.asarray(Image.open(src).convert("L"))
            for tag, img in (("rot90", np.rot90(px, 1)), ("inv", 255 - px)):
                name = f"{r.id}_{tag}.png"
                Image.fromarray(np.ascontiguousarray(img)).save(d / name)
                rows.append((f"{r.id}_{tag}", sex, name, r.boneage))
                bad.append(Candidate(f"{r.id}_{tag}", d / name, name, sex, "csv",
                                     float(r.boneage), None, None))  # fmt: skip
    csv = out / "labels.csv"
    pd.DataFrame(rows, columns=["id", "sex", "path", "boneage_months"]).to_csv(csv, index=False)
    summary = score_cohort(opened, d, out / "scored", csv)
    pred = pd.read_parquet(out / "scored" / "predictions.parquet")
    p = opened.bundle.params
    no_qc = dataclasses.replace(
        opened.bundle, params=p.model_copy(update={"score": p.score.model_copy(
            update={"qc": False})}))  # fmt: skip
    raw = score_in_shards(OpenedModel(no_qc, opened.name, opened.version, opened.uri), bad)
    is_copy = pred["id"].str.contains("_")
    upright, copies = pred[~is_copy], pred[is_copy]
    result = {
        "model": a.model, "model_version": opened.version,
        "n_test_images": int(len(upright)), "n_copies": int(len(copies)),
        "test_images": {"mae": _mae(upright), "n_ok": int((upright["status"] == "ok").sum()),
                        "rejected": upright.loc[upright["status"] != "ok", ["id", "error"]]
                        .to_dict("records"), "per_flag": per_flag(upright)},
        "copies_with_qc": {"mae": _mae(copies), "n_ok": int((copies["status"] == "ok").sum()),
                           "per_flag": per_flag(copies)},
        "copies_without_qc": {"mae": _mae(raw), "n_ok": int((raw["status"] == "ok").sum())},
        "upright_originals_of_the_copies": {
            "mae": _mae(upright[upright["id"].isin({c.id.split("_")[0] for c in bad})])},
        "seconds": summary.get("seconds"),
    }  # fmt: skip
    (out / "qc_flags_mae.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
