"""Image quality control (QC) before scoring and training, learned without annotations.

What it decides for one decoded image (2-D uint8, as ingest holds it):

1. **too_small** (rule): the shorter side is under `ingest.qc.min_side` px, or the long
   side is more than `ingest.qc.max_aspect` times the short one → rejected.
2. **orientation and inversion** (network): a small CNN predicts by how many quarter
   turns the image is rotated from upright (0/90/180/270) and whether its grey levels are
   inverted (bone dark, background white). A confident prediction is corrected — the
   image is turned back / inverted back — and the row is flagged `auto_rotated_90|180|270`
   (the clockwise turn QC applied) and/or `auto_inverted`. When the rotation head's top
   probability is under its threshold the image is flagged `orientation_uncertain` (still
   scored: real radiographs with a tilted film or a small hand do this; rejecting them
   cost 2 of the 12 full-resolution RSNA originals).
3. **not_a_hand** (network, on the corrected image): rejected when the hand head's
   probability is under its threshold, or when the image's features lie farther from the
   training radiographs' than its threshold (Mahalanobis distance of the pooled features
   to their mean and covariance over the training images).

How it is learned (`train_qc`, `boneage train-qc`): from the images of an ingest — the
training split — with labels it makes itself: each image is turned by a random number of
quarter turns and inverted with probability 1/2 (self-supervised rotation and inversion
heads), and mixed with synthetic non-hand images (noise, gradients, shapes, gratings,
text-like blocks, patch-shuffled radiographs) for the hand head. No annotation is used.
Thresholds are set on the validation split: each reject signal may reject (and the
orientation signal flag) at most `qc.target_false_reject` of the validation radiographs.
`train_qc` then measures, on the test split, the false-reject rate and the catch rate
on a generated corpus of rotated, inverted, non-hand and tiny images, and writes them to
metrics.json.

The network is deliberately small (five 3×3 conv layers at 64 px, ~0.1 M parameters,
weights stored in fp16: ~0.2 MB) so that it adds ~1 ms per image and trains on a CPU in
minutes. The one shipped with the package lives in `boneage/qc_model/` (DEFAULT_QC_DIR).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from boneage.config import IngestQCConfig, Params, QCConfig
from boneage.rejects import Reason, RejectError

QC_FORMAT = "boneage-qc/1"
DEFAULT_QC_DIR = Path(__file__).resolve().with_name("qc_model")
TRAIN_SIDE = 80  # training images are kept at this side and resampled to img_size
NEGATIVE_KINDS = ("noise", "smooth_noise", "gradient", "radial", "shapes", "grating",
                  "checker", "blobs", "text", "shuffled")  # fmt: skip


# ----------------------------------------------------------------------------- network


class QCNet(nn.Module):
    """Conv(3×3)-BN-ReLU blocks (the first with stride 2, 2×2 max pooling between the
    others; 64 px in → a 4×4 map for five blocks); features = global
    average + 2×2 average of the last map; heads: rotation (4), inversion (1), hand (1).
    Buffers hold the training images' feature mean and precision (Mahalanobis)."""

    def __init__(self, channels: Iterable[int] = (16, 32, 48, 64, 96)):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        layers: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True)]  # fmt: skip
            if 0 < i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.channels = channels
        self.features = nn.Sequential(*layers)
        n = c_in * 5
        self.rot = nn.Linear(n, 4)
        self.inv = nn.Linear(n, 1)
        self.hand = nn.Linear(n, 1)
        self.register_buffer("feat_mean", torch.zeros(c_in))
        self.register_buffer("feat_prec", torch.eye(c_in))

    def forward(self, x: torch.Tensor):
        """x: N×1×S×S in [0, 1] → (pooled features, rotation logits, inversion logit,
        hand logit)."""
        m = self.features(x * 2.0 - 1.0)
        g = m.mean((2, 3))
        z = torch.cat([g, F.adaptive_avg_pool2d(m, 2).flatten(1)], 1)
        return g, self.rot(z), self.inv(z).squeeze(1), self.hand(z).squeeze(1)

    def distance(self, g: torch.Tensor) -> torch.Tensor:
        d = g - self.feat_mean
        return torch.sqrt(((d @ self.feat_prec) * d).sum(1).clamp_min(0))


def prepare(pixels: np.ndarray, size: int) -> np.ndarray:
    """2-D uint8 image → size×size float32 in [0, 1]: long side resized to `size`,
    grey levels stretched between the 1st and 99th percentile, letterboxed with 0."""
    h, w = pixels.shape
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    img = Image.fromarray(np.ascontiguousarray(pixels))
    a = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=2.0),
                   dtype=np.float32)  # fmt: skip
    lo, hi = np.percentile(a, [1, 99])
    a = np.clip((a - lo) / max(float(hi - lo), 1.0), 0.0, 1.0)
    out = np.zeros((size, size), np.float32)
    y0, x0 = (size - nh) // 2, (size - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = a
    return out


# ----------------------------------------------------------------------------- the model


@dataclass
class QCModel:
    net: QCNet
    meta: dict
    root: Path

    @property
    def size(self) -> int:
        return int(self.meta["img_size"])

    @property
    def thresholds(self) -> dict:
        return self.meta["thresholds"]

    @torch.inference_mode()
    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if mp.parent_process() is not None and torch.get_num_threads() != 1:
            torch.set_num_threads(1)  # an ingest pool worker: one thread each
        x = torch.from_numpy(batch).unsqueeze(1)
        g, rot, inv, hand = self.net(x)
        return {
            "p_rot": torch.softmax(rot, 1).numpy(),
            "p_inv": torch.sigmoid(inv).numpy(),
            "p_hand": torch.sigmoid(hand).numpy(),
            "distance": self.net.distance(g).numpy(),
        }

    def assess_many(self, images: list[np.ndarray]) -> list[QCVerdict]:
        """The QC verdict of each 2-D uint8 image (size rules are the caller's)."""
        if not images:
            return []
        t = self.thresholds
        first = self._run(np.stack([prepare(p, self.size) for p in images]))
        fixed, turns, inverted = [], [], []
        for i, px in enumerate(images):
            k = int(first["p_rot"][i].argmax())
            turn = k if k and first["p_rot"][i, k] >= t["correct_prob"] else 0
            inv = bool(first["p_inv"][i] >= t["correct_prob"])
            fixed.append(correct(px, turn, inv))
            turns.append(turn)
            inverted.append(inv)
        second = self._run(np.stack([prepare(p, self.size) for p in fixed]))
        out = []
        for i in range(len(images)):
            p_hand, dist = float(second["p_hand"][i]), float(second["distance"][i])
            flags = []
            if inverted[i]:
                flags.append("auto_inverted")
            if turns[i]:
                flags.append(f"auto_rotated_{90 * turns[i]}")
            if float(first["p_rot"][i].max()) < t.get("orientation_prob", 0.0):
                flags.append("orientation_uncertain")  # scored, but worth a look
            reject = None
            if p_hand < t["hand_prob"]:
                reject = (f"not a hand radiograph (QC hand score {p_hand:.3f} < "
                          f"{t['hand_prob']:.3f})")  # fmt: skip
            elif dist > t["distance"]:
                reject = (f"not like the hand radiographs QC was trained on (feature "
                          f"distance {dist:.1f} > {t['distance']:.1f})")  # fmt: skip
            out.append(QCVerdict(fixed[i], tuple(flags), turns[i], inverted[i], p_hand, dist,
                                 reject, float(first["p_rot"][i].max()),
                                 float(first["p_inv"][i])))  # fmt: skip
        return out

    def assess(self, pixels: np.ndarray) -> QCVerdict:
        return self.assess_many([pixels])[0]


@dataclass(frozen=True)
class QCVerdict:
    pixels: np.ndarray  # the corrected image (the input when nothing was corrected)
    flags: tuple[str, ...]  # auto_inverted, auto_rotated_90/180/270, orientation_uncertain
    turns: int  # quarter turns the input was found rotated counter-clockwise (0-3)
    inverted: bool
    hand_prob: float
    distance: float
    reject: str | None  # why it is not a hand, or None
    rot_prob: float  # first pass: probability of the predicted orientation
    inv_prob: float  # first pass: probability that the grey levels are inverted


def correct(pixels: np.ndarray, turns: int, inverted: bool) -> np.ndarray:
    """Undo `turns` counter-clockwise quarter turns (np.rot90 sense) and an inversion."""
    out = pixels
    if inverted:
        out = 255 - out
    if turns:
        out = np.rot90(out, -turns)
    return np.ascontiguousarray(out)


def size_problem(height: int, width: int, cfg: IngestQCConfig) -> str | None:
    short, long = min(height, width), max(height, width)
    if short < cfg.min_side:
        return f"{width}x{height} px: the shorter side is under min_side={cfg.min_side} px"
    if long > cfg.max_aspect * short:
        return (f"{width}x{height} px: long/short side {long / short:.1f} is over "
                f"max_aspect={cfg.max_aspect:g}")  # fmt: skip
    return None


def qc_dir(model: str | Path) -> Path:
    return DEFAULT_QC_DIR if str(model) == "default" else Path(model)


class QCModelError(ValueError):
    """The QC model cannot be loaded (missing, another format, refused weights)."""


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> QCModel:
    root = Path(path)
    try:
        meta = json.loads((root / "config.json").read_text())
        if meta.get("format") != QC_FORMAT:
            raise QCModelError(f"QC model format {meta.get('format')!r}, expected {QC_FORMAT}")
        net = QCNet(meta["channels"])
        state = torch.load(root / "model.pt", map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() for k, v in state.items()})
        float(meta["thresholds"]["hand_prob"]), float(meta["thresholds"]["distance"])
    except Exception as exc:  # noqa: BLE001 - unpickling refused, bad JSON, wrong shapes
        msg = " ".join(str(exc).split())[:300]
        raise QCModelError(f"{root}: cannot load the QC model ({type(exc).__name__}: {msg})"
                           ) from exc  # fmt: skip
    net.eval()
    return QCModel(net, meta, root)


def load_qc(model: str | Path = "default") -> QCModel:
    """The QC model of a directory (model.pt + config.json), loaded once per process.
    Raises QCModelError."""
    root = qc_dir(model).resolve()
    if not (root / "config.json").is_file() or not (root / "model.pt").is_file():
        raise QCModelError(f"{root}: no QC model (model.pt + config.json); "
                           "train one with `boneage train-qc`")  # fmt: skip
    return _load(str(root), (root / "model.pt").stat().st_mtime)


def run_qc(pixels: np.ndarray, cfg: IngestQCConfig) -> QCVerdict:
    """Size rules, then the network. Raises RejectError(TOO_SMALL / NOT_A_HAND); returns
    the verdict with the (possibly corrected) image otherwise."""
    problem = size_problem(*pixels.shape, cfg)
    if problem:
        raise RejectError(Reason.TOO_SMALL, problem)
    verdict = load_qc(cfg.model).assess(pixels)
    if verdict.reject:
        raise RejectError(Reason.NOT_A_HAND, verdict.reject)
    return verdict


def save_qc(net: QCNet, out: Path, meta: dict) -> None:
    """model.pt (weights in fp16, buffers in fp32) + config.json."""
    out.mkdir(parents=True, exist_ok=True)
    buffers = {"feat_mean", "feat_prec"}
    state = {k: (v.half() if v.is_floating_point() and k not in buffers else v).cpu()
             for k, v in net.state_dict().items()}  # fmt: skip
    torch.save(state, out / "model.pt")
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


# ----------------------------------------------------------------------------- negatives


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


# ----------------------------------------------------------------------------- training


def _nuisances(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """What radiographs carry besides the hand, drawn on hands and non-hands alike: bright
    markers/labels (p 0.35) and a bright frame around a darker field (p 0.1)."""
    n, _, h, w = x.shape
    x = x.clone()
    r = torch.rand((n, 8), generator=g)
    for i in range(n):
        if r[i, 0] < 0.35:
            bw, bh = int(4 + r[i, 1] * w * 0.2), int(4 + r[i, 2] * h * 0.2)
            x0, y0 = int(r[i, 3] * (w - bw)), int(r[i, 4] * (h - bh))
            x[i, :, y0 : y0 + bh, x0 : x0 + bw] = 0.85 + 0.15 * r[i, 5]
        if r[i, 6] < 0.1:
            m = int(2 + r[i, 7] * w * 0.2)
            frame = torch.ones_like(x[i]) * (0.6 + 0.4 * r[i, 5])
            frame[:, m : h - m, m : w - m] = x[i, :, m : h - m, m : w - m] * 0.8
            x[i] = frame
    return x


def _augment(x: torch.Tensor, turns: torch.Tensor, inv: torch.Tensor, size: int,
             g: torch.Generator) -> torch.Tensor:  # fmt: skip
    """Markers/frames → grey-level jitter (including strongly compressed contrast, as in
    faint radiographs) → inversion → quarter turns → a random affine map into a size×size
    output whose outside is 0 (as letterboxing pads at inference)."""
    n = x.shape[0]

    def u(lo: float, hi: float, shape=(n,)) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    x = _nuisances(x, g)
    gamma = torch.exp(u(math.log(0.6), math.log(1.6)))[:, None, None, None]
    x = x.clamp(1e-4, 1.0) ** gamma
    c, b = u(0.3, 1.2)[:, None, None, None], u(-0.1, 0.1)[:, None, None, None]
    x = ((x - 0.5) * c + 0.5 + b).clamp(0, 1)
    x = torch.where(inv[:, None, None, None], 1.0 - x, x)
    for k in (1, 2, 3):
        m = turns == k
        if m.any():
            x[m] = torch.rot90(x[m], k, (2, 3))
    ang = u(-25, 25) * math.pi / 180
    scale = u(0.75, 1.05)
    squeeze = u(0.62, 1.0)
    on_x = torch.rand(n, generator=g) < 0.5
    ax = torch.where(on_x, squeeze, torch.ones(n))
    ay = torch.where(on_x, torch.ones(n), squeeze)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos / (scale * ax)
    theta[:, 0, 1] = -sin / (scale * ay)
    theta[:, 1, 0] = sin / (scale * ax)
    theta[:, 1, 1] = cos / (scale * ay)
    theta[:, :, 2] = u(-0.1, 0.1, (n, 2))
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x + torch.randn(x.shape, generator=g) * u(0, 0.03)[:, None, None, None]
    return x.clamp(0, 1)


def _load_split(store, manifest: pd.DataFrame, split: str, side: int,
                max_images: int | None, seed: int) -> tuple[list[str], np.ndarray]:  # fmt: skip
    ids = sorted(manifest.loc[manifest["split"] == split, "id"].astype(str))
    if max_images is not None and len(ids) > max_images:
        rng = np.random.default_rng(seed)
        ids = sorted(rng.choice(ids, max_images, replace=False).tolist())
    arr = np.zeros((len(ids), side, side), np.uint8)
    for k, img in enumerate(store.iter_images(ids)):
        arr[k] = np.rint(prepare(img.pixels, side) * 255).astype(np.uint8)
    return ids, arr


def _negatives(n: int, rng: np.random.Generator, hands: np.ndarray, side: int) -> np.ndarray:
    out = np.zeros((n, side, side), np.float32)
    for i in range(n):
        kind = NEGATIVE_KINDS[rng.integers(len(NEGATIVE_KINDS))]
        hand = (
            hands[rng.integers(len(hands))].astype(np.float32) / 255 if kind == "shuffled" else None
        )
        out[i] = synthetic_negative(kind, rng, side, hand)
    return out


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half."""
    from scipy.stats import rankdata

    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    r = rankdata(np.concatenate([pos, neg]))
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def foreground_evidence(pixels: np.ndarray, size: int = 64) -> float:
    """A hand-presence signal without learning (compared against the learned ones in
    metrics.json): the Otsu foreground of the downscaled image should be one large
    object covering a plausible share of the image. Share of the foreground in its
    largest component, 0 when the foreground covers <5 % or >80 % of the image."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    a = prepare(pixels, size)
    if a.max() <= a.min():
        return 0.0
    fg = a > threshold_otsu(a)
    frac = fg.mean()
    if not 0.05 <= frac <= 0.8:
        return 0.0
    lab, n = ndimage.label(fg)
    if n == 0:
        return 0.0
    sizes = np.bincount(lab.ravel())[1:]
    return float(sizes.max() / sizes.sum())


def train_qc(params: Params, ingest_dir: Path, out: Path, progress: bool = False,
             log: Callable[[str], None] = lambda s: None) -> dict:  # fmt: skip
    """Train the QC network on the ingest's training split, set its thresholds on the
    validation split, measure it on the test split and the generated corpus; writes
    model.pt, config.json and metrics.json to `out`. Returns the metrics."""
    from boneage.localizer import read_manifest
    from boneage.store import ImageStore

    cfg: QCConfig = params.qc
    tc = cfg.train
    t0 = time.perf_counter()
    ingest_dir, out = Path(ingest_dir), Path(out)
    manifest = read_manifest(ingest_dir / "manifest.parquet")
    store = ImageStore(ingest_dir / "store")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    train_ids, hands = _load_split(store, manifest, "train", TRAIN_SIDE, tc.max_images, tc.seed)
    if len(train_ids) < 8:
        raise ValueError(f"{ingest_dir}: {len(train_ids)} training images; QC needs at least 8")
    val_ids = sorted(manifest.loc[manifest["split"] == "val", "id"].astype(str))
    if not val_ids:
        raise ValueError(f"{ingest_dir}: no validation images to set the QC thresholds on")
    log(f"qc: {len(train_ids)} training images loaded ({time.perf_counter() - t0:.0f}s)")

    net = QCNet(cfg.channels)
    n_neg = max(1, round(tc.batch_size * tc.negative_frac))
    n_pos = tc.batch_size - n_neg
    steps_per_epoch = max(1, math.ceil(len(train_ids) / n_pos))
    total = steps_per_epoch * tc.epochs
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tc.lr, total_steps=total,
                                                pct_start=0.15)  # fmt: skip
    g = torch.Generator().manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    hands_t = torch.from_numpy(hands)
    # a pool of synthetic non-hands, drawn once; every use gets its own random quarter
    # turns, inversion and affine map
    pool = torch.from_numpy(_negatives(max(1000, len(train_ids) // 2), rng, hands, TRAIN_SIDE))
    history = []
    from tqdm import tqdm

    bar = tqdm(total=total, desc="train-qc", disable=not progress, file=sys.stderr)
    for epoch in range(tc.epochs):
        net.train()
        perm = torch.randperm(len(train_ids), generator=g)
        sums = np.zeros(4)
        for s in range(steps_per_epoch):
            idx = perm[s * n_pos : (s + 1) * n_pos]
            if len(idx) == 0:
                idx = perm[:n_pos]
            pos = hands_t[idx].float().div(255).unsqueeze(1)
            neg = pool[torch.randint(0, len(pool), (n_neg,), generator=g)].unsqueeze(1)
            x = torch.cat([pos, neg])
            n = x.shape[0]
            turns = torch.randint(0, 4, (n,), generator=g)
            inv = torch.rand(n, generator=g) < 0.5
            x = _augment(x, turns, inv, cfg.img_size, g)
            is_hand = torch.zeros(n)
            is_hand[: len(idx)] = 1
            _, rot, invl, handl = net(x)
            p = slice(0, len(idx))
            l_rot = F.cross_entropy(rot[p], turns[p])
            l_inv = F.binary_cross_entropy_with_logits(invl[p], inv[p].float())
            l_hand = F.binary_cross_entropy_with_logits(handl, is_hand)
            loss = l_rot + l_inv + l_hand
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums += [loss.item(), l_rot.item(), l_inv.item(), l_hand.item()]
            bar.update()
        m = sums / steps_per_epoch
        history.append({"epoch": epoch + 1, "loss": m[0], "rotation": m[1], "inversion": m[2],
                        "hand": m[3]})  # fmt: skip
        log(f"qc epoch {epoch + 1}/{tc.epochs}: loss {m[0]:.4f} (rotation {m[1]:.4f}, "
            f"inversion {m[2]:.4f}, hand {m[3]:.4f}) {time.perf_counter() - t0:.0f}s")  # fmt: skip
    bar.close()
    net.eval()
    train_seconds = time.perf_counter() - t0

    # Mahalanobis statistics of the upright training images (as inference prepares them)
    feats = []
    with torch.inference_mode():
        for i in range(0, len(train_ids), 256):
            ids = train_ids[i : i + 256]
            x = np.stack([prepare(img.pixels, cfg.img_size) for img in store.iter_images(ids)])
            feats.append(net(torch.from_numpy(x).unsqueeze(1))[0])
    f = torch.cat(feats).double()
    mu = f.mean(0)
    cov = torch.cov(f.T)
    cov = cov + 1e-3 * torch.trace(cov) / cov.shape[0] * torch.eye(cov.shape[0], dtype=cov.dtype)
    net.feat_mean.copy_(mu.float())
    net.feat_prec.copy_(torch.linalg.inv(cov).float())

    meta = {
        "format": QC_FORMAT, "kind": "qc", "img_size": cfg.img_size,
        "channels": list(cfg.channels),
        "n_parameters": int(sum(p.numel() for p in net.parameters())),
        "thresholds": {"correct_prob": cfg.min_correct_prob, "orientation_prob": 0.0,
                       "hand_prob": 0.0, "distance": float("inf")},
        "trained_on": {"ingest": str(ingest_dir), "split": "train", "n": len(train_ids)},
        "train": tc.model_dump(), "history": history,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }  # fmt: skip
    model = QCModel(net, meta, out)

    # thresholds on the validation split: each reject signal at target_false_reject
    val = _verdicts(model, store, val_ids)
    q = cfg.target_false_reject
    rot_t = float(np.quantile([v.rot_prob for v in val], q))
    hand_t = float(np.quantile([v.hand_prob for v in val], q))
    dist_t = float(np.quantile([v.distance for v in val], 1 - q))
    meta["thresholds"].update(orientation_prob=rot_t, hand_prob=hand_t, distance=dist_t)
    meta["thresholds_set_on"] = {"split": "val", "n": len(val_ids), "target_false_reject": q}
    save_qc(net, out, meta)
    log(f"qc thresholds (val, n={len(val_ids)}): orientation certainty >= {rot_t:.4f} (else "
        f"flagged), hand score >= {hand_t:.4f}, feature distance <= {dist_t:.2f}")  # fmt: skip
    return measure_qc(params, ingest_dir, out, {"train_seconds": round(train_seconds, 1)}, t0)


def measure_qc(params: Params, ingest_dir: Path, out: Path, extra: dict | None = None,
               t0: float | None = None) -> dict:  # fmt: skip
    """Measure the QC model in `out` on the ingest's validation and test splits and the
    generated corpus; (re)writes out/metrics.json and returns it. `boneage train-qc
    --measure-only` runs this alone (thresholds unchanged)."""
    from boneage.localizer import read_manifest
    from boneage.store import ImageStore

    t0 = time.perf_counter() if t0 is None else t0
    ingest_dir, out = Path(ingest_dir), Path(out)
    manifest = read_manifest(ingest_dir / "manifest.parquet")
    store = ImageStore(ingest_dir / "store")
    model = load_qc(out)
    seed = params.qc.train.seed
    val_ids = sorted(manifest.loc[manifest["split"] == "val", "id"].astype(str))
    metrics = {
        **(extra or {}),
        "weights_bytes": (out / "model.pt").stat().st_size,
        "n_parameters": model.meta["n_parameters"],
        "thresholds": model.thresholds,
        "val": _rates(_verdicts(model, store, val_ids), len(val_ids)),
        "signals_val": _signal_comparison(model, store, val_ids, seed + 1000),
    }
    test_ids = sorted(manifest.loc[manifest["split"] == "test", "id"].astype(str))
    if test_ids:
        metrics["test"] = measure(model, store, test_ids, params.ingest.qc, seed=seed + 2000)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _verdicts(model: QCModel, store, ids: list[str], batch: int = 256) -> list[QCVerdict]:
    out: list[QCVerdict] = []
    for i in range(0, len(ids), batch):
        out += model.assess_many([img.pixels for img in store.iter_images(ids[i : i + batch])])
    return out


def _corrections(v: QCVerdict) -> tuple[str, ...]:
    return tuple(f for f in v.flags if f.startswith("auto_"))


def _rates(verdicts: list[QCVerdict], n: int) -> dict:
    rejected = sum(v.reject is not None for v in verdicts)
    corrected = sum(bool(_corrections(v)) for v in verdicts if not v.reject)
    uncertain = sum("orientation_uncertain" in v.flags for v in verdicts if not v.reject)
    return {
        "n": n,
        "rejected": rejected,
        "false_reject_rate": rejected / max(n, 1),
        "corrected": corrected,
        "correction_rate": corrected / max(n, 1),
        "orientation_uncertain": uncertain,
    }


# ----------------------------------------------------------------------------- measuring


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


def outcome(pixels: np.ndarray, model: QCModel, cfg: IngestQCConfig) -> str:
    """What QC does with one image: 'too_small', 'not_a_hand', 'ok' or the corrections
    joined by '+' (sorted; the orientation_uncertain flag is not a correction)."""
    if size_problem(*pixels.shape, cfg):
        return "too_small"
    v = model.assess(pixels)
    if v.reject:
        return "not_a_hand"
    return "+".join(sorted(_corrections(v))) or "ok"


def measure(model: QCModel, store, test_ids: list[str], cfg: IngestQCConfig,
            seed: int = 0, corpus_hands: int = 300) -> dict:  # fmt: skip
    """False-reject (and correction) rate on the test radiographs and the catch rate per
    kind on the corpus generated from `corpus_hands` of them that QC leaves untouched."""
    verdicts = _verdicts(model, store, test_ids)
    rejected = [i for i, v in zip(test_ids, verdicts, strict=True) if v.reject]
    corrected = [(i, "+".join(_corrections(v))) for i, v in zip(test_ids, verdicts, strict=True)
                 if _corrections(v) and not v.reject]  # fmt: skip
    uncertain = [i for i, v in zip(test_ids, verdicts, strict=True)
                 if "orientation_uncertain" in v.flags and not v.reject]  # fmt: skip
    small = [i for i in test_ids if size_problem(*store.get(i).pixels.shape, cfg)]
    # the corpus is made from radiographs QC finds upright and normal (the RSNA set holds
    # a few sideways ones: turning those "90°" does not give a known expected outcome)
    upright = [i for i, v in zip(test_ids, verdicts, strict=True) if not v.reject
               and not _corrections(v)]  # fmt: skip
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(upright, min(corpus_hands, len(upright)), replace=False).tolist())
    hands = {i: store.get(i).pixels for i in pick}
    per_kind: dict[str, dict] = {}
    misses = []
    for kind, name, px, expected in corpus(hands, seed):
        got = outcome(px, model, cfg)
        # a non-hand is caught by any rejection; a turned/inverted hand by its correction
        # or, failing that, a rejection (it is not scored wrongly)
        caught = got == expected or (expected != "too_small" and got in ("not_a_hand", "too_small"))
        k = per_kind.setdefault(kind, {"n": 0, "expected_outcome": 0, "caught": 0})
        k["n"] += 1
        k["expected_outcome"] += got == expected
        k["caught"] += caught
        if not caught:
            misses.append({"kind": kind, "name": name, "expected": expected, "got": got})
    for k in per_kind.values():
        k["catch_rate"] = k["caught"] / k["n"]
    n_all = sum(k["n"] for k in per_kind.values())
    return {
        "n": len(test_ids),
        "false_reject_rate": (len(rejected) + len(small)) / max(len(test_ids), 1),
        "rejected": rejected + small,
        "correction_rate": len(corrected) / max(len(test_ids), 1),
        "corrected": corrected,
        "orientation_uncertain": uncertain,
        "corpus": {
            "n": n_all,
            "catch_rate": sum(k["caught"] for k in per_kind.values()) / max(n_all, 1),
            "expected_outcome_rate": sum(k["expected_outcome"] for k in per_kind.values())
            / max(n_all, 1),
            "per_kind": per_kind,
            "misses": misses[:50],
        },
    }


def _signal_comparison(model: QCModel, store, val_ids: list[str], seed: int) -> dict:
    """AUROC of each hand-presence signal: the validation radiographs against non-hand
    images not seen in training (synthetic kinds drawn with another seed, and the
    scikit-image photos). Higher separates better."""
    rng = np.random.default_rng(seed)
    ids = val_ids[:400]
    pos = [img.pixels for img in store.iter_images(ids)]
    neg = []
    for k in range(200):
        kind = NEGATIVE_KINDS[k % (len(NEGATIVE_KINDS) - 1)]
        neg.append((synthetic_negative(kind, rng, 256) * 255).astype(np.uint8))
    for px in photo_negatives().values():
        neg += [np.ascontiguousarray(np.rot90(px, t)) for t in range(4)]
    vp, vn = model.assess_many(pos), model.assess_many(neg)
    fp = [foreground_evidence(p) for p in pos]
    fn = [foreground_evidence(p) for p in neg]
    hp = np.array([v.hand_prob for v in vp])
    hn = np.array([v.hand_prob for v in vn])
    dp = np.array([v.distance for v in vp])
    dn = np.array([v.distance for v in vn])

    def combined(h, d):
        return np.minimum(h / max(model.thresholds["hand_prob"], 1e-6),
                          model.thresholds["distance"] / np.maximum(d, 1e-6))  # fmt: skip

    return {
        "n_hands": len(pos),
        "n_non_hands": len(neg),
        "auroc": {
            "hand_head_vs_synthetic_negatives": auroc(hp, hn),
            "feature_distance_mahalanobis": auroc(-dp, -dn),
            "foreground_evidence_otsu": auroc(np.array(fp), np.array(fn)),
            "rotation_head_certainty": auroc(
                np.array([v.rot_prob for v in vp]), np.array([v.rot_prob for v in vn])
            ),  # fmt: skip
            "hand_head_and_distance": auroc(combined(hp, dp), combined(hn, dn)),
        },
        "non_hands_caught_at_thresholds": {
            "hand_head": float((hn < model.thresholds["hand_prob"]).mean()),
            "feature_distance": float((dn > model.thresholds["distance"]).mean()),
            "either": float(
                ((hn < model.thresholds["hand_prob"]) | (dn > model.thresholds["distance"])).mean()
            ),  # fmt: skip
        },
    }
