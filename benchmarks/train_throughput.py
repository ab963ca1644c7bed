"""Training throughput on real images from the store vs synthetic tensors already on the
device, in fp32 and bf16 autocast: same model, resolution, batch size and step
(channels_last), one run, with the ratios real/synthetic (goal on the GPU machine: >= 0.9)
and bf16/fp32.

    python benchmarks/train_throughput.py [--store data/interim/ingest/store]
        [--backbone tf_efficientnet_lite0] [--size 224] [--batch 32] [--steps 20]
        [--channels 1] [--device auto] [--amp fp32,bf16] [--params PROFILE] [--json OUT]

`--params PROFILE`: backbone, size, batch and channels (one per region) of the profile's
aggregator, unless given. `--json`: the figures also as JSON (the GPU job's result; its
top-level figures are bf16's when measured, the precision the profiles train in on CUDA).

Real: `boneage.training.fit` for one epoch over `steps × batch` images decoded once from
the store into a uint8 tensor (never re-decoded per step; on CUDA moved to the GPU once)
— batch indexing, uint8→float, on-device augmentation and patch hiding included; its
images/s is the training loop alone (validation excluded). Synthetic: the same
forward/backward/optimizer step on one float batch that already sits on the device, no
data work at all.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from boneage.config import AugmentConfig, ModelConfig, TrainConfig  # noqa: E402
from boneage.models import AgeNet  # noqa: E402
from boneage.precision import cpu_native_bf16, resolve_device  # noqa: E402
from boneage.store import ImageStore  # noqa: E402
from boneage.training import TensorData, fit, train_step  # noqa: E402
from boneage.views import load_views  # noqa: E402


def synthetic(model: AgeNet, cfg: TrainConfig, size: int, channels: int, steps: int,
              device: torch.device) -> float:  # fmt: skip
    model.to(device).train()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x = torch.rand(cfg.batch_size, channels, size, size, device=device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.rand(cfg.batch_size, device=device) * 228
    sex = torch.ones(cfg.batch_size, device=device)

    def step():
        train_step(model, opt, x, y, sex, cfg, device)

    for _ in range(3):  # warm-up
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=Path("data/interim/ingest/store"))
    ap.add_argument("--backbone", default=None, help="[tf_efficientnet_lite0]")
    ap.add_argument("--size", type=int, default=None, help="[224]")
    ap.add_argument("--batch", type=int, default=None, help="[32]")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--channels", type=int, default=None, help="[1]")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="fp32,bf16",
                    help="precisions to measure, comma-separated (fp32, bf16)")  # fmt: skip
    ap.add_argument("--params", type=Path, default=None, help="take the defaults from a profile")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()
    defaults = {"backbone": "tf_efficientnet_lite0", "size": 224, "batch": 32, "channels": 1}
    if a.params is not None:
        from boneage.config import load_params

        agg = load_params(a.params).aggregator
        defaults = {"backbone": agg.model.backbone, "size": agg.img_size,
                    "batch": agg.train.batch_size,
                    "channels": len(agg.regions) if agg.model.fusion == "stack" else 1}  # fmt: skip
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if not (a.store / "store.json").is_file():
        raise SystemExit(f"{a.store}: no image store (run `make run` or boneage ingest)")
    device = resolve_device(a.device)
    n = a.steps * a.batch
    ids = ImageStore(a.store).ids[:n]
    t0 = time.perf_counter()
    views = load_views(a.store, a.size, set(ids))
    decode_s = time.perf_counter() - t0
    x = torch.from_numpy(views.x).unsqueeze(1).repeat(1, a.channels, 1, 1)
    k = len(views.ids)
    if k < n:  # a small store: cycle it to fill the steps
        reps = -(-n // k)
        x = x.repeat(reps, 1, 1, 1)[:n]
    ages = torch.rand(len(x)) * 228
    data = TensorData([f"i{i}" for i in range(len(x))], x, ages, torch.ones(len(x)))
    val = TensorData(data.ids[:8], x[:8], ages[:8], torch.ones(8))
    mcfg = ModelConfig(backbone=a.backbone, pretrained="none", output_stride=32, sex_dim=32)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{a.backbone} @{a.size}px x{a.channels} ch, batch {a.batch}, {a.steps} steps, "
          f"{name} ({torch.get_num_threads()} threads), channels_last; native bf16 on this "
          f"CPU: {cpu_native_bf16()}")  # fmt: skip
    print(f"decoded {k} images once from {a.store} in {decode_s:.1f} s")
    results = {}
    for amp in a.amp.split(","):
        cfg = TrainConfig(epochs=1, batch_size=a.batch, device=str(device), warmup_frac=0.0,
                          amp=amp)  # fmt: skip
        torch.manual_seed(0)
        syn = synthetic(AgeNet(mcfg, a.channels, load_pretrained=False), cfg, a.size,
                        a.channels, a.steps, device)  # fmt: skip
        torch.manual_seed(0)
        model = AgeNet(mcfg, a.channels, load_pretrained=False)
        w = 3 * a.batch  # warm-up epoch (allocator, cudnn autotune), not timed
        warm_data = TensorData(data.ids[:w], x[:w], ages[:w], torch.ones(w))
        fit(model, warm_data, val, cfg, AugmentConfig(), progress=False)
        real = fit(model, data, val, cfg, AugmentConfig(), progress=False)
        results[amp] = (real.train_images_per_second, syn)
        print(f"{amp:>5}: real data from the store (augmented on {device.type}) "
              f"{results[amp][0]:.1f} img/s, synthetic tensors {syn:.1f} img/s, "
              f"ratio real/synthetic {results[amp][0] / syn:.2f}")  # fmt: skip
    if "fp32" in results and "bf16" in results:
        r32, r16 = results["fp32"], results["bf16"]
        print(f"bf16 / fp32 speed-up: real {r16[0] / r32[0]:.2f}x, synthetic "
              f"{r16[1] / r32[1]:.2f}x")  # fmt: skip
    if a.json is not None:
        top = "bf16" if "bf16" in results else next(iter(results))
        by_amp = {k: {"real_images_per_second": round(r, 1),
                      "synthetic_images_per_second": round(y, 1), "ratio": round(r / y, 3)}
                  for k, (r, y) in results.items()}  # fmt: skip
        a.json.write_text(json.dumps({
            "device": name, "backbone": a.backbone, "size": a.size, "batch": a.batch,
            "channels": a.channels, "steps": a.steps, "threads": torch.get_num_threads(),
            "decode_seconds": round(decode_s, 2), "amp": top, **by_amp[top], "by_amp": by_amp,
        }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
