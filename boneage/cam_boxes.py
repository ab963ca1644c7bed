"""From a class activation map to a box, and the pictures that show both: threshold τ →
largest connected component (weighted by the stage's prior, grown to its minimum size) →
box; foreground refinement of the hand box; the erase that turns a hand crop into image E
(R1 filled) for the r2 localizer; the CAM overlay and montage of the attend reports.
Pure functions on arrays: boneage.attend runs them over every image of a split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from boneage.config import AttendStageConfig
from boneage.geometry import Affine, Box
from boneage.imageio import write_png


@dataclass
class CamBox:
    box: Box  # in input (network) pixels
    status: str
    area: float  # fraction of input pixels with CAM ≥ τ
    mass_in_box: float  # share of total CAM inside the box


def cam_to_box(cam: np.ndarray, cfg: AttendStageConfig, prior_in_input: Box) -> CamBox:
    """Threshold a [0,1] CAM, keep the largest connected component, return its box."""
    mask = cam >= cfg.tau
    labels, n = ndimage.label(mask)
    total = float(cam.sum())
    if n == 0:
        return CamBox(prior_in_input, "fallback_prior", 0.0, _mass(cam, prior_in_input, total))
    sizes = np.bincount(labels.ravel())[1:]
    best = int(np.argmax(sizes)) + 1
    if sizes[best - 1] < cfg.min_area * cam.size:
        return CamBox(prior_in_input, "fallback_prior", float(mask.mean()),
                      _mass(cam, prior_in_input, total))  # fmt: skip
    sl = ndimage.find_objects(labels)[best - 1]
    box = (float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop))
    return CamBox(box, "ok", float(mask.mean()), _mass(cam, box, total))


def foreground_mask(view: np.ndarray, valid: Box, level: float = 1.0) -> np.ndarray | None:
    """The radiograph's foreground in a network input view: a threshold of the lightly
    smoothed view inside `valid` (the part that is image, not letterbox padding), opened
    once to cut thin bridges to markers. None when the view has no contrast.

    The threshold lies `level` of the way from the background level (5th percentile) up
    to Otsu's threshold: 1 is Otsu's (bone and dense tissue), lower values take in the
    thin soft tissue of fingertips and thumb that Otsu's threshold cuts off."""
    from skimage.filters import threshold_otsu

    h, w = view.shape
    x0, y0 = max(0, int(np.floor(valid[0]))), max(0, int(np.floor(valid[1])))
    x1, y1 = min(w, int(np.ceil(valid[2]))), min(h, int(np.ceil(valid[3])))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    sm = ndimage.gaussian_filter(view[y0:y1, x0:x1].astype(np.float32), 1.0)
    if float(sm.max() - sm.min()) < 1.0:
        return None
    t = float(threshold_otsu(sm))
    if level != 1.0:
        lo = float(np.percentile(sm, 5))
        t = lo + level * (t - lo)
    out = np.zeros(view.shape, dtype=bool)
    out[y0:y1, x0:x1] = ndimage.binary_opening(sm > t, iterations=1)
    return out


def refine_foreground(
    view: np.ndarray, cam: np.ndarray, valid: Box, min_object: float = 0.05, level: float = 1.0
) -> Box | None:
    """The box of the foreground component (see `foreground_mask`) holding the most CAM
    mass (cam: any non-negative weight map, same shape as view), or None. Components
    smaller than `min_object` of the valid area are never chosen: a hand fills a good part
    of a hand radiograph, a side marker or a bright film-edge strip does not."""
    fg = foreground_mask(view, valid, level)
    if fg is None:
        return None
    labels, n = ndimage.label(fg)
    if n == 0:
        return None
    mass = np.bincount(labels.ravel(), weights=cam.ravel(), minlength=n + 1)
    mass[0] = 0.0
    area = np.bincount(labels.ravel(), minlength=n + 1)
    valid_area = max(1.0, (valid[2] - valid[0]) * (valid[3] - valid[1]))
    mass[area < min_object * valid_area] = 0.0
    best = int(np.argmax(mass))
    if mass[best] <= 0:
        return None
    sl = ndimage.find_objects(labels)[best - 1]
    return (float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop))


def mask_to_foreground(
    cam: np.ndarray, view: np.ndarray, valid: Box, grow: int = 3, level: float = 1.0
) -> np.ndarray:
    """The CAM with everything off the (slightly grown) foreground set to 0, renormalised
    to [0, 1]; unchanged when the view has no usable foreground."""
    fg = foreground_mask(view, valid, level)
    if fg is None or not fg.any():
        return cam
    masked = cam * ndimage.binary_dilation(fg, iterations=grow)
    peak = float(masked.max())
    return masked / peak if peak > 0 else cam


def weight_by_prior(cam: np.ndarray, prior: Box, sigma: float) -> np.ndarray:
    """The CAM times a Gaussian window centred on the prior box (input pixels) with SDs of
    `sigma` × the box's width and height, renormalised to [0, 1]: an anatomical prior on
    where a region lies in its view, the CAM still choosing the place within it."""
    h, w = cam.shape
    cx, cy = (prior[0] + prior[2]) / 2, (prior[1] + prior[3]) / 2
    sx = max(1e-6, sigma * (prior[2] - prior[0]))
    sy = max(1e-6, sigma * (prior[3] - prior[1]))
    gx = np.exp(-0.5 * ((np.arange(w) + 0.5 - cx) / sx) ** 2)
    gy = np.exp(-0.5 * ((np.arange(h) + 0.5 - cy) / sy) ** 2)
    weighted = cam * gy[:, None] * gx[None, :]
    peak = float(weighted.max())
    return weighted / peak if peak > 0 else cam


def grow_to(b: Box, min_w: float, min_h: float) -> Box:
    """Box `b` grown about its centre to at least min_w × min_h."""
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    hw, hh = max(b[2] - b[0], min_w) / 2, max(b[3] - b[1], min_h) / 2
    return (cx - hw, cy - hh, cx + hw, cy + hh)


def _mass(cam: np.ndarray, b: Box, total: float) -> float:
    if total <= 0:
        return 0.0
    x0, y0 = max(0, int(b[0])), max(0, int(b[1]))
    x1, y1 = int(np.ceil(b[2])), int(np.ceil(b[3]))
    return float(cam[y0:y1, x0:x1].sum() / total)


def erase(img: np.ndarray, b: Box, mode: str, rng: np.random.Generator) -> np.ndarray:
    """Fill box `b` (image pixels) of img: with the image mean, matched noise, or a blur."""
    out = img.copy()
    h, w = img.shape
    x0, y0 = max(0, int(np.floor(b[0]))), max(0, int(np.floor(b[1])))
    x1, y1 = min(w, int(np.ceil(b[2]))), min(h, int(np.ceil(b[3])))
    if x1 <= x0 or y1 <= y0:
        return out
    if mode == "mean":
        out[y0:y1, x0:x1] = np.uint8(round(float(img.mean())))
    elif mode == "noise":
        noise = rng.normal(img.mean(), img.std(), (y1 - y0, x1 - x0))
        out[y0:y1, x0:x1] = np.clip(noise, 0, 255).astype(np.uint8)
    else:
        sigma = max(y1 - y0, x1 - x0) / 4
        out[y0:y1, x0:x1] = ndimage.gaussian_filter(img.astype(np.float32), sigma)[y0:y1, x0:x1]
    return out


def rel_box(rel: tuple[float, float, float, float], w: float, h: float) -> Box:
    return (rel[0] * w, rel[1] * h, rel[2] * w, rel[3] * h)


def cam_overlay(x: np.ndarray, cam: np.ndarray, row: dict, to_view: Affine, view_to_orig: Affine,
             path: Path) -> None:  # fmt: skip
    """Input view + CAM (red) + box (green; the CAM component's own box in orange when
    the stage refines it), at the network's input resolution."""
    base = np.stack([x] * 3, -1).astype(np.float32)
    heat = np.zeros_like(base)
    heat[..., 0] = cam * 255
    rgb = np.clip(base * 0.65 + heat * 0.5, 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    inv = to_view.then(view_to_orig).inverse()
    b = inv.box((row["x0"], row["y0"], row["x1"], row["y1"]))
    cb = inv.box((row["cam_x0"], row["cam_y0"], row["cam_x1"], row["cam_y1"]))
    if max(abs(u - v) for u, v in zip(b, cb, strict=True)) > 1:
        draw.rectangle(cb, outline=(255, 160, 0), width=1)
    draw.rectangle(b, outline=(0, 255, 0), width=2)
    draw.text((3, 3), f"{row['id']} {row['status']} age~{row['pred_age_months']:.0f}m",
              fill=(255, 255, 0))  # fmt: skip
    write_png(path, img)


def montage(paths: list[Path], out: Path, cols: int = 6) -> None:
    if not paths:
        return
    tiles = [Image.open(p).convert("RGB") for p in paths]
    s = max(t.size[0] for t in tiles)
    rows = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (cols * s, rows * s))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * s, (i // cols) * s))
    write_png(out, sheet)
