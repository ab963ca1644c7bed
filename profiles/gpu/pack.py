"""Pack the RSNA 299-px training set small enough to travel to the GPU machine.

    python profiles/gpu/pack.py [--out .gpu/pack] [--quality 75] [--method 6] [--n N]
        [--source ../shared/data/rsna-bone-age-299] [--holdout CSV] [--workers 2]

Every image at its native size (299 px) re-encoded as lossy WebP (grayscale), in one
archive OUT/images.tar.gz (images/{id}.webp; one file, so what travels is the bytes of the
images and not 12,599 files' worth of per-file overhead; the job unpacks it in a second)
+ OUT/labels.csv (id,boneage,male, as RSNA's CSV). The 12 ids of
../shared/data/rsna-bone-age-fullres (--holdout) are left out of the pack altogether (they
never travel) and listed in OUT/holdout.csv, which the job also hands to profiles/run.py
--holdout. OUT/pack.json records the settings, the counts, the bytes and the fidelity on
a sample (PSNR and mean absolute difference against the source JPEG, decoded).

Measured on the 12,611-image set (quality 75, method 6; see docs/gpu.md): 29 MiB, against
76 MiB as JPEG q75 at 299 px. `--n N`: the first N rows after the holdout (the rehearsal's
small pack). Never commit a pack: RSNA images stay out of the repository.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing as mp
import shutil
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from facts import HOLDOUT_CSV, PACK_DIR, RSNA299, MiB  # noqa: E402

FIDELITY_SAMPLE = 200  # images whose decoded WebP is compared with the source
ARCHIVE = "images.tar.gz"


def read_ids(csv_path: Path) -> list[str]:
    with open(csv_path, newline="") as f:
        return [row[0] for i, row in enumerate(csv.reader(f)) if i and row]


def _encode(job: tuple[Path, int, int]) -> bytes:
    src, quality, method = job
    buf = io.BytesIO()
    Image.open(src).convert("L").save(buf, format="WEBP", quality=quality, method=method)
    return buf.getvalue()


def fidelity(pairs: list[tuple[Path, bytes]]) -> dict:
    """PSNR (dB) and mean |difference| (grey levels) of the WebP against its source."""
    mse, mad = [], []
    for src, webp in pairs:
        a = np.asarray(Image.open(src).convert("L"), dtype=np.float64)
        b = np.asarray(Image.open(io.BytesIO(webp)).convert("L"), dtype=np.float64)
        mse.append(float(np.mean((a - b) ** 2)))
        mad.append(float(np.mean(np.abs(a - b))))
    m = float(np.mean(mse)) if mse else 0.0
    return {"n": len(pairs), "psnr_db": round(10 * np.log10(255**2 / m), 2) if m else None,
            "mean_abs_diff": round(float(np.mean(mad)), 3) if mad else None}  # fmt: skip


def write_archive(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A gzipped tar of (name, bytes), reproducible (fixed times and owners, given order)."""
    with tarfile.open(path, "w:gz", compresslevel=6) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))


def pack(source: Path, out: Path, holdout: Path | None, quality: int = 75, method: int = 6,
         n: int | None = None, workers: int = 2) -> dict:  # fmt: skip
    """Write the pack (replacing OUT) and return its pack.json record."""
    held = set(read_ids(holdout)) if holdout else set()
    with open(source / "boneage-training-dataset.csv", newline="") as f:
        r = csv.reader(f)
        header = next(r)
        rows = [row for row in r if row and row[0] not in held]
    if n is not None:
        rows = rows[:n]
    images = source / "boneage-training-dataset"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    jobs = [(images / f"{row[0]}.jpg", quality, method) for row in rows]
    t0 = time.perf_counter()
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            webps = pool.map(_encode, jobs, chunksize=64)
    else:
        webps = [_encode(j) for j in jobs]
    seconds = time.perf_counter() - t0
    names = [f"images/{row[0]}.webp" for row in rows]
    write_archive(out / ARCHIVE, list(zip(names, webps, strict=True)))
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    with open(out / "holdout.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id"])
        w.writerows([i] for i in sorted(held, key=int))
    step = max(1, len(jobs) // FIDELITY_SAMPLE)
    sample = [(j[0], w) for j, w in zip(jobs[::step], webps[::step], strict=True)]
    sample = sample[:FIDELITY_SAMPLE]
    image_bytes = sum(len(w) for w in webps)
    info = {
        "source": str(source),
        "format": "webp",
        "quality": quality,
        "method": method,
        "n_images": len(rows),
        "holdout_ids_left_out": sorted(held, key=int),
        "image_bytes": image_bytes,
        "mean_image_bytes": round(image_bytes / len(webps), 1) if webps else 0,
        "archive_bytes": (out / ARCHIVE).stat().st_size,
        "encode_seconds": round(seconds, 1),
        "fidelity": fidelity(sample),
    }
    (out / "pack.json").write_text(json.dumps(info, indent=2) + "\n")
    info["total_bytes"] = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    fid = info["fidelity"]
    print(f"{len(rows)} images -> {out / ARCHIVE}: {image_bytes / MiB:.2f} MiB of WebP "
          f"(q{quality}, method {method}); {info['total_bytes'] / MiB:.2f} MiB in all with the "
          f"tar and CSVs; {len(held)} holdout ids left out; PSNR {fid['psnr_db']} dB vs the "
          f"source on {fid['n']} images; {seconds:.0f} s")  # fmt: skip
    return info


def unpack(pack_dir: Path, dest: Path) -> Path:
    """Extract the pack's images into dest/images (what the job does with `tar -xzf`)."""
    with tarfile.open(pack_dir / ARCHIVE, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest / "images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=RSNA299)
    ap.add_argument("--out", type=Path, default=PACK_DIR)
    ap.add_argument("--holdout", type=Path, default=HOLDOUT_CSV,
                    help="CSV whose first column lists ids to leave out")  # fmt: skip
    ap.add_argument("--quality", type=int, default=75)
    ap.add_argument("--method", type=int, default=6, help="WebP effort 0-6 (6: smallest)")
    ap.add_argument("--n", type=int, default=None, help="first N images only (rehearsal)")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    if not a.holdout.is_file():
        raise SystemExit(f"{a.holdout}: no holdout CSV (the 12 full-resolution ids must not "
                         "travel); pass --holdout")  # fmt: skip
    pack(a.source, a.out, a.holdout, a.quality, a.method, a.n, a.workers)


if __name__ == "__main__":
    main()
