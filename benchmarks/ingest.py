"""Ingest throughput vs a plain decode+resize loop over the same files, same cores.

    python benchmarks/ingest.py [--dataset rsna299|fullres] [--n N] [--workers 0]

Prints images/s of `boneage.ingest.ingest` (discovery, hashing, decoding, checks,
resize, PNG encode, Parquet shards, manifest) and of the baseline (read file, decode with
Pillow, grayscale, resize to the same long side) run in a process pool of the same size,
then the ratio ingest/baseline (goal ≥ 0.8), and how fast one process reads the store back.
Data: ../shared/data (BONEAGE_DATA_DIR).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from boneage.cohort import discover  # noqa: E402
from boneage.config import IngestConfig  # noqa: E402
from boneage.imageio import resize_long_side  # noqa: E402
from boneage.ingest import ingest_candidates  # noqa: E402
from boneage.store import ImageStore  # noqa: E402

DATA = Path(os.environ.get("BONEAGE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data"))


def baseline_one(args: tuple[str, int]) -> int:
    path, long_side = args
    with Image.open(path) as img:
        px = np.asarray(img.convert("L"))
    small, _ = resize_long_side(px, long_side)
    return small.size


def make_cohort(dataset: str, n: int, tmp: Path) -> tuple[Path, Path]:
    if dataset == "rsna299":
        src = DATA / "rsna-bone-age-299"
        labels = pd.read_csv(src / "boneage-training-dataset.csv").head(n)
        img_dir, suffix = src / "boneage-training-dataset", ".jpg"
        labels["src"] = labels["id"].astype(str)
    else:
        # 12 originals (1514x2044 .. 2570x2040 PNG), repeated under new ids to reach n
        src = DATA / "rsna-bone-age-fullres"
        base = pd.read_csv(src / "labels.csv")
        labels = pd.concat([base] * -(-n // len(base)), ignore_index=True).head(max(n, len(base)))
        labels["src"] = labels["id"].astype(str)
        labels["id"] = [f"{i}_{k}" for k, i in enumerate(labels["src"])]
        img_dir, suffix = src, ".png"
    cohort = tmp / "cohort"
    cohort.mkdir()
    for i, s in zip(labels["id"].astype(str), labels["src"], strict=True):
        (cohort / f"{i}{suffix}").symlink_to(img_dir / f"{s}{suffix}")
    labels.drop(columns="src").to_csv(tmp / "labels.csv", index=False)
    return cohort, tmp / "labels.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=["rsna299", "fullres"], default="rsna299")
    ap.add_argument("--n", type=int, default=None, help="images [rsna299: 2000, fullres: 96]")
    ap.add_argument("--workers", type=int, default=0, help="0 = all cores")
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs each")
    args = ap.parse_args()
    workers = args.workers or os.cpu_count() or 1
    n_images = args.n or (2000 if args.dataset == "rsna299" else 96)
    # the cohort is links into ../shared, and fullres repeats files under new ids
    cfg = IngestConfig(workers=workers, allow_external_links=True)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        cohort, labels = make_cohort(args.dataset, n_images, tmp)
        files = sorted(str(p) for p in cohort.iterdir())
        n = len(files)
        # warm the page cache so both sides read from memory
        for f in files:
            Path(f).read_bytes()

        base_t = float("inf")
        ctx = mp.get_context("fork")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            with ctx.Pool(workers) as pool:
                chunk = max(1, min(16, n // (workers * 8)))
                list(pool.imap(baseline_one, [(f, cfg.store_long_side) for f in files], chunk))
            base_t = min(base_t, time.perf_counter() - t0)

        ing_t = float("inf")
        for r in range(args.repeat):
            t0 = time.perf_counter()
            found = discover(cohort, labels, require_labels=True, allow_unknown_sex=False,
                             allow_external_links=True)  # fmt: skip
            res = ingest_candidates(found.candidates, found.rejected, tmp / f"out{r}", cfg,
                                    progress=False, reject_duplicates=False)  # fmt: skip
            ing_t = min(ing_t, time.perf_counter() - t0)
            assert len(res.manifest) == n, res.rejected.head()

        # reading the store back (what training does): decode every stored PNG, one process
        t0 = time.perf_counter()
        n_read = sum(1 for _ in ImageStore(tmp / "out0" / "store").iter_images())
        read_ips = n_read / (time.perf_counter() - t0)

    base_ips, ing_ips = n / base_t, n / ing_t
    print(f"dataset={args.dataset} images={n} workers={workers} long_side={cfg.store_long_side}")
    print(f"baseline decode+resize : {base_ips:8.1f} images/s")
    print(f"boneage ingest         : {ing_ips:8.1f} images/s")
    print(f"ratio ingest/baseline  : {ing_ips / base_ips:8.2f}  (goal >= 0.8)")
    print(f"store read (1 process) : {read_ips:8.1f} images/s")


if __name__ == "__main__":
    main()
