"""Boxes and the coordinate frames between model input, views, the store and originals.

Boxes are (x0, y0, x1, y1) floats in pixel units, x1/y1 exclusive. Every network input
carries an `Affine` that maps its pixel coordinates to the ORIGINAL image's pixel
coordinates, so a CAM box found at low resolution is cut again from the highest
resolution the store holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Affine:
    """x' = ax * x + bx, y' = ay * y + by (axis-aligned scale + shift)."""

    ax: float = 1.0
    bx: float = 0.0
    ay: float = 1.0
    by: float = 0.0

    def box(self, b: Box) -> Box:
        return (self.ax * b[0] + self.bx, self.ay * b[1] + self.by,
                self.ax * b[2] + self.bx, self.ay * b[3] + self.by)  # fmt: skip

    def then(self, outer: Affine) -> Affine:
        """The map `outer ∘ self` (first self, then outer)."""
        return Affine(
            outer.ax * self.ax, outer.ax * self.bx + outer.bx,
            outer.ay * self.ay, outer.ay * self.by + outer.by,
        )  # fmt: skip

    def inverse(self) -> Affine:
        return Affine(1 / self.ax, -self.bx / self.ax, 1 / self.ay, -self.by / self.ay)


def box_area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def iou(a: Box, b: Box) -> float:
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def expand(b: Box, margin: float) -> Box:
    """Grow each side by `margin` × the box's size on that axis."""
    w, h = b[2] - b[0], b[3] - b[1]
    return (b[0] - margin * w, b[1] - margin * h, b[2] + margin * w, b[3] + margin * h)


def square(b: Box) -> Box:
    """The square with the box's centre and its longer side (keeps aspect when resized)."""
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    half = max(b[2] - b[0], b[3] - b[1]) / 2
    return (cx - half, cy - half, cx + half, cy + half)


def clip(b: Box, width: float, height: float) -> Box:
    return (min(max(b[0], 0.0), width), min(max(b[1], 0.0), height),
            min(max(b[2], 0.0), width), min(max(b[3], 0.0), height))  # fmt: skip


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, Affine]:
    """Resize keeping aspect so the long side is `size`, pad to size×size (centred, 0).

    Returns the square uint8 image and the Affine from its pixels to `img`'s pixels.
    """
    h, w = img.shape
    f = size / max(h, w)
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    small = np.asarray(
        Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0)
    )
    out = np.zeros((size, size), dtype=np.uint8)
    px, py = (size - nw) // 2, (size - nh) // 2
    out[py : py + nh, px : px + nw] = small
    to_img = Affine(w / nw, -px * w / nw, h / nh, -py * h / nh)
    return out, to_img


def crop_resize(img: np.ndarray, b: Box, size: int) -> np.ndarray:
    """Cut box `b` (in img pixels, may extend past the border: zero-padded) and resize it
    to size×size with an antialiasing filter."""
    h, w = img.shape
    x0, y0, x1, y1 = b
    pad_l = max(0, int(np.ceil(-x0)))
    pad_t = max(0, int(np.ceil(-y0)))
    pad_r = max(0, int(np.ceil(x1 - w)))
    pad_b = max(0, int(np.ceil(y1 - h)))
    if pad_l or pad_t or pad_r or pad_b:
        img = np.pad(img, ((pad_t, pad_b), (pad_l, pad_r)))
    src = (x0 + pad_l, y0 + pad_t, x1 + pad_l, y1 + pad_t)
    if src[2] - src[0] < 1e-6 or src[3] - src[1] < 1e-6:
        return np.zeros((size, size), dtype=np.uint8)
    out = Image.fromarray(img).resize(
        (size, size), Image.Resampling.BILINEAR, box=src, reducing_gap=2.0
    )
    return np.asarray(out, dtype=np.uint8)
