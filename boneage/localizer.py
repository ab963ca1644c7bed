"""Age-distribution localizers (hand → r1 → r2) and their training.

Each localizer is an `AgeNet` on one grayscale view:
- hand: the whole stored image (letterboxed);
- r1:   the hand crop written by `attend --stage hand`;
- r2:   the hand crop with the R1 box erased (image E) written by `attend --stage r1`.
Its CAM (classes around the predicted age) is what `attend` turns into boxes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from boneage.checkpoint import checkpoint_path
from boneage.config import Params
from boneage.distributed import is_main
from boneage.ldl import expectation
from boneage.models import AgeNet
from boneage.precision import autocast, to_input
from boneage.tracking import Tracker
from boneage.training import TensorData, fit, fit_metrics, save_model, seed_everything, sex_code
from boneage.views import load_views

STAGES = ("hand", "r1", "r2")
DEFAULT_INGEST = Path("data/interim/ingest")
DEFAULT_ATTEND = Path("data/processed/attend")
DEFAULT_MODELS = Path("data/models")


@dataclass(frozen=True)
class StagePaths:
    ingest: Path = DEFAULT_INGEST
    attend_root: Path = DEFAULT_ATTEND

    @property
    def manifest(self) -> Path:
        return self.ingest / "manifest.parquet"

    @property
    def store(self) -> Path:
        return self.ingest / "store"

    def input_store(self, stage: str) -> Path:
        """The store a stage's localizer trains on and attends over."""
        check_stage(stage)
        if stage == "hand":
            return self.store
        if stage == "r1":
            return self.attend_root / "hand" / "crops"
        return self.attend_root / "r1" / "erased"

    def attend_dir(self, stage: str) -> Path:
        return self.attend_root / check_stage(stage)


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    return stage


def read_manifest(path: Path) -> pd.DataFrame:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: manifest not found (run `boneage ingest` first)")
    return pd.read_parquet(path)


def tensor_data(views, manifest: pd.DataFrame) -> TensorData:
    """Pair letterboxed views with labels/sex from the manifest (same order as views)."""
    m = manifest.set_index("id").loc[views.ids]
    return TensorData(
        ids=list(views.ids),
        x=torch.from_numpy(views.x).unsqueeze(1),
        age=torch.tensor(m["boneage_months"].to_numpy(dtype=np.float32, na_value=np.nan)),
        sex=torch.from_numpy(sex_code(m["sex"])),
    )


def load_split_data(
    store: Path, manifest: pd.DataFrame, size: int, workers: int = 0
) -> dict[str, TensorData]:
    labelled = manifest[manifest["boneage_months"].notna()]
    views = load_views(store, size, set(labelled["id"]), workers)
    data = tensor_data(views, labelled)
    split_of = labelled.set_index("id")["split"]
    out = {}
    for split in ("train", "val", "test"):
        idx = [i for i, id_ in enumerate(data.ids) if split_of[id_] == split]
        t = torch.tensor(idx, dtype=torch.long)
        out[split] = TensorData([data.ids[i] for i in idx], data.x[t], data.age[t], data.sex[t])
    return out


def train_localizer(
    stage: str,
    params: Params,
    paths: StagePaths,
    out_dir: Path,
    tracker: Tracker | None = None,
    progress: bool = True,
) -> dict:
    """Train one localizer; writes model.pt, config.json, metrics.json, history.csv."""
    check_stage(stage)
    lcfg = params.localizer
    scfg = lcfg.stage(stage)
    tcfg = lcfg.train
    if scfg.epochs is not None:
        tcfg = tcfg.model_copy(update={"epochs": scfg.epochs})
    store = paths.input_store(stage)
    if not (store / "store.json").is_file():
        prev = "ingest" if stage == "hand" else f"attend --stage {STAGES[STAGES.index(stage) - 1]}"
        raise FileNotFoundError(f"{store}: input store for stage {stage!r} missing (run {prev})")
    manifest = read_manifest(paths.manifest)
    data = load_split_data(store, manifest, scfg.img_size)
    train = data["train"].subset(tcfg.max_train_images, tcfg.seed)
    val = data["val"].subset(tcfg.max_val_images, tcfg.seed)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"stage {stage}: need labelled train and val images, got "
                         f"{len(train)} train / {len(val)} val")  # fmt: skip
    seed_everything(tcfg.seed)  # the head's initialisation too
    model = AgeNet(lcfg.model, in_channels=1)
    tracker = tracker or Tracker(enabled=False)
    run_params = {
        "stage": stage, "model": lcfg.model.model_dump(), "train": tcfg.model_dump(),
        "augment": lcfg.augment.model_dump(), "stage_config": scfg.model_dump(),
        "cam_window": lcfg.cam_window, "n_train": len(train), "n_val": len(val),
    }  # fmt: skip
    with tracker.run("boneage-localizer", f"localizer-{stage}", {"stage": stage}):
        tracker.log_params(run_params)
        result = fit(
            model, train, val, tcfg, lcfg.augment, tracker, progress,
            hide=(scfg.hide_grid, scfg.hide_p), checkpoint=checkpoint_path(out_dir),
        )  # fmt: skip
        metrics = {"stage": stage, **fit_metrics(result, train, val)}
        if not is_main():  # DDP: rank 0 writes the checkpoint and the files
            return metrics
        out_dir.mkdir(parents=True, exist_ok=True)
        save_model(model, out_dir, {
            "kind": "localizer", "stage": stage, "img_size": scfg.img_size,
            "cam_window": lcfg.cam_window, "train": tcfg.model_dump(),
            "augment": lcfg.augment.model_dump(), "input_store": str(store), "metrics": metrics,
            "mlflow_run_id": tracker.run_id,
        })  # fmt: skip
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        pd.DataFrame(result.history).to_csv(out_dir / "history.csv", index=False)
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
        tracker.log_artifact(out_dir / "config.json")
        tracker.log_artifact(out_dir / "metrics.json")
        tracker.log_artifact(out_dir / "history.csv")
        checkpoint_path(out_dir).unlink(missing_ok=True)
    return metrics


def cam_pass(model, x: np.ndarray, sex: np.ndarray, size: int, train_size: int,
             window: float | None, device: torch.device, amp: str | bool):  # fmt: skip
    """CAMs of a batch of uint8 views [B, S, S] at `size`: (cams [B, size, size], CAM peaks
    [B], predicted ages [B]) as numpy. The age is predicted at the trained scale; when `size`
    is larger the CAM comes from a second, finer pass (cam_size)."""
    xb = to_input(torch.from_numpy(x).unsqueeze(1), device, channels_last=True)
    with torch.no_grad(), autocast(device, amp):
        sb = torch.from_numpy(sex).to(device)
        if size == train_size:
            logits, feats = model(xb, sb, return_features=True)
        else:  # predict at the trained scale, take the CAM from the finer pass
            small = F.interpolate(xb, size=(train_size, train_size), mode="bilinear",
                                  antialias=True, align_corners=False)  # fmt: skip
            logits = model(small, sb)
            feats = model.feature_maps(xb)
    with torch.no_grad():
        cams, peaks = model.cam(feats, logits, window, (size, size))
        ages = expectation(torch.softmax(logits.float(), 1))
    return cams.cpu().numpy(), peaks.cpu().numpy(), ages.cpu().numpy()
