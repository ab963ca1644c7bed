"""Training the image-QC network (`boneage train-qc`) from an ingest's training split with
labels it makes itself: random quarter turns and inversions (self-supervised rotation and
inversion heads) and synthetic non-hand images (boneage.qc_negatives) for the hand head;
thresholds set on the validation split; then measured (boneage.qc_measure).
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from boneage.config import Params, QCConfig
from boneage.qc import QC_FORMAT, TRAIN_SIDE, QCModel, QCNet, prepare, save_qc
from boneage.qc_measure import assess_ids, measure_qc
from boneage.qc_negatives import NEGATIVE_KINDS, synthetic_negative


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
    val = assess_ids(model, store, val_ids)
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
