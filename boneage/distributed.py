"""Data-parallel training under `torchrun` (DDP): gloo on CPU, NCCL on GPU.

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here is a no-op
and training is the plain single-process loop. Under DDP:
- each epoch's permutation is drawn from the shared seed, and rank r trains on
  `perm[r::world]` — every sample exactly once per epoch across ranks (uneven last steps
  are handled by DDP's `join`);
- validation is sharded the same way and the absolute errors are summed over ranks, so
  every rank sees the same val MAE and takes the same early-stopping decision;
- only rank 0 logs (boneage.tracking.Tracker is disabled on other ranks), shows progress
  and writes checkpoints / metrics files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    return world_size() > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group (once) and return this rank's device."""
    if not active():
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (identity without DDP)."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()
