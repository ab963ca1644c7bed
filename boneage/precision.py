"""Where and in what precision forward passes run: the device, bf16 autocast (on CUDA and
on CPUs with native bf16) and the uint8 → float input conversion. Used by training,
attend, evaluation, calibration and scoring alike."""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return dev


@functools.cache
def cpu_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16): bf16 autocast
    then speeds up convolutions and matmuls. Elsewhere bf16 would be emulated (slower than
    fp32), so `amp: auto` stays fp32 there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def use_bf16(device: torch.device, amp: str | bool) -> bool:
    """Whether forward passes on `device` run under bf16 autocast for setting `amp`
    (auto: CUDA, or a CPU with native bf16; bf16: always; fp32: never)."""
    amp = normalize_amp(amp)
    if amp == "fp32":
        return False
    if amp == "bf16" or device.type == "cuda":
        return True
    return device.type == "cpu" and cpu_native_bf16()


def normalize_amp(amp: str | bool) -> str:
    """'auto' | 'bf16' | 'fp32' (True → 'auto', False → 'fp32', as older configs said)."""
    if amp is True:
        return "auto"
    if amp is False:
        return "fp32"
    if amp not in ("auto", "bf16", "fp32"):
        raise ValueError(f"amp {amp!r}: expected auto, bf16 or fp32")
    return amp


def autocast(device: torch.device, amp: str | bool):
    """bf16 autocast where `use_bf16` says so, else a no-op context."""
    if use_bf16(device, amp):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_input(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 images [B, C, H, W] → floats in [0, 1] on `device` (channels_last if asked)."""
    x = x.to(device, non_blocking=True).float().div_(255.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
