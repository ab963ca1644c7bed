"""Attend throughput vs the localizer's forward passes alone, same inputs, one run.

    python benchmarks/attend.py [--stage hand] [--n 240] [--params params.yaml] [--compare-fold]

Needs a trained localizer and the stores it reads (`make run` produces them for the demo
cohort; point --ingest/--attend-root/--model elsewhere for other data). Prints images/s
of `boneage.attend.attend` (views decoded from the store, forward, CAM, connected
components, boxes, crops from the highest resolution, crop/PNG stores) and of the same
network forward passes on the same inputs already in memory, and the ratio (goal ≥ 0.8).
`--compare-fold`: attend again with the localizer's batch norms folded into its
convolutions (what model loading does) and as trained — images/s of each and how many
boxes moved.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from boneage.attend import attend  # noqa: E402
from boneage.config import load_params  # noqa: E402
from boneage.localizer import StagePaths, read_manifest  # noqa: E402
from boneage.precision import resolve_device  # noqa: E402
from boneage.training import load_model  # noqa: E402
from boneage.views import load_views  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="hand", choices=["hand", "r1", "r2"])
    ap.add_argument("--n", type=int, default=None, help="first N images of the manifest")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--ingest", type=Path, default=Path("data/interim/ingest"))
    ap.add_argument("--attend-root", type=Path, default=Path("data/processed/attend"))
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--compare-fold", action="store_true",
                    help="also run attend with the batch norms folded and as trained")  # fmt: skip
    a = ap.parse_args()
    params = load_params(a.params)
    paths = StagePaths(a.ingest, a.attend_root)
    model_dir = a.model or Path("data/models") / f"localizer_{a.stage}"
    scfg = params.attend.stage(a.stage)
    device = resolve_device(params.attend.device)
    model, meta = load_model(model_dir, device)
    train_size = int(meta["img_size"])
    size = scfg.cam_size or train_size
    ids = read_manifest(paths.manifest)["id"].tolist()[: a.n]
    views = load_views(paths.input_store(a.stage), size, set(ids))
    x_all = torch.from_numpy(views.x).unsqueeze(1)
    bs = params.attend.batch_size

    def forward_only() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(x_all), bs):
                xb = x_all[i : i + bs].to(device).float().div_(255)
                if size == train_size:
                    model(xb, torch.zeros(len(xb), device=device), return_features=True)
                else:
                    small = F.interpolate(xb, size=(train_size, train_size), mode="bilinear",
                                          antialias=True, align_corners=False)  # fmt: skip
                    model(small, torch.zeros(len(xb), device=device))
                    model.feature_maps(xb)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(x_all) / (time.perf_counter() - t0)

    forward_only()  # warm-up
    fwd = max(forward_only() for _ in range(2))
    with tempfile.TemporaryDirectory() as td:
        out, rep = Path(td) / "attend", Path(td) / "reports"
        t0 = time.perf_counter()
        summary = attend(a.stage, params, paths, model_dir, out, rep, progress=False, limit=a.n)
        att = summary["n"] / (time.perf_counter() - t0)
    print(f"stage={a.stage} images={len(x_all)} device={device} cam_size={size} "
          f"train_size={train_size} batch={bs} threads={torch.get_num_threads()}")  # fmt: skip
    print(f"localizer forward only : {fwd:8.1f} images/s")
    print(f"boneage attend         : {att:8.1f} images/s  (status {summary['status']})")
    print(f"ratio attend/forward   : {att / fwd:8.2f}  (goal >= 0.8)")
    if a.compare_fold:  # the same attend with the batch norms left as trained
        import boneage.attend as attend_mod

        with tempfile.TemporaryDirectory() as td:
            runs = {}
            for fold in (True, False):
                attend_mod.load_model = functools.partial(load_model, fold=fold)
                out, rep = Path(td) / f"attend_{fold}", Path(td) / f"reports_{fold}"
                t0 = time.perf_counter()
                s = attend(a.stage, params, paths, model_dir, out, rep, progress=False, limit=a.n)
                runs[fold] = (s["n"] / (time.perf_counter() - t0),
                              pd.read_parquet(out / "regions.parquet"))  # fmt: skip
        cols = ["x0", "y0", "x1", "y1"]
        moved = (runs[True][1][cols] - runs[False][1][cols]).abs().max(axis=1)
        print(f"attend, batch norms as trained : {runs[False][0]:8.1f} images/s")
        print(f"attend, batch norms folded     : {runs[True][0]:8.1f} images/s "
              f"({runs[True][0] / runs[False][0]:.2f}x)")  # fmt: skip
        print(f"boxes moved > 2 px by folding  : {int((moved > 2).sum())} of {len(moved)} "
              f"(median move {float(moved.median()):.2f} px)")  # fmt: skip


if __name__ == "__main__":
    main()
