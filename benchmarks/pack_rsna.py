"""Pack the RSNA 299-px training set small enough to travel to the GPU machine (64 MiB per
call): every image resized to a long side of SIZE and re-encoded as JPEG (quality Q), plus
the labels CSV, in RSNA layout (DIR/{id}.jpg + DIR/labels.csv).

    python benchmarks/pack_rsna.py [--size 256] [--quality 72] [--out pack/rsna256]

12,611 images at 256 px, q72: 56.9 MiB (measured; q80 gives 67.3 MiB, over the limit).
Put the output under a folder ignored by git (pack/ is) and name it in the device call's
`carry`. Never commit it: RSNA images stay out of the repository.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=ROOT.parent / "shared/data/rsna-bone-age-299")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--quality", type=int, default=72)
    ap.add_argument("--out", type=Path, default=ROOT / "pack/rsna256")
    ap.add_argument("--n", type=int, default=None, help="first N images only")
    a = ap.parse_args()
    labels = pd.read_csv(a.source / "boneage-training-dataset.csv")
    if a.n:
        labels = labels.head(a.n)
    a.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in labels["id"]:
        img = Image.open(a.source / "boneage-training-dataset" / f"{i}.jpg").convert("L")
        img.thumbnail((a.size, a.size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=a.quality)
        (a.out / f"{i}.jpg").write_bytes(buf.getvalue())
        total += buf.tell()
    labels.to_csv(a.out / "labels.csv", index=False)
    print(f"{len(labels)} images -> {a.out} ({total / 2**20:.1f} MiB, {a.size} px, q{a.quality})")


if __name__ == "__main__":
    main()
