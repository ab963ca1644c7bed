"""Run under torchrun by tests/test_ddp.py: a few DDP steps of boneage.training.fit on a
toy task, logging through boneage.tracking.Tracker; each rank writes what it saw."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from boneage.config import AugmentConfig, ModelConfig, TrainConfig  # noqa: E402
from boneage.models import AgeNet  # noqa: E402
from boneage.tracking import Tracker  # noqa: E402
from boneage.training import fit  # noqa: E402
from tests.corpus import bar_task  # noqa: E402


def main() -> None:
    out, uri = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    train, val = bar_task(37, 0), bar_task(11, 1)  # odd sizes: uneven shards across 2 ranks
    model = AgeNet(ModelConfig(backbone="resnet18", pretrained="none", k=240))
    cfg = TrainConfig(epochs=2, batch_size=8, lr=3e-3, patience=5, device="cpu")
    tracker = Tracker(uri=uri)
    with tracker.run("ddp-test", "ddp"):
        tracker.log_params({"world": os.environ.get("WORLD_SIZE")})
        res = fit(model, train, val, cfg, AugmentConfig(), tracker, progress=False)
    rank = int(os.environ["RANK"])
    digest = float(sum(p.double().sum() for p in model.parameters()))
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": int(os.environ["WORLD_SIZE"]),
        "indices": res.last_epoch_indices, "samples_seen": res.samples_seen,
        "val_mae": [h["val_mae"] for h in res.history], "tracker_enabled": tracker.enabled,
        "run_id": tracker.run_id, "weights_digest": digest,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
