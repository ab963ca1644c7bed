"""Drawing primitives of the synthetic radiographs, in output pixel coordinates: the
similarity transform from canonical mm, ellipse and rod bones with cortical shells, masks
and their boxes. SYNTHETIC: see boneage.demo."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# --------------------------------------------------------------------------------------
# Geometry helpers (all in output pixel coordinates)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Similarity:
    """Canonical mm -> output pixels: rotate by ``angle``, scale, translate."""

    scale: float
    cos: float
    sin: float
    tx: float = 0.0
    ty: float = 0.0

    def vec(self, v: Sequence[float]) -> np.ndarray:
        x, y = v
        return np.array(
            [self.scale * (self.cos * x - self.sin * y), self.scale * (self.sin * x + self.cos * y)]
        )

    def pt(self, p: Sequence[float]) -> np.ndarray:
        return self.vec(p) + np.array([self.tx, self.ty])

    def unit(self, v: Sequence[float]) -> np.ndarray:
        w = self.vec(v)
        return w / np.linalg.norm(w)


def _window(
    shape: tuple[int, int], x0: float, x1: float, y0: float, y1: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    r0, r1 = max(int(math.floor(y0)), 0), min(int(math.ceil(y1)) + 1, shape[0])
    c0, c1 = max(int(math.floor(x0)), 0), min(int(math.ceil(x1)) + 1, shape[1])
    if r0 >= r1 or c0 >= c1:
        return None
    ys = np.arange(r0, r1, dtype=np.float32)[:, None]
    xs = np.arange(c0, c1, dtype=np.float32)[None, :]
    return (slice(r0, r1), slice(c0, c1)), xs, ys


def _ellipse_r2(
    shape: tuple[int, int], c: np.ndarray, e: np.ndarray, a: float, b: float
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Squared normalized radius of an ellipse (centre c, unit major axis e, semi-axes a, b)."""
    a, b = max(a, 0.5), max(b, 0.5)
    hx = math.sqrt((a * e[0]) ** 2 + (b * e[1]) ** 2)
    hy = math.sqrt((a * e[1]) ** 2 + (b * e[0]) ** 2)
    win = _window(shape, c[0] - hx, c[0] + hx, c[1] - hy, c[1] + hy)
    if win is None:
        return None
    sl, xs, ys = win
    dx, dy = xs - c[0], ys - c[1]
    p = dx * e[0] + dy * e[1]
    q = dy * e[0] - dx * e[1]
    return sl, (p / a) ** 2 + (q / b) ** 2


@dataclass(frozen=True)
class _Rod:
    """A long bone (or a soft-tissue finger) along an axis, in output pixels.

    The anatomical segment is t in [0, length] from ``p0`` along unit ``u``; the drawn
    (ossified) part is [ta, tb], its last ``ca``/``cb`` rounded by elliptic caps. The half
    width flares from ``hwm`` in the middle to ``hw0``/``hw1`` at the ends over ``f0``/``f1``.
    """

    p0: np.ndarray
    u: np.ndarray
    length: float
    ta: float
    tb: float
    ca: float
    cb: float
    hw0: float
    hwm: float
    hw1: float
    f0: float
    f1: float

    def evaluate(
        self, shape: tuple[int, int]
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """(window, normalized radial distance r, clamped axial position tc)."""
        if self.tb <= self.ta:
            return None
        ca, cb = max(self.ca, 1e-3), max(self.cb, 1e-3)
        if ca + cb > self.tb - self.ta:  # short part: shrink the caps to fit
            k = (self.tb - self.ta) / (ca + cb)
            ca, cb = ca * k, cb * k
        ia, ib = self.ta + ca, self.tb - cb  # the uncapped middle
        ends = [self.p0 + self.u * self.ta, self.p0 + self.u * self.tb]
        m = max(self.hw0, self.hwm, self.hw1) + 1.0
        xs_ = [p[0] for p in ends]
        ys_ = [p[1] for p in ends]
        win = _window(shape, min(xs_) - m, max(xs_) + m, min(ys_) - m, max(ys_) + m)
        if win is None:
            return None
        sl, xs, ys = win
        dx, dy = xs - self.p0[0], ys - self.p0[1]
        t = dx * self.u[0] + dy * self.u[1]
        d = np.abs(dy * self.u[0] - dx * self.u[1])
        tc = np.clip(t, self.ta, self.tb)
        w = (
            self.hwm
            + (self.hw0 - self.hwm) * np.exp(-tc / max(self.f0, 1e-3))
            + (self.hw1 - self.hwm) * np.exp(-(self.length - tc) / max(self.f1, 1e-3))
        )
        below = np.clip((ia - t) / ca, 0.0, None)
        above = np.clip((t - ib) / cb, 0.0, None)
        w = w * np.sqrt(np.clip(1.0 - below**2 - above**2, 0.0, 1.0))
        r = np.where(w > 1e-3, d / np.maximum(w, 1e-3), 2.0)
        return sl, r.astype(np.float32), tc


def _shell(r2: np.ndarray, inner: float, mu_medulla: float) -> np.ndarray:
    """Projected attenuation of a bone with a cortex (normalized radius^2 -> thickness)."""
    outer = np.sqrt(np.clip(1.0 - r2, 0.0, None))
    core = np.sqrt(np.clip(inner * inner - r2, 0.0, None))
    return outer - (1.0 - mu_medulla) * core


def _add_ellipse_bone(
    canvas: np.ndarray, c: np.ndarray, e: np.ndarray, a: float, b: float, inner: float = 0.82
) -> None:
    res = _ellipse_r2(canvas.shape, c, e, a, b)
    if res is not None:
        sl, r2 = res
        canvas[sl] += _shell(r2, inner, 0.55)


def _or_ellipse(mask: np.ndarray, c: np.ndarray, e: np.ndarray, a: float, b: float) -> None:
    res = _ellipse_r2(mask.shape, c, e, a, b)
    if res is not None:
        sl, r2 = res
        mask[sl] |= r2 <= 1.0


def _add_rod_bone(canvas: np.ndarray, rod: _Rod) -> None:
    res = rod.evaluate(canvas.shape)
    if res is None:
        return
    sl, r, tc = res
    # Thick cortex and hollow medulla mid-shaft, thin cortex and trabecular bone at the ends.
    mid = np.clip(1.0 - 1.4 * (2.0 * tc / max(rod.length, 1e-3) - 1.0) ** 2, 0.0, 1.0)
    inner = 0.88 - 0.18 * mid
    core_mu = 0.5 - 0.45 * mid
    r2 = r * r
    outer = np.sqrt(np.clip(1.0 - r2, 0.0, None))
    core = np.sqrt(np.clip(inner * inner - r2, 0.0, None))
    canvas[sl] += outer - (1.0 - core_mu) * core


def _or_rod(mask: np.ndarray, rod: _Rod) -> None:
    res = rod.evaluate(mask.shape)
    if res is not None:
        sl, r, _ = res
        mask[sl] |= r <= 1.0


def _polygons(shape: tuple[int, int], polys: list[list[np.ndarray]]) -> np.ndarray:
    """Boolean mask of the union of polygons given as (x, y) pixel vertices."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polys:
        draw.polygon([(float(x), float(y)) for x, y in poly], fill=1)
    return np.asarray(canvas, dtype=bool)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a mask, x1/y1 exclusive; (0, 0, 0, 0) if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
