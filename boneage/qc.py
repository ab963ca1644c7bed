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

This module holds the network, the model as scoring and ingest use it, and `run_qc`;
training is boneage.qc_train, measuring boneage.qc_measure, the non-hand images
boneage.qc_negatives.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from boneage.config import IngestQCConfig
from boneage.rejects import Reason, RejectError

QC_FORMAT = "boneage-qc/1"
DEFAULT_QC_DIR = Path(__file__).resolve().with_name("qc_model")
TRAIN_SIDE = 80  # training images are kept at this side and resampled to img_size


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


# ----------------------------------------------------------------------------- training


# ----------------------------------------------------------------------------- measuring
