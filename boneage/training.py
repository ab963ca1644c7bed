"""Training infrastructure shared by the localizers and the aggregator.

Images are decoded once into a uint8 tensor at training resolution (never re-decoded per
step); batches are moved to the device, augmented there, and trained with the label
distribution loss. bf16 autocast + channels_last on CUDA; deterministic seeds; early
stopping on validation MAE; best checkpoint + config JSON written to the model dir.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from boneage import distributed
from boneage.augment import augment, hide_patches
from boneage.checkpoint import fit_fingerprint, resume_checkpoint, save_checkpoint
from boneage.compaction import expand_state
from boneage.config import AugmentConfig, ModelConfig, TrainConfig
from boneage.ldl import expectation, ldl_loss
from boneage.models import AgeNet
from boneage.precision import autocast, resolve_device, to_input
from boneage.tracking import Tracker


@dataclass
class TensorData:
    """Decoded images at training resolution + targets, all in host memory."""

    ids: list[str]
    x: torch.Tensor  # uint8 [N, C, S, S]
    age: torch.Tensor  # float32 [N] months (NaN when unknown)
    sex: torch.Tensor  # float32 [N]: 1 male, 0 female, 0.5 unknown

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, n: int | None, seed: int) -> TensorData:
        if n is None or n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        t = torch.from_numpy(idx)
        return TensorData([self.ids[i] for i in idx], self.x[t], self.age[t], self.sex[t])


@dataclass
class FitResult:
    best_val_mae: float
    best_epoch: int
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    train_images_per_second: float = 0.0  # this process's (one rank's) throughput
    samples_seen: int = 0  # by this rank, all epochs
    last_epoch_indices: list[int] = field(default_factory=list)  # this rank's, last epoch


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def sex_code(values) -> np.ndarray:
    """'M' → 1, 'F' → 0, anything else → 0.5."""
    return np.array([{"M": 1.0, "F": 0.0}.get(str(v), 0.5) for v in values], dtype=np.float32)


@torch.no_grad()
def predict(
    model: AgeNet, data: TensorData, device: torch.device, batch_size: int = 64,
    amp: str | bool = "auto", channels_last: bool = True, tta_shift: float = 0.0,
) -> torch.Tensor:  # fmt: skip
    """Age distributions [N, K] (float32, on CPU) for every image of `data`.

    `tta_shift` > 0: test-time augmentation — each image is also seen shifted by that
    fraction of its side left, right, up and down (5 views; pixels shifted in are black,
    like the letterbox) and the 5 distributions are averaged."""
    model.eval()
    out = []
    for i in range(0, len(data), batch_size):
        xb = to_input(data.x[i : i + batch_size], device, channels_last)
        sb = data.sex[i : i + batch_size].to(device)
        views = tta_views(xb, tta_shift) if tta_shift else [xb]
        p = 0.0
        for v in views:
            with autocast(device, amp):
                logits = model(v, sb)
            p = p + torch.softmax(logits.float(), dim=1)
        out.append((p / len(views)).cpu())
    return torch.cat(out) if out else torch.empty(0, model.cfg.k)


def tta_views(x: torch.Tensor, shift: float) -> list[torch.Tensor]:
    """x [B, C, H, W] and its copies shifted by round(shift × side) pixels right, left,
    down and up, zero-filled (at least one pixel)."""
    h, w = x.shape[-2:]
    dx, dy = max(1, round(shift * w)), max(1, round(shift * h))
    views = [x]
    for d, dim in ((dx, 3), (-dx, 3), (dy, 2), (-dy, 2)):
        v = torch.zeros_like(x)
        n = x.shape[dim]
        src = x.narrow(dim, 0, n - abs(d)) if d > 0 else x.narrow(dim, abs(d), n - abs(d))
        v.narrow(dim, d if d > 0 else 0, n - abs(d)).copy_(src)
        views.append(v)
    return views


def resize_batch(x: torch.Tensor, size: int, channels_last: bool) -> torch.Tensor:
    """A float batch [B, C, H, W] resized (bilinear, antialiased) to size × size, as
    progressive resizing trains its early epochs; unchanged when already that size."""
    if x.shape[-2:] == (size, size):
        return x
    x = torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)  # fmt: skip
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def mae(p: torch.Tensor, age: torch.Tensor) -> float:
    return float((expectation(p) - age).abs().mean()) if len(age) else math.nan


def train_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
    sb: torch.Tensor, cfg: TrainConfig, device: torch.device,
) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """One optimizer step on a batch already on the device: forward (bf16 autocast on
    CUDA), label-distribution loss, backward, step. Returns (loss, its parts)."""
    with autocast(device, cfg.amp):
        logits = model(xb, sb)
    loss, parts = ldl_loss(logits.float(), yb, cfg.sigma, cfg.lam)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, parts


def fit(
    model: AgeNet,
    train: TensorData,
    val: TensorData,
    cfg: TrainConfig,
    aug: AugmentConfig | None,
    tracker: Tracker | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    hide: tuple[int, float] = (0, 0.0),
    checkpoint: Path | None = None,
) -> FitResult:
    """Train with early stopping on val MAE; leaves the BEST weights loaded in `model`.

    With `cfg.ema` > 0 the weights validated, kept as best and left in `model` are an
    exponential moving average of the trained weights (decay `cfg.ema`).

    `checkpoint`: a file written after every epoch (model, optimizer, schedule, EMA, random
    generators, early-stopping state). If it exists when `fit` starts and was written for
    the same settings and data sizes, training continues after its last finished epoch and
    ends exactly as an uninterrupted run would (same order, augmentation and dropout
    draws). The caller removes it once the result is saved."""
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = distributed.setup(resolve_device(cfg.device))
    rank, world = distributed.rank(), distributed.world_size()
    progress = progress and rank == 0
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    step_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)  # fmt: skip
    if cfg.compile and device.type == "cuda":
        step_model = torch.compile(step_model)
    ema = _ema_model(model, cfg.ema)
    gen = torch.Generator().manual_seed(cfg.seed)
    # single process: one generator for order and augmentation (bitwise as before); DDP:
    # the order from the shared seed, augmentation per rank
    aug_gen = gen if world == 1 else torch.Generator().manual_seed(cfg.seed + 1 + rank)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_mine = len(range(rank, len(train), world))  # this rank's share of every epoch
    steps_per_epoch = max(1, math.ceil(n_mine / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    warm = max(1, int(total * cfg.warmup_frac))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    x_src = _training_images(train.x, device, cfg.data_on_device_max_frac)
    evaluated = ema.module if ema is not None else model
    state = {"epoch": 0, "best": math.inf, "best_epoch": -1, "bad": 0, "history": [],
             "seen": 0, "train_time": 0.0, "best_state": None}  # fmt: skip
    fingerprint = fit_fingerprint(cfg, train, val, aug, hide)
    if checkpoint is not None and Path(checkpoint).is_file():
        state = resume_checkpoint(checkpoint, fingerprint, model, opt, sched, ema, gen, aug_gen,
                                  state)  # fmt: skip
        if rank == 0 and state["epoch"]:
            print(f"resuming from {checkpoint} after epoch {state['epoch']}", file=sys.stderr)
    best_state = state["best_state"] or copy.deepcopy(evaluated.state_dict())
    history: list[dict] = state["history"]
    t_start = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    seen, train_time = state["seen"], state["train_time"]
    best, best_epoch, bad = state["best"], state["best_epoch"], state["bad"]
    last_epoch_indices: list[int] = []
    stopped = bad >= cfg.patience
    for epoch in range(state["epoch"], cfg.epochs):
        if stopped:
            break
        model.train()
        low_res = cfg.low_res_size is not None and epoch < cfg.low_res_epochs
        perm = torch.randperm(len(train), generator=gen)[rank::world]
        last_epoch_indices = perm.tolist()
        sums = {"loss": 0.0, "mae": 0.0, "kl": 0.0}
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, file=sys.stderr, leave=False)  # fmt: skip
        t0 = time.perf_counter()
        with step_model.join() if world > 1 else contextlib.nullcontext():
            for s in bar:
                idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                if len(idx) == 0:
                    break
                xb = to_input(x_src[idx.to(x_src.device)], device, cfg.channels_last)
                if low_res:
                    xb = resize_batch(xb, cfg.low_res_size, cfg.channels_last)
                yb = train.age[idx].to(device)
                sb = train.sex[idx].to(device)
                if aug is not None:
                    xb = augment(xb, aug, aug_gen)
                xb = hide_patches(xb, hide[0], hide[1], aug_gen)
                loss, parts = train_step(step_model, opt, xb, yb, sb, cfg, device)
                sched.step()
                if ema is not None:
                    ema.update_parameters(model)
                n = len(idx)
                seen += n
                sums["loss"] += float(loss.detach()) * n
                sums["mae"] += float(parts["mae"]) * n
                sums["kl"] += float(parts["kl"]) * n
                bar.set_postfix(loss=f"{float(loss.detach()):.2f}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - t0
        val_mine = _shard(val, rank, world)
        p_val = predict(evaluated, val_mine, device, cfg.eval_batch_size, cfg.amp,
                        cfg.channels_last)  # fmt: skip
        err = float((expectation(p_val) - val_mine.age).abs().sum()) if len(val_mine) else 0.0
        tot = distributed.all_sum([err, len(val_mine), sums["loss"], sums["mae"], sums["kl"]],
                                  device)  # fmt: skip
        val_mae = tot[0] / tot[1] if tot[1] else math.nan
        if world == 1:
            val_mae = mae(p_val, val.age)  # bitwise as before for single-process runs
        row = {
            "epoch": epoch + 1,
            "train_loss": tot[2] / len(train),
            "train_mae": tot[3] / len(train),
            "train_kl": tot[4] / len(train),
            "val_mae": val_mae,
            "lr": sched.get_last_lr()[0],
            "seconds": time.perf_counter() - t_start,
            "train_size": cfg.low_res_size if low_res else int(train.x.shape[-1]),
        }
        history.append(row)
        if val_mae < best:
            best, best_epoch, bad = val_mae, epoch + 1, 0
            best_state = copy.deepcopy(evaluated.state_dict())
        else:
            bad += 1
            stopped = bad >= cfg.patience
        if checkpoint is not None and rank == 0:  # before anything else can fail
            save_checkpoint(checkpoint, fingerprint, epoch + 1, model, opt, sched, ema, gen,
                             aug_gen, best=best, best_epoch=best_epoch, bad=bad,
                             history=history, seen=seen, train_time=train_time,
                             best_state=best_state)  # fmt: skip
        if tracker is not None:
            tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
        if on_epoch is not None and rank == 0:
            on_epoch(row)
        if progress:
            print(f"epoch {epoch + 1}: train_mae {row['train_mae']:.2f}  val_mae {val_mae:.2f}",
                  file=sys.stderr)  # fmt: skip
    model.load_state_dict(best_state)
    return FitResult(
        best_val_mae=best,
        best_epoch=best_epoch,
        epochs_run=len(history),
        history=history,
        seconds=time.perf_counter() - t_start,
        train_images_per_second=seen / train_time if train_time else 0.0,
        samples_seen=seen,
        last_epoch_indices=last_epoch_indices,
    )


def _ema_model(model: torch.nn.Module, decay: float):
    """An exponential moving average of `model`'s weights (buffers averaged too), or None."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _training_images(x: torch.Tensor, device: torch.device, max_frac: float) -> torch.Tensor:
    """Where training batches are indexed from: on CUDA the whole uint8 set moves to the
    GPU once when it fits in `max_frac` of free memory, else it is pinned on the host
    (batches copied asynchronously); on CPU it is used as is."""
    if device.type != "cuda":
        return x
    free, _ = torch.cuda.mem_get_info(device)
    if x.numel() * x.element_size() <= max_frac * free:
        return x.to(device)
    return x.pin_memory()


def _shard(data: TensorData, rank: int, world: int) -> TensorData:
    if world == 1:
        return data
    idx = torch.arange(rank, len(data), world)
    return TensorData([data.ids[i] for i in idx.tolist()], data.x[idx], data.age[idx],
                      data.sex[idx])  # fmt: skip


def fit_metrics(result: FitResult, train: TensorData, val: TensorData) -> dict[str, Any]:
    """The metrics every trainer reports after `fit`, with the train-mean baseline."""
    baseline = float((val.age - train.age.mean()).abs().mean())
    return {
        "val_mae": result.best_val_mae,
        "val_mae_predict_train_mean": baseline,
        "improvement_over_mean": 1 - result.best_val_mae / baseline if baseline else math.nan,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "n_train": len(train),
        "n_val": len(val),
        "train_images_per_second": result.train_images_per_second,
        "seconds": result.seconds,
    }


def save_model(model: AgeNet, out_dir: Path, config: dict[str, Any]) -> None:
    """model.pt (fp32 state dict of the best weights) + config.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
             for k, v in model.state_dict().items()}  # fmt: skip
    torch.save(state, out_dir / "model.pt")
    meta = {
        "model": model.cfg.model_dump(),
        "in_channels": model.in_channels,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "timm": _version("timm"),
            "boneage": _version("boneage"),
        },
        **config,
    }
    (out_dir / "config.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


def load_model(
    model_dir: Path, device: str | torch.device = "cpu", fold: bool = True
) -> tuple[AgeNet, dict]:
    """Rebuild a saved AgeNet for inference (no pretrained download: the weights come from
    model.pt), in eval mode with its batch norms folded into the convolutions before them
    (`fold`; precision.fold_batchnorm: same outputs, faster on the CPU)."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (not a boneage model directory)")
    meta = json.loads(cfg_path.read_text())
    model = AgeNet(ModelConfig(**meta["model"]), meta["in_channels"], load_pretrained=False)
    state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(expand_state(state, model_dir / "model.pt"))
    model.eval()
    if fold:
        model.fold_batchnorm()
    model.to(device)
    return model, meta


def _version(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None
