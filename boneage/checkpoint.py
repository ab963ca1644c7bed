"""Per-epoch training checkpoints (boneage.training.fit): where they live (beside the model
dir, so DVC emptying a stage's outputs does not remove them), what they must have been
written for to be resumed (settings, augmentation, data ids and sizes), and the atomic
write / exact restore of model, optimizer, schedule, EMA and random generators, so that a
killed run continues after its last finished epoch and ends as an uninterrupted one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from boneage.config import TrainConfig

if TYPE_CHECKING:  # annotations only: training imports this module
    from boneage.training import TensorData


def checkpoint_path(out_dir: Path) -> Path:
    """Where training into `out_dir` keeps its per-epoch resume file: beside the model
    dir, not in it (DVC empties a stage's outputs before re-running it; the checkpoint
    must outlive that). Removed once the model is saved."""
    out_dir = Path(out_dir)
    return out_dir.parent / ".checkpoints" / f"{out_dir.name}.pt"


def fit_fingerprint(cfg: TrainConfig, train: TensorData, val: TensorData, aug, hide) -> str:
    """What a checkpoint must have been written for to be resumed: the training settings,
    augmentation, hiding and the data (sizes and ids)."""
    import hashlib

    h = hashlib.sha256()
    for part in (cfg.model_dump_json(), aug.model_dump_json() if aug is not None else "none",
                 json.dumps(list(hide)), "\x1f".join(train.ids), "\x1f".join(val.ids),
                 str(tuple(train.x.shape))):  # fmt: skip
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()


def save_checkpoint(path: Path, fingerprint: str, epoch: int, model, opt, sched, ema, gen,
                     aug_gen, **state) -> None:  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {
        "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(),
        "opt": opt.state_dict(), "sched": sched.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "gen": gen.get_state(), "aug_gen": aug_gen.get_state(),
        "torch_rng": torch.get_rng_state(), **state,
    }  # fmt: skip
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)  # atomic: a kill mid-write leaves the previous epoch's checkpoint


def resume_checkpoint(path, fingerprint, model, opt, sched, ema, gen, aug_gen, state) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if obj.get("fingerprint") != fingerprint:
        print(f"{path}: written for other settings or data; starting afresh", file=sys.stderr)
        return state
    model.load_state_dict(obj["model"])
    opt.load_state_dict(obj["opt"])
    sched.load_state_dict(obj["sched"])
    if ema is not None and obj["ema"] is not None:
        ema.load_state_dict(obj["ema"])
    gen.set_state(obj["gen"])
    if aug_gen is not gen:
        aug_gen.set_state(obj["aug_gen"])
    torch.set_rng_state(obj["torch_rng"])
    keys = ("best", "best_epoch", "bad", "history", "seen", "train_time", "best_state")
    return {"epoch": obj["epoch"], **{k: obj[k] for k in keys}}
