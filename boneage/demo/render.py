"""One synthetic hand radiograph (`render_hand`) with its ground-truth hand / R1 / R2
boxes, and the side marker. SYNTHETIC: see boneage.demo."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from boneage.demo.anatomy import (
    _FINGER_HW,
    _HAND_CUT_Y,
    _JOINT,
    _RADIUS,
    _RAYS,
    _ULNA,
    CARPALS,
    _bone_width_factor,
    _BoneSpec,
    _growth,
    _ramp,
    carpal_size,
    image_shape,
    physis_state,
    skeletal_maturity,
)
from boneage.demo.draw import (
    _add_ellipse_bone,
    _add_rod_bone,
    _box,
    _or_ellipse,
    _or_rod,
    _polygons,
    _Rod,
    _Similarity,
)

# --------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------


@dataclass
class RenderedHand:
    """One synthetic radiograph with its ground truth (everything in output pixels)."""

    image: np.ndarray  # uint8 (rows, cols)
    maturity: float  # male-equivalent skeletal maturity (years), individual noise included
    boxes: dict[str, tuple[int, int, int, int]]  # "hand", "r1", "r2", "marker"
    masks: dict[str, np.ndarray] = field(repr=False)  # "hand", "r1", "r2", "bone", "tissue"
    params: dict[str, float] = field(default_factory=dict)


def _dir(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([math.sin(a), -math.cos(a)])


def render_hand(
    age_months: float, male: bool, rng: np.random.Generator, size: int = 512
) -> RenderedHand:
    """Draw one synthetic left-hand radiograph of the given bone age and sex.

    All randomness (individual anatomy, maturity noise, pose, exposure, noise) comes from
    ``rng``. The image shape is :func:`image_shape` (``size``), whatever the age.
    """
    shape = image_shape(size)
    H, W = shape
    m = skeletal_maturity(age_months, male, rng)
    wf = _bone_width_factor(m)

    # ---- individual anatomy (canonical mm) ------------------------------------------
    spread = rng.uniform(0.2, 1.3)  # fingers diverge more than metacarpals
    length_jitter = {ray: rng.normal(1.0, 0.025) for ray in _RAYS}
    onset_jitter = rng.normal(0.0, 0.12, size=64)  # small per-bone timing noise (years)
    jit = iter(onset_jitter)

    # ---- pose and placement -----------------------------------------------------------
    angle = math.radians(rng.uniform(-15.0, 15.0))
    px_per_mm = 0.56 * H / 190.0 * _growth(m) * rng.uniform(0.8, 1.2)

    rays: dict[int, list[tuple[_BoneSpec, np.ndarray, np.ndarray, float]]] = {}
    for ray, (base, mc_deg, bones) in _RAYS.items():
        p = np.array(base, dtype=float)
        placed = []
        for k, spec in enumerate(bones):
            if k == 0:
                deg = mc_deg
            elif ray == 1:
                deg = mc_deg * 0.55 + rng.normal(0.0, 2.0)
            else:
                deg = mc_deg * (1.0 + spread) + rng.normal(0.0, 1.5) * k
            u = _dir(deg)
            length = spec.length * length_jitter[ray]
            placed.append((spec, p.copy(), u, length))
            p = p + u * (length + _JOINT)
        rays[ray] = placed

    tissue_pad = 1.0 + 0.12 * (1.0 - _ramp(m, 0.0, 10.0))  # chubbier infant hands
    tips = {ray: pl[-1][1] + pl[-1][2] * (pl[-1][3] + 5.0) for ray, pl in rays.items()}

    def perp(v: np.ndarray) -> np.ndarray:
        return np.array([-v[1], v[0]])

    def finger_point(ray: int, frac: float, side: float) -> tuple[float, float]:
        """Point on a finger's soft-tissue border ``frac`` along its proximal phalanx."""
        spec, p, u, length = rays[ray][1]
        return tuple(p + u * frac * length + perp(u) * side * _FINGER_HW[ray][0] * tissue_pad)

    def web(a: int, b: int) -> tuple[float, float]:
        pa, pb = finger_point(a, 0.32, 0.0), finger_point(b, 0.32, 0.0)
        return ((pa[0] + pb[0]) / 2, (pa[1] + pb[1]) / 2)

    mc1_web = rays[1][0][1] + rays[1][0][2] * rays[1][0][3] * 0.85
    palm = [
        (-31.0 * tissue_pad, 42.0),
        (-31.0 * tissue_pad, 20.0),
        (-37.0 * tissue_pad, -8.0),
        finger_point(5, 0.15, -1.0),
        web(5, 4),
        web(4, 3),
        web(3, 2),
        finger_point(2, 0.2, 1.0),
        tuple(mc1_web - perp(rays[1][0][2]) * 6.0 * tissue_pad),
        (37.0 * tissue_pad, 8.0),
        (30.0 * tissue_pad, 30.0),
        (29.0 * tissue_pad, 42.0),
    ]
    forearm = [(-31.0 * tissue_pad, 40.0), (29.0 * tissue_pad, 40.0), (36.0, 700.0), (-40.0, 700.0)]

    # Extent of the hand (without translation) to place it inside the image.
    key = [np.array(v) for v in palm] + [
        tips[r] + s * perp(rays[r][-1][2]) * 9.0 for r in tips for s in (-1.0, 1.0)
    ]
    key += [np.array([-34.0, _HAND_CUT_Y]), np.array([34.0, _HAND_CUT_Y])]
    margin = 0.03 * H
    for _ in range(3):
        T0 = _Similarity(px_per_mm, math.cos(angle), math.sin(angle))
        pts = np.array([T0.vec(k) for k in key])
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        fit = min((W - 2 * margin) / (hi[0] - lo[0]), (H - 2 * margin) / (hi[1] - lo[1]))
        if fit >= 1.0:
            break
        px_per_mm *= fit * 0.98
    tx = rng.uniform(margin - lo[0], max(W - margin - hi[0], margin - lo[0]))
    ty = rng.uniform(margin - lo[1], max(H - margin - hi[1], margin - lo[1]))
    T = _Similarity(px_per_mm, math.cos(angle), math.sin(angle), tx, ty)
    s = px_per_mm

    # ---- soft tissue -----------------------------------------------------------------
    tissue = _polygons(shape, [[T.pt(v) for v in poly] for poly in (palm, forearm)])
    for ray, placed in rays.items():
        # One rod per segment (fingers may bend at the joints), tapering toward the tip.
        segs = placed if ray == 1 else placed[1:]
        total = sum(seg[3] for seg in segs)
        hw_base, hw_tip = (h * tissue_pad for h in _FINGER_HW[ray])
        done = 0.0
        for k, (_, p, u, length) in enumerate(segs):
            last = k == len(segs) - 1
            a0 = 0.3 * length if (ray == 1 and k == 0) else -1.5
            b0 = float(np.linalg.norm(tips[ray] - p)) if last else length + 1.5
            hw = hw_base + (hw_tip - hw_base) * (done + length / 2) / total
            done += length
            rod = _Rod(
                T.pt(p),
                T.unit(u),
                b0 * s,
                a0 * s,
                b0 * s,
                1.0,
                hw * s if last else 0.6 * hw * s,
                hw * s,
                hw * s,
                hw * s,
                1.0,
                1.0,
            )
            _or_rod(tissue, rod)
    # Thenar eminence.
    _or_ellipse(tissue, T.pt((28.0, -8.0)), T.unit(_dir(35.0)), 30.0 * s, 13.0 * tissue_pad * s)

    cut_n = T.unit((0.0, 1.0))  # points toward the forearm
    cut_p = T.pt((0.0, _HAND_CUT_Y))
    xx = np.arange(W, dtype=np.float32)[None, :] - cut_p[0]
    yy = np.arange(H, dtype=np.float32)[:, None] - cut_p[1]
    hand = tissue & ((xx * cut_n[0] + yy * cut_n[1]) <= 0.0)

    # ---- bones -----------------------------------------------------------------------
    bone = np.zeros(shape, dtype=np.float32)
    r1 = np.zeros(shape, dtype=bool)
    r2 = np.zeros(shape, dtype=bool)

    for centre, w, h, tilt, onset in CARPALS.values():
        c = T.pt(np.array(centre) + rng.normal(0.0, 0.6, size=2))
        e = T.unit(_dir(tilt))  # long axis (height) direction
        _or_ellipse(r1, c, e, h / 2 * s, w / 2 * s)
        frac = carpal_size(m, onset + next(jit))
        if frac > 0.0:
            # Young nuclei are round; they take their adult shape as they grow.
            roundness = 1.0 - frac
            hh = (h * frac * (1 - roundness) + w * frac * roundness) / 2
            ww = w * frac / 2
            _add_ellipse_bone(bone, c, e, hh * s, ww * s)

    for fb in (_RADIUS, _ULNA):
        end, prox = np.array(fb["end"]), np.array(fb["prox"])
        length = float(np.linalg.norm(end - prox))
        u_c = (end - prox) / length
        hw_shaft, hw_meta = fb["hw"]
        thick, epi_hw, tilt = fb["epi"]
        st = physis_state(m, fb["onset"] + next(jit), fb["fuse"])
        e_epi = T.unit(perp(_rot(u_c, tilt)))
        _or_ellipse(r1, T.pt(end - u_c * thick / 2), e_epi, epi_hw * s, thick / 2 * s)
        if st.fused:
            tb, cb = length, thick * 0.6
        else:
            tb, cb = length - thick - st.gap_mm, 0.35
        rod = _Rod(
            T.pt(prox),
            T.unit(u_c),
            length * s,
            0.0,
            tb * s,
            1.0,
            cb * s,
            hw_shaft * wf * s,
            hw_shaft * wf * s,
            hw_meta * wf * s,
            1.0,
            fb["flare"] * s,
        )
        _add_rod_bone(bone, rod)
        if st.present and not st.fused:
            a = epi_hw * min(st.width, 1.0) * wf
            b = thick / 2 * (0.55 + 0.45 * min(st.width, 1.0))
            c_epi = end - u_c * (thick - b)
            _add_ellipse_bone(bone, T.pt(c_epi), e_epi, a * s, b * s, inner=0.8)

    for placed in rays.values():
        for spec, p, u, length in placed:
            uo = T.unit(u)
            p_out = T.pt(p)
            hw0, hwm, hw1 = (h * s for h in spec.hw)
            f0 = f1 = 0.22 * length * s
            cap0, cap1 = spec.cap
            full = _Rod(
                p_out, uo, length * s, 0.0, length * s, cap0 * s, cap1 * s, hw0, hwm, hw1, f0, f1
            )
            _or_rod(r2, full)

            st = physis_state(m, spec.onset + next(jit), spec.fuse)
            hw_epi_end = spec.hw[2] if spec.epi_at_head else spec.hw[0]
            epi_len = (0.9 if spec.epi_at_head else 0.55) * hw_epi_end
            cart = 2.0 * (1.0 - _ramp(m, 0.0, 12.0))  # cartilage at the non-epiphyseal end
            flat = 0.35  # a metaphysis next to an open physis ends flat
            if st.fused:
                ta, tb, ca, cb = 0.0, length, cap0, cap1
            elif spec.epi_at_head:
                ta, tb, ca, cb = cart, length - epi_len - st.gap_mm, cap0, flat
            else:
                ta, tb, ca, cb = epi_len + st.gap_mm, length - cart, flat, cap1
            rod = _Rod(
                p_out,
                uo,
                length * s,
                ta * s,
                tb * s,
                ca * s,
                cb * s,
                hw0 * wf,
                hwm * wf,
                hw1 * wf,
                f0,
                f1,
            )
            _add_rod_bone(bone, rod)
            if st.present and not st.fused:
                half_w = hw_epi_end * wf * st.width
                half_t = epi_len / 2 * (0.6 + 0.4 * min(st.width, 1.0))
                along = length - epi_len / 2 if spec.epi_at_head else epi_len / 2
                _add_ellipse_bone(
                    bone, T.pt(p + u * along), T.unit(perp(u)), half_w * s, half_t * s, inner=0.8
                )

    # ---- exposure ---------------------------------------------------------------------
    sig = max(0.5, 1.5 * s)
    soft = ndimage.gaussian_filter(tissue.astype(np.float32), sig, truncate=2.5)
    dome = ndimage.gaussian_filter(soft[::4, ::4], max(0.5, 5.0 * s / 4), truncate=2.5)
    dome = np.kron(dome, np.ones((4, 4), np.float32))[:H, :W]
    soft = soft * (0.75 + 0.25 * dome)
    tex = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), max(0.7, 0.6 * s), truncate=2.5
    )
    tex /= tex.std() + 1e-6
    bone_att = bone * (1.0 + 0.08 * tex)

    # Exposure. Every level (background, soft tissue, bone gain, gamma, window) is drawn
    # independently of age: only the bone pixels themselves change with maturity.
    bg = rng.uniform(0.0, 0.15)
    gx, gy = rng.normal(0.0, 0.04, size=2)  # uneven exposure (heel effect)
    ramp = gx * (np.arange(W, dtype=np.float32)[None, :] / W - 0.5) + gy * (
        np.arange(H, dtype=np.float32)[:, None] / H - 0.5
    )
    k_soft = rng.uniform(0.3, 0.45)
    k_bone = rng.uniform(0.9, 1.2)
    att = bg + ramp + k_soft * soft + k_bone * bone_att
    img = 1.0 - np.exp(-0.8 * np.clip(att, 0.0, None))
    img = img ** rng.uniform(0.75, 1.3)
    img = rng.uniform(0.8, 1.2) * img  # display window
    # Mean brightness: a random target, independent of age (the amount of bone, which grows
    # with age, would otherwise raise it slightly).
    img += rng.uniform(0.16, 0.3) - img.mean()

    hand_box = _box(hand)
    marker_box = _draw_marker(img, tissue, hand_box, rng)
    blur = rng.uniform(0.3, 0.9) * size / 512
    img = ndimage.gaussian_filter(img, blur, truncate=2.5)
    img = img + rng.normal(0.0, rng.uniform(0.004, 0.02), size=shape).astype(np.float32)
    u8 = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)

    boxes = {"hand": hand_box, "r1": _box(r1), "r2": _box(r2), "marker": marker_box}
    masks = {"hand": hand, "r1": r1, "r2": r2, "bone": bone > 0.05, "tissue": tissue}
    params = {"angle_deg": math.degrees(angle), "px_per_mm": s, "spread": spread}
    return RenderedHand(u8, m, boxes, masks, params)


def _rot(v: np.ndarray, deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, sn = math.cos(a), math.sin(a)
    return np.array([c * v[0] - sn * v[1], sn * v[0] + c * v[1]])


def _draw_marker(
    img: np.ndarray,
    tissue: np.ndarray,
    hand_box: tuple[int, int, int, int],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """Draw an "L" side marker in a random corner; return its box.

    Corners clear of the tissue (and of the hand box) are preferred; the marker never
    covers the hand unless no corner is free (not seen in practice).
    """
    H, W = img.shape
    h = max(5, int(round(H * rng.uniform(0.04, 0.06))))
    w = max(4, int(round(h * 0.65)))
    stroke = max(1, int(round(h * 0.18)))
    pad = int(round(H * rng.uniform(0.01, 0.04)))
    clear = max(1, H // 100)  # keep this many pixels away from the tissue
    hx0, hy0, hx1, hy1 = hand_box
    best: tuple[int, int, int, int] | None = None
    for corner in rng.permutation(4):
        y0 = pad if corner < 2 else H - pad - h
        x0 = pad if corner % 2 == 0 else W - pad - w
        near = tissue[max(y0 - clear, 0) : y0 + h + clear, max(x0 - clear, 0) : x0 + w + clear]
        in_box = max(0, min(x0 + w, hx1) - max(x0, hx0)) * max(0, min(y0 + h, hy1) - max(y0, hy0))
        score = (int(near.sum()), in_box, y0, x0)
        if best is None or score[:2] < best[:2]:
            best = score
        if score[:2] == (0, 0):
            break
    assert best is not None
    _, _, y0, x0 = best
    value = rng.uniform(0.85, 1.0)
    img[y0 : y0 + h, x0 : x0 + stroke] = value
    img[y0 + h - stroke : y0 + h, x0 : x0 + w] = value
    return x0, y0, x0 + w, y0 + h
