"""Writing a synthetic demo cohort (`make_demo_cohort`, `boneage demo-cohort`): PNGs,
labels.csv, boxes.csv and a README, reproducible from (n, seed, size). SYNTHETIC: see
boneage.demo."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from boneage.demo.anatomy import (
    AGE_RANGE_MONTHS,
    BOX_COLUMNS,
    DESCRIPTION,
    GIRL_FACTOR,
    GIRL_OFFSET,
    LABEL_COLUMNS,
    MATURITY_NOISE,
    SOFTWARE,
    image_shape,
)
from boneage.demo.render import render_hand

# --------------------------------------------------------------------------------------
# Cohort
# --------------------------------------------------------------------------------------

PNG_COMPRESS_LEVEL = 1  # zlib level: noisy images barely compress; 1 is 5x faster than 6
_ID_RE = re.compile(r"^demo\d{5,}\.png$")


def _image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``: depends on (seed, index) only, not on n."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0xB0E]))


def _sample_subject(rng: np.random.Generator) -> tuple[int, bool]:
    age = int(round(rng.uniform(*AGE_RANGE_MONTHS)))
    male = bool(rng.random() < 0.5)
    return age, male


def _readme(n: int, seed: int, size: int) -> str:
    rows, cols = image_shape(size)
    return f"""SYNTHETIC DATA - NOT PATIENT IMAGES
=====================================

These {n} images are synthetic left-hand radiographs drawn by `boneage demo-cohort`
(boneage.demo.make_demo_cohort, n={n}, seed={seed}, size={size}). No patient data was
used. They exist to run and test the bone age pipeline end to end without real data.

Layout (like the RSNA Pediatric Bone Age Challenge):
  images/demoNNNNN.png  8-bit grayscale, {cols} x {rows} px (width x height), PNG tEXt
                        says SYNTHETIC
  labels.csv            id,boneage,male  (bone age in months, sex)
  boxes.csv             ground-truth boxes in PNG pixels (x = column, y = row, x1/y1
                        exclusive): hand (palm, fingers, wrist incl. distal radius/ulna),
                        r1 (carpal region: full extent of the 8 carpal bones, ossified or
                        not, plus the distal radius/ulna epiphyses), r2 (metacarpals and
                        phalanges)

How they were generated:
  - bone age uniform in {AGE_RANGE_MONTHS[0]:g}-{AGE_RANGE_MONTHS[1]:g} months, sex 50/50;
  - skeletal maturity (male-equivalent years) = age for boys, {GIRL_FACTOR} * age +
    {GIRL_OFFSET} for girls, times exp(N(0, {MATURITY_NOISE})) individual noise;
  - maturity sets which carpal bones are ossified and how big they are, the size of the
    epiphyses, the width of each physis and whether it is fused, and the bone widths;
  - random global scale (0.8-1.2), rotation (+-15 deg), position, finger spread,
    exposure, gamma, mean/contrast (drawn independently of age), Gaussian blur and noise,
    and an "L" marker in a free corner.
Image i depends only on (seed, i): regenerating with a larger n keeps the first images.
"""


def make_demo_cohort(out: Path, n: int, seed: int = 0, size: int = 512) -> pd.DataFrame:
    """Write a synthetic cohort to ``out`` and return its labels + boxes table.

    Writes ``out/images/{id}.png``, ``out/labels.csv`` (``id,boneage,male``),
    ``out/boxes.csv`` (``id`` + :data:`BOX_COLUMNS`) and ``out/README.txt``. Stale
    ``demoNNNNN.png`` files from an earlier, larger cohort are removed. Output is
    byte-identical for the same (n, seed, size).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if size < 64:
        raise ValueError(f"size must be >= 64 px, got {size}")
    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)

    label_rows: list[dict[str, object]] = []
    box_rows: list[dict[str, object]] = []
    written: set[str] = set()
    for i in range(n):
        rng = _image_rng(seed, i)
        age, male = _sample_subject(rng)
        hand = render_hand(age, male, rng, size)
        image_id = f"demo{i + 1:05d}"
        info = PngInfo()
        info.add_text("Description", DESCRIPTION)
        info.add_text("Software", SOFTWARE)
        info.add_text("Source", "synthetic")
        info.add_text("Comment", f"boneage demo-cohort seed={seed} index={i} size={size}")
        name = f"{image_id}.png"
        Image.fromarray(hand.image).save(
            images / name, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL
        )
        written.add(name)
        label_rows.append({"id": image_id, "boneage": age, "male": male})
        row: dict[str, object] = {"id": image_id}
        for region in ("hand", "r1", "r2"):
            for c, v in zip(("x0", "y0", "x1", "y1"), hand.boxes[region], strict=True):
                row[f"{region}_{c}"] = v
        box_rows.append(row)

    for stale in images.iterdir():
        if _ID_RE.match(stale.name) and stale.name not in written:
            stale.unlink()

    labels = pd.DataFrame(label_rows, columns=LABEL_COLUMNS)
    boxes = pd.DataFrame(box_rows, columns=["id", *BOX_COLUMNS])
    labels.to_csv(out / "labels.csv", index=False)
    boxes.to_csv(out / "boxes.csv", index=False)
    (out / "README.txt").write_text(_readme(n, seed, size), encoding="utf-8")
    return labels.merge(boxes, on="id", how="left")
