"""Review montage: the hand (green), R1 (red) and R2 (cyan) boxes of `attend` drawn on the
stored images, for a person to check the localization of real radiographs at a glance.

Boxes come from each stage's regions.parquet in ORIGINAL pixel coordinates and are scaled
to the stored image, so the montage also checks the coordinate mapping end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from boneage.localizer import STAGES, StagePaths, read_manifest
from boneage.store import ImageStore

COLOURS = {"hand": (0, 230, 0), "r1": (255, 40, 40), "r2": (0, 220, 255)}


def pick_ids(manifest: pd.DataFrame, n: int, seed: int = 0) -> list[str]:
    """n ids spread over the age range (sorted by bone age, evenly spaced), reproducibly."""
    m = manifest.sort_values(["boneage_months", "id"], na_position="last")
    if len(m) <= n:
        return list(m["id"])
    idx = np.linspace(0, len(m) - 1, n).round().astype(int)
    return list(m["id"].iloc[idx])


def regions_montage(
    paths: StagePaths, out: Path, n: int = 12, ids: list[str] | None = None, tile: int = 320,
    cols: int = 6,
) -> list[str]:  # fmt: skip
    """Write a montage of n images with their boxes; returns the ids drawn."""
    manifest = read_manifest(paths.manifest).set_index("id")
    ids = ids or pick_ids(manifest.reset_index(), n)
    regions = {}
    for stage in STAGES:
        f = paths.attend_dir(stage) / "regions.parquet"
        if f.is_file():
            regions[stage] = pd.read_parquet(f).set_index("id")
    if not regions:
        raise FileNotFoundError(f"{paths.attend_root}: no regions.parquet (run boneage attend)")
    store = ImageStore(paths.store)
    tiles = []
    for id_ in ids:
        img = store.get(id_).pixels
        h, w = img.shape
        rgb = Image.fromarray(img).convert("RGB")
        draw = ImageDraw.Draw(rgb)
        row = manifest.loc[id_]
        sx, sy = w / float(row["orig_width"]), h / float(row["orig_height"])
        lw = max(2, round(max(h, w) / 250))
        status = []
        for stage, reg in regions.items():
            if id_ not in reg.index:
                continue
            r = reg.loc[id_]
            status.append(f"{stage}:{r['status']}")
            if r["status"] == "error" or pd.isna(r["x0"]):
                continue
            draw.rectangle([r["x0"] * sx, r["y0"] * sy, r["x1"] * sx, r["y1"] * sy],
                           outline=COLOURS[stage], width=lw)  # fmt: skip
        f = tile / max(h, w)
        small = rgb.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)
        t = Image.new("RGB", (tile, tile + 28))
        t.paste(small, ((tile - small.width) // 2, 28))
        d = ImageDraw.Draw(t)
        age = row["boneage_months"]
        age_s = f"{age:.0f}m" if pd.notna(age) else "age ?"
        d.text((3, 2), f"{id_} {row['sex']} {age_s} ({row['split']})", fill=(255, 255, 0))
        d.text((3, 14), " ".join(status), fill=(200, 200, 200))
        tiles.append(t)
    rows = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (cols * tile, rows * (tile + 28)))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * tile, (i // cols) * (tile + 28)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return ids
