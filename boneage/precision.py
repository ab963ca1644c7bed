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


def fold_batchnorm(net: torch.nn.Module, example: torch.Tensor) -> int:
    """Fold each BatchNorm2d that directly follows a Conv2d into that convolution's
    weights and bias, for inference (eval mode; the running statistics are fixed there).
    Returns the number of pairs folded.

    On the CPU, eval-mode batch norms cost about a quarter of a lite0 forward pass, and
    under bf16 autocast they also convert between bf16 and fp32 around every convolution;
    folded, the aggregator predicts ~1.45× faster (benchmarks/precision_drift.py). The
    pairs are found by running `example` through `net` once and matching each batch
    norm's input to the convolution output it is (not by module names, which differ
    between backbones). A batch norm with an activation (timm's BatchNormAct2d) keeps its
    dropout and activation. The folded net is checked against the original on `example`
    in fp32; a mismatch restores the original weights and folds nothing."""
    import copy

    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if net.training:
        raise ValueError("fold_batchnorm: the net must be in eval mode")
    outputs: dict[int, tuple[nn.Conv2d, torch.Tensor]] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def after_conv(mod, _inp, out):
        outputs[id(out)] = (mod, out)

    def before_bn(mod, inp):
        hit = outputs.get(id(inp[0]))
        if hit is not None and hit[1] is inp[0]:
            pairs.append((hit[0], mod))

    hooks = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):  # subclasses too (timm's Conv2dSame: pad, then conv)
            hooks.append(m.register_forward_hook(after_conv))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad():
            reference = net(example)
    finally:
        for h in hooks:
            h.remove()
        outputs.clear()
    convs = [c for c, _ in pairs]
    bns = [b for _, b in pairs]
    parent = {id(child): (mod, name) for mod in net.modules()
              for name, child in mod.named_children()}  # fmt: skip
    backup = copy.deepcopy(net.state_dict())
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for conv, bn in pairs:
        once = convs.count(conv) == 1 and bns.count(bn) == 1  # shared modules stay as they are
        if not once or bn.running_mean is None or id(conv) not in parent or id(bn) not in parent:
            continue
        if type(bn) is nn.BatchNorm2d:
            rest: nn.Module = nn.Identity()
        elif hasattr(bn, "act") and hasattr(bn, "drop"):
            rest = nn.Sequential(bn.drop, bn.act)
        else:  # a batch norm subclass whose forward is not known: leave the pair
            continue
        for module, (mod, name) in ((fuse_conv_bn_eval(conv, bn), parent[id(conv)]),
                                    (rest, parent[id(bn)])):  # fmt: skip
            swapped.append((mod, name, getattr(mod, name)))
            setattr(mod, name, module)
    with torch.no_grad():
        folded = net(example)
    scale = float(reference.abs().max()) or 1.0
    if float((folded - reference).abs().max()) > 1e-3 * scale:
        for mod, name, original in reversed(swapped):
            setattr(mod, name, original)
        net.load_state_dict(backup, strict=False)
        return 0
    return len(swapped) // 2
