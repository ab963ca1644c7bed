"""fp32 vs bf16 autocast, batch norms as trained vs folded into the convolutions
(precision.fold_batchnorm, what every model load does for inference): the same trained
aggregator's test-split predictions, on the same crops, in one run — MAE of each, how far
the estimates move from unfolded fp32 (mean, p99, max months) and the inference images/s
of each.

    python benchmarks/precision_drift.py --work WORK [--model WORK/models/aggregator]

WORK: a pipeline work dir (profiles/run.py --work; or `data/interim` layout via
--ingest/--attend-root). On a CPU without native bf16 the bf16 pass is emulated (slow).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from boneage.aggregator import load_region_data
from boneage.ldl import expectation
from boneage.localizer import StagePaths, read_manifest
from boneage.precision import cpu_native_bf16
from boneage.training import load_model, predict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, help="work dir holding ingest/ and attend/")
    ap.add_argument("--ingest", type=Path, help="ingest dir (default WORK/ingest)")
    ap.add_argument("--attend-root", type=Path, help="attend root (default WORK/attend)")
    ap.add_argument("--model", type=Path, help="aggregator dir (default WORK/models/aggregator)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    ingest = a.ingest or a.work / "ingest"
    attend = a.attend_root or a.work / "attend"
    model_dir = a.model or a.work / "models" / "aggregator"
    paths = StagePaths(ingest, attend)
    cpu = torch.device("cpu")
    models = {fold: load_model(model_dir, cpu, fold=fold) for fold in (False, True)}
    meta = models[False][1]
    data, _ = load_region_data(paths, read_manifest(paths.manifest), tuple(meta["regions"]),
                               int(meta["img_size"]))  # fmt: skip
    d = data[a.split]
    age = d.age.numpy()
    rows, base = [], None
    for fold in (False, True):
        for amp in ("fp32", "bf16"):
            model = models[fold][0].to(memory_format=torch.channels_last)
            t = time.perf_counter()
            est = expectation(predict(model, d, cpu, a.batch, amp=amp)).numpy()
            ips = len(d) / (time.perf_counter() - t)
            base = est if base is None else base
            moved = np.abs(est - base)
            rows.append({"batchnorm": "folded" if fold else "as trained", "amp": amp,
                         "mae": float(np.abs(est - age).mean()),
                         "moved_mean": float(moved.mean()),
                         "moved_p99": float(np.quantile(moved, 0.99)),
                         "moved_max": float(moved.max()), "img_s": ips})  # fmt: skip
    print(json.dumps({
        "model": str(model_dir), "regions": "+".join(meta["regions"]), "split": a.split,
        "n": len(age), "native_bf16": cpu_native_bf16(), "rows": rows,
        "speedup_bf16": rows[1]["img_s"] / rows[0]["img_s"],
        "speedup_fold_bf16": rows[3]["img_s"] / rows[1]["img_s"],
        "speedup_fold_fp32": rows[2]["img_s"] / rows[0]["img_s"],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
