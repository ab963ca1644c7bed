"""Compact weight storage for distribution (`boneage export`): fp16, or int8 weight-only
quantization per output channel, packed into one flat buffer per dtype; and the inverse
(`expand_state`), which every model load goes through (boneage.training.load_model), so
compacted and plain model.pt files load the same way.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

WEIGHT_PRECISIONS = ("fp32", "fp16", "int8")


_COMPACT_KEY = "boneage_weights"


def compact_state(state: dict[str, torch.Tensor], precision: str) -> dict:
    """A state dict stored smaller, for distribution (`boneage export`).

    fp16: every floating tensor in half precision. int8: weight tensors (>= 2 dims)
    quantized symmetrically per output channel — row k of W stored as int8
    round(W_k / s_k) with s_k = max|W_k| / 127 (fp16) — i.e. weight-only quantization;
    vectors (biases, batch-norm statistics: ~2 % of the values) in fp16. Computation stays
    fp32 after loading. Tensors are packed into one flat buffer per dtype plus an index
    (a zip entry per tensor would add ~0.1 MB per network). fp32 returns `state` as is."""
    if precision not in WEIGHT_PRECISIONS:
        raise ValueError(f"weights precision {precision!r}: expected one of {WEIGHT_PRECISIONS}")
    if precision == "fp32":
        return state
    flat: dict[str, list[torch.Tensor]] = {}
    used: dict[str, int] = {}

    def put(group: str, t: torch.Tensor) -> int:
        offset = used.get(group, 0)
        flat.setdefault(group, []).append(t.reshape(-1))
        used[group] = offset + t.numel()
        return offset

    index = []
    for name, v in state.items():
        v = v.detach().cpu()
        shape = list(v.shape)
        if not v.is_floating_point():
            group = str(v.dtype).removeprefix("torch.")
            index.append([name, group, shape, put(group, v)])
        elif precision == "int8" and v.dim() >= 2:
            rows = v.float().reshape(v.shape[0], -1)
            scale = (rows.abs().amax(dim=1) / 127.0).half()
            s32 = scale.float()
            q = torch.where(s32[:, None] > 0, rows / s32.clamp_min(1e-30)[:, None],
                            torch.zeros_like(rows))  # fmt: skip
            q = torch.round(q).clamp_(-127, 127).to(torch.int8)
            index.append([name, "int8", shape, put("int8", q), put("scale", scale)])
        else:
            index.append([name, "float16", shape, put("float16", v.half())])
    data = {g: torch.cat(ts) for g, ts in flat.items()}
    return {_COMPACT_KEY: f"{precision}/1", "index": index, "data": data}


def compact_format(obj: dict) -> str | None:
    """'int8/1' / 'fp16/1' for a loaded compacted model.pt, None for a plain state dict."""
    return str(obj[_COMPACT_KEY]) if _COMPACT_KEY in obj else None


def expand_state(obj: dict, source: Path | str = "model.pt") -> dict[str, torch.Tensor]:
    """The fp32 state dict of a plain or compacted (`compact_state`) model.pt."""
    fmt = compact_format(obj)
    if fmt is None:
        return obj
    if fmt not in ("fp16/1", "int8/1"):
        raise ValueError(f"{source}: weights format {fmt!r} is not one this boneage reads "
                         "(fp16/1, int8/1)")  # fmt: skip
    data, out = obj["data"], {}
    for name, group, shape, offset, *rest in obj["index"]:
        n = math.prod(shape)
        t = data[group][offset : offset + n].reshape(shape)
        if group == "int8":
            scale = data["scale"][rest[0] : rest[0] + shape[0]].float()
            t = (t.float().reshape(shape[0], -1) * scale[:, None]).reshape(shape)
        elif t.is_floating_point():
            t = t.float()
        out[name] = t.clone()
    return out


def weights_precision(model_pt: Path) -> str:
    """fp32, fp16 or int8: how a model.pt stores its weights."""
    fmt = compact_format(torch.load(model_pt, map_location="cpu", weights_only=True))
    return fmt.split("/")[0] if fmt else "fp32"
