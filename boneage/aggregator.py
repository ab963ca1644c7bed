"""The aggregator: chosen regions stacked as the channels of one backbone, plus sex, into
a K-way age distribution head (loss |y − E[p]| + λ·KL(G‖p), shared with the localizers).

Regions and where they come from (params `aggregator.regions`):
- O:  the whole stored image (ingest store, letterboxed);
- H:  the hand crop (attend/hand/crops);
- R1: the carpal crop (attend/r1/crops);
- R2: the metacarpal/phalanx crop (attend/r2/crops);
- E:  the hand crop with R1 erased (attend/r1/erased).
Each is resized to `img_size`; channel i is region i in the order given. Augmentation draws
one geometry per sample and applies it to all channels (boneage.augment).

An image lacking any chosen region (its attend row has status `error`, so it has no crop)
cannot be stacked: it is left out of training/evaluation and written, with the reason, to
`excluded.csv` beside the model, never silently dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from boneage.checkpoint import checkpoint_path
from boneage.config import AggregatorConfig, Params
from boneage.distributed import is_main
from boneage.localizer import StagePaths, read_manifest
from boneage.models import AgeNet
from boneage.tracking import Tracker
from boneage.training import TensorData, fit, fit_metrics, save_model, seed_everything, sex_code
from boneage.views import load_views

REGION_STAGE = {"H": "hand", "R1": "r1", "R2": "r2"}


def region_store(paths: StagePaths, region: str) -> Path:
    if region == "O":
        return paths.store
    if region == "E":
        return paths.attend_dir("r1") / "erased"
    if region in REGION_STAGE:
        return paths.attend_dir(REGION_STAGE[region]) / "crops"
    raise ValueError(f"unknown region {region!r}")


def region_name(regions: tuple[str, ...] | list[str]) -> str:
    """'H+R1+R2' — the name used in reports, run names and directories."""
    return "+".join(regions)


def region_arrays(
    paths: StagePaths, ids: list[str], regions: tuple[str, ...], size: int, workers: int = 0
) -> tuple[list[str], np.ndarray, dict[str, list[str]]]:
    """(ids having every region, uint8 [N, len(regions), size, size] in that order,
    {id: missing regions} for the others). Labels play no part (scoring uses this too)."""
    wanted = set(ids)
    per_region: dict[str, dict[str, np.ndarray]] = {}
    for region in regions:
        store = region_store(paths, region)
        if not (store / "store.json").is_file():
            hint = "boneage ingest" if region == "O" else "boneage attend"
            raise FileNotFoundError(f"{store}: store for region {region} missing (run {hint})")
        views = load_views(store, size, wanted, workers)
        per_region[region] = dict(zip(views.ids, views.x, strict=True))
    missing: dict[str, list[str]] = {}
    keep = []
    for i in ids:
        lack = [g for g in regions if i not in per_region[g]]
        if lack:
            missing[i] = lack
        else:
            keep.append(i)
    if keep:
        x = np.stack([np.stack([per_region[g][i] for g in regions]) for i in keep])
    else:
        x = np.zeros((0, len(regions), size, size), np.uint8)
    return keep, x, missing


def missing_reason(lack: list[str]) -> str:
    return f"no {'/'.join(lack)} crop (attend failed)"


def load_region_data(
    paths: StagePaths,
    manifest: pd.DataFrame,
    regions: tuple[str, ...],
    size: int,
    workers: int = 0,
) -> tuple[dict[str, TensorData], pd.DataFrame]:
    """Stacked region tensors per split, and the images left out with their reason.

    Only labelled images are used; the returned `excluded` frame lists every labelled
    image that lacks one of the regions (id, split, reason).
    """
    labelled = manifest[manifest["boneage_months"].notna()]
    keep, x_all, missing = region_arrays(paths, list(labelled["id"]), regions, size, workers)
    m = labelled.set_index("id")
    excluded = [{"id": i, "split": m.at[i, "split"], "reason": missing_reason(lack)}
                for i, lack in missing.items()]  # fmt: skip
    row_of = {i: k for k, i in enumerate(keep)}
    out = {}
    for split in ("train", "val", "test"):
        ids = [i for i in keep if m.at[i, "split"] == split]
        x = x_all[[row_of[i] for i in ids]] if ids else x_all[:0]
        out[split] = TensorData(
            ids=ids,
            x=torch.from_numpy(np.ascontiguousarray(x)),
            age=torch.tensor(m.loc[ids, "boneage_months"].to_numpy(np.float32)),
            sex=torch.from_numpy(sex_code(m.loc[ids, "sex"])),
        )
    return out, pd.DataFrame(excluded, columns=["id", "split", "reason"])


def carpal_params(params: Params) -> Params:
    """Params for the carpal-only head: region R1 alone, the aggregator's model and
    training settings with params `carpal` (resolution, epochs); it trains at its own
    resolution throughout (no progressive resizing: its inputs are already small)."""
    a = params.aggregator
    train = a.train.model_copy(update={"epochs": params.carpal.epochs, "low_res_size": None,
                                       "low_res_epochs": 0})  # fmt: skip
    c = a.model_copy(update={"regions": ("R1",), "img_size": params.carpal.img_size,
                             "train": train})  # fmt: skip
    return params.model_copy(update={"aggregator": c})


def train_aggregator(
    params: Params,
    paths: StagePaths,
    out_dir: Path,
    tracker: Tracker | None = None,
    progress: bool = True,
    regions: tuple[str, ...] | None = None,
) -> dict:
    """Train the aggregator; writes model.pt, config.json, metrics.json, history.csv and
    excluded.csv (images left out for lack of a region) to out_dir."""
    acfg: AggregatorConfig = params.aggregator
    if regions is not None:
        acfg = AggregatorConfig.model_validate({**acfg.model_dump(), "regions": tuple(regions)})
    tcfg = acfg.train
    manifest = read_manifest(paths.manifest)
    data, excluded = load_region_data(paths, manifest, acfg.regions, acfg.img_size)
    train = data["train"].subset(tcfg.max_train_images, tcfg.seed)
    val = data["val"].subset(tcfg.max_val_images, tcfg.seed)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"aggregator {region_name(acfg.regions)}: need labelled train and val images with "
            f"every region, got {len(train)} train / {len(val)} val"
        )
    seed_everything(tcfg.seed)
    model = AgeNet(acfg.model, in_channels=len(acfg.regions))
    tracker = tracker or Tracker(enabled=False)
    name = region_name(acfg.regions)
    with tracker.run("boneage-aggregator", f"aggregator-{name}", {"regions": name}):
        tracker.log_params({**acfg.model_dump(), "n_train": len(train), "n_val": len(val),
                            "n_excluded": len(excluded)})  # fmt: skip
        result = fit(model, train, val, tcfg, acfg.augment, tracker, progress,
                     checkpoint=checkpoint_path(out_dir))  # fmt: skip
        metrics = {
            "regions": name,
            **fit_metrics(result, train, val),
            "n_excluded": len(excluded),
            "train_mean_age": float(train.age.mean()),
            "train_age_range": [float(train.age.min()), float(train.age.max())],
        }
        if not is_main():  # DDP: rank 0 writes the checkpoint and the files
            return metrics
        out_dir.mkdir(parents=True, exist_ok=True)
        save_model(model, out_dir, {
            "kind": "aggregator", "regions": list(acfg.regions), "img_size": acfg.img_size,
            "train": tcfg.model_dump(), "augment": acfg.augment.model_dump(),
            "metrics": metrics, "mlflow_run_id": tracker.run_id,
        })  # fmt: skip
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        pd.DataFrame(result.history).to_csv(out_dir / "history.csv", index=False)
        excluded.to_csv(out_dir / "excluded.csv", index=False)
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
        for f in ("config.json", "metrics.json", "history.csv", "excluded.csv"):
            tracker.log_artifact(out_dir / f)
        checkpoint_path(out_dir).unlink(missing_ok=True)
    return metrics
