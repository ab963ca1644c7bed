"""Grey-level windowing of images of more than 8 bits (16-bit PNG/TIFF, DICOM): the robust
[lo, hi] range and the linear map to 8 bits. Shared by boneage.imageio (rasters) and
boneage.dicom (after the modality/VOI LUTs), which import it; it imports neither."""

from __future__ import annotations

import numpy as np


def robust_range(values: np.ndarray, exclude: np.ndarray | None = None) -> tuple[float, float]:
    """The [lo, hi] window of an image of more than 8 bits: its min and max, except that
    values far outside the bulk of the histogram are left out — a saturated marker, a
    burnt-in label or a single hot pixel must not crush the hand into a few grey levels.

    The bulk is the 0.5th-99.5th percentile range of the values other than the exact
    extremes (plateaus at the min/max are typical of markers and padding; they are left
    out when at least half the pixels remain); hi is the largest value within half of
    that range above it, lo the smallest within half of it below. An image with no such
    outliers gets exactly its min and max. `exclude`: pixels (e.g. DICOM padding) to leave
    out entirely."""
    v = values if exclude is None else values[~exclude]
    v = np.asarray(v, dtype=np.float64).ravel()
    if v.size == 0:
        return 0.0, 0.0
    vmin, vmax = float(v.min()), float(v.max())
    sample = v[:: max(1, v.size // 4_000_000)]  # percentiles of a few Mpx are enough
    inner = sample[(sample > vmin) & (sample < vmax)]
    if inner.size >= 0.5 * sample.size:
        sample = inner
    p_lo, p_hi = (float(x) for x in np.percentile(sample, [0.5, 99.5]))
    reach = 0.5 * (p_hi - p_lo)
    lo = float(v[v >= p_lo - reach].min())
    hi = float(v[v <= p_hi + reach].max())
    return (lo, hi) if hi > lo else (vmin, vmax)


def window_to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map [lo, hi] → [0, 255], clipped, rounded."""
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (arr.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
