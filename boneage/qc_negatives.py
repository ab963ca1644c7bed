"""The non-hand images QC learns and is measured against, made without annotations:
synthetic negatives (noise, smooth noise, gradients, radial blobs, shapes, gratings,
text-like blocks, patch-shuffled radiographs), a few photographs' worth of natural
textures (`photo_negatives`), and the measurement corpus of rotated, inverted, non-hand
and tiny images built from real hands (`corpus`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from boneage.qc import TRAIN_SIDE

NEGATIVE_KINDS = ("noise", "smooth_noise", "gradient", "radial", "shapes", "grating",
                  "checker", "blobs", "text", "shuffled")  # fmt: skip


def _unit(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(a, np.float32)


def synthetic_negative(kind: str, rng: np.random.Generator, side: int = TRAIN_SIDE,
                       hand: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """A side×side float32 image in [0, 1] that is no hand radiograph. `hand` (a
    side×side image in [0, 1]) is needed by 'shuffled' (its patches, shuffled)."""
    from scipy import ndimage

    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    if kind == "noise":
        return rng.random((side, side), dtype=np.float32)
    if kind == "smooth_noise":
        a = ndimage.gaussian_filter(rng.standard_normal((side, side)), rng.uniform(0.7, 8))
        return _unit(a)
    if kind == "gradient":
        t = rng.uniform(0, 2 * np.pi)
        a = np.cos(t) * xx + np.sin(t) * yy
        return _unit(a + rng.normal(0, rng.uniform(0, 0.05), a.shape))
    if kind == "radial":
        cx, cy = rng.uniform(0, 1, 2)
        a = np.hypot(xx - cx, yy - cy) * rng.choice([-1, 1])
        return _unit(a + rng.normal(0, rng.uniform(0, 0.05), a.shape))
    if kind in ("shapes", "text"):
        img = Image.new("F", (side, side), float(rng.uniform(0, 1)))
        from PIL import ImageDraw

        d = ImageDraw.Draw(img)
        if kind == "shapes":
            for _ in range(rng.integers(1, 9)):
                x0, y0 = rng.uniform(-0.2, 1, 2) * side
                x1, y1 = x0 + rng.uniform(0.05, 0.8) * side, y0 + rng.uniform(0.05, 0.8) * side
                fill = float(rng.uniform(0, 1))
                shape = rng.integers(0, 3)
                if shape == 0:
                    d.ellipse([x0, y0, x1, y1], fill=fill)
                elif shape == 1:
                    d.rectangle([x0, y0, x1, y1], fill=fill)
                else:
                    pts = [tuple(p) for p in rng.uniform(0, side, (rng.integers(3, 7), 2))]
                    d.polygon(pts, fill=fill)
        else:
            ink = float(rng.uniform(0, 0.4)) if rng.random() < 0.7 else float(rng.uniform(0.6, 1))
            h = rng.uniform(0.03, 0.08) * side
            y = rng.uniform(0, 0.1) * side
            while y < side:
                x = rng.uniform(0, 0.1) * side
                while x < side * rng.uniform(0.7, 1.0):
                    wd = rng.uniform(0.5, 3) * h
                    d.rectangle([x, y, x + wd, y + h * rng.uniform(0.5, 1)], fill=ink)
                    x += wd + rng.uniform(0.3, 1) * h
                y += h * rng.uniform(1.5, 2.5)
        a = np.asarray(img, np.float32)
        if rng.random() < 0.5:
            a = ndimage.gaussian_filter(a, rng.uniform(0.3, 2))
        return np.clip(a, 0, 1)
    if kind == "grating":
        t, f = rng.uniform(0, np.pi), rng.uniform(1, 20)
        return _unit(np.sin(2 * np.pi * f * (np.cos(t) * xx + np.sin(t) * yy) + rng.uniform(0, 6)))
    if kind == "checker":
        n = rng.integers(2, 16)
        return ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)
    if kind == "blobs":
        a = ndimage.gaussian_filter(rng.standard_normal((side, side)), rng.uniform(2, 8))
        return (a > np.quantile(a, rng.uniform(0.3, 0.8))).astype(np.float32)
    if kind == "shuffled":
        if hand is None:
            raise ValueError("'shuffled' needs a hand image")
        n = int(rng.choice([4, 5, 8]))
        p = side // n
        tiles = [hand[i * p : (i + 1) * p, j * p : (j + 1) * p] for i in range(n) for j in range(n)]
        order = rng.permutation(len(tiles))
        tiles = [np.rot90(tiles[o], rng.integers(0, 4)) for o in order]
        out = np.zeros((side, side), np.float32)
        for k, t in enumerate(tiles):
            i, j = divmod(k, n)
            out[i * p : (i + 1) * p, j * p : (j + 1) * p] = t
        return out
    raise ValueError(f"unknown negative kind {kind!r}")


def photo_negatives() -> dict[str, np.ndarray]:
    """Natural and scientific photos shipped with scikit-image (never used in training):
    the 'real non-hand images' of the corpus."""
    import skimage.data as sd

    out = {}
    for name in ("astronaut", "camera", "coffee", "chelsea", "rocket", "moon", "page", "text",
                 "coins", "horse", "hubble_deep_field", "immunohistochemistry", "retina",
                 "brick", "grass", "gravel", "clock", "colorwheel", "logo", "microaneurysms",
                 "cell", "shepp_logan_phantom"):  # fmt: skip
        try:
            a = np.asarray(getattr(sd, name)())
        except Exception:  # noqa: BLE001 - a data file missing from this install
            continue
        if a.ndim == 3:
            a = np.asarray(Image.fromarray(a[..., :3].astype(np.uint8)).convert("L"))
        elif a.dtype == bool or a.max() <= 1:
            a = a.astype(np.float32) * 255
        out[name] = np.clip(a, 0, 255).astype(np.uint8)
    return out


def corpus(hands: dict[str, np.ndarray], seed: int) -> list[tuple[str, str, np.ndarray, str]]:
    """(kind, name, image, expected outcome) for a measurement corpus made from upright
    radiographs `hands` (id → uint8 image): every hand rotated 90/180/270° and inverted
    (expected: corrected back), non-hand images (expected: not_a_hand) and tiny/sliver
    images (expected: too_small). Expected outcomes: 'auto_rotated_N', 'auto_inverted',
    'auto_inverted+auto_rotated_N', 'not_a_hand', 'too_small'."""
    rng = np.random.default_rng(seed)
    items: list[tuple[str, str, np.ndarray, str]] = []
    for i, (name, px) in enumerate(sorted(hands.items())):
        for turns in (1, 2, 3):  # np.rot90 turns counter-clockwise; QC turns it back
            items.append((f"rotated_{90 * turns}", name, np.rot90(px, turns),
                          f"auto_rotated_{90 * turns}"))  # fmt: skip
        items.append(("inverted", name, 255 - px, "auto_inverted"))
        if i % 4 == 0:
            items.append(("inverted_rotated_90", name, np.rot90(255 - px, 1),
                          "auto_inverted+auto_rotated_90"))  # fmt: skip
        side = int(rng.integers(24, 96))
        small = np.asarray(Image.fromarray(px).resize((side, side), Image.Resampling.LANCZOS))
        items.append(("tiny_hand", name, small, "too_small"))
    for name, px in photo_negatives().items():
        for turns in range(4):
            items.append(("photo", f"{name}_r{90 * turns}", np.ascontiguousarray(
                np.rot90(px, turns)), "not_a_hand"))  # fmt: skip
    for k in range(max(40, len(hands) // 10)):
        kind = NEGATIVE_KINDS[k % (len(NEGATIVE_KINDS) - 1)]  # 'shuffled' needs hands
        side = int(rng.integers(256, 1200))
        a = synthetic_negative(kind, rng, TRAIN_SIDE)
        a = np.asarray(Image.fromarray((a * 255).astype(np.uint8)).resize(
            (side, int(side * rng.uniform(0.75, 1.33))), Image.Resampling.BILINEAR))  # fmt: skip
        if kind == "noise":  # noise at full resolution, not upsampled noise
            a = rng.integers(0, 256, a.shape, dtype=np.uint8)
        items.append((f"synthetic_{kind}", f"{kind}_{k}", a, "not_a_hand"))
    for name, shape in (("10x10", (10, 10)), ("2000x20", (20, 2000)), ("20x2000", (2000, 20)),
                        ("64x64", (64, 64)), ("100x600", (600, 100))):  # fmt: skip
        items.append(("tiny_image", name, rng.integers(0, 256, shape, dtype=np.uint8),
                      "too_small"))  # fmt: skip
    return items
