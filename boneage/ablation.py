"""Region ablation: train and evaluate the aggregator on each region set of params
`ablation.configs`, all with the identical budget of params `aggregator` (backbone,
resolution, epochs, seed), and write a table beside the paper's numbers. The sets of
`ablation.per_region` are trained once more with one backbone per region (model fusion
`per_region`), rows named "NAME per-region", to measure that mode against stacking.

Outputs: MODELS/ablation/NAME/ (each aggregator), REPORTS/ablation/NAME/ (each evaluation),
REPORTS/ablation.json and REPORTS/ablation.md.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from boneage.aggregator import region_name, train_aggregator
from boneage.config import ModelConfig, Params, TrainConfig
from boneage.evaluate import evaluate
from boneage.localizer import StagePaths
from boneage.tracking import Tracker

# Chen et al. (arXiv 2006.00202), test MAE in months on their 500-image held-out part of
# the RSNA training data, as quoted in the project design (../shared/DESIGN.md). Only the
# rows quoted there are filled; the other rows of their Table 3 are not available to this
# project offline and are left blank rather than guessed.
PAPER_MAE = {"O": 7.3, "H+R1+E": 4.7, "H+R1+R2": 4.8}


def run_ablation(
    params: Params,
    paths: StagePaths,
    models_root: Path,
    reports_root: Path,
    tracker_factory: Callable[[], Tracker] = lambda: Tracker(enabled=False),
    progress: bool = True,
    log: Callable[[str], None] = print,
    resume: bool = False,
) -> list[dict]:
    """resume=True reuses a region set's finished model + evaluation (both metrics.json
    present, same budget) instead of training it again — for a run that was interrupted."""
    rows = []
    budget = _budget(params)
    runs = [(r, "stack") for r in params.ablation.configs]
    runs += [(r, "per_region") for r in params.ablation.per_region]
    for regions, fusion in runs:
        name = region_name(regions)
        run_params = params
        if fusion == "per_region":
            name, run_params = f"{name} per-region", _with_fusion(params, fusion)
        t0 = time.perf_counter()
        model_dir = Path(models_root) / "ablation" / name.replace(" ", "_")
        eval_dir = Path(reports_root) / "ablation" / name.replace(" ", "_")
        done = _finished(model_dir, eval_dir, run_params) if resume else None
        if done is not None:
            train_m, ev = done
            log(f"ablation {name}: reusing the finished run in {model_dir}")
        else:
            train_m = train_aggregator(run_params, paths, model_dir, tracker_factory(),
                                       progress, regions=tuple(regions))  # fmt: skip
            ev = evaluate(run_params, paths, model_dir, eval_dir, tracker_factory())
        row = {
            "regions": name,
            "test_mae": ev["mae"],
            "test_rmse": ev["rmse"],
            "test_bias": ev["bias"],
            "coverage": ev["coverage"],
            "n_test": ev["n"],
            "val_mae": train_m["val_mae"],
            "best_epoch": train_m["best_epoch"],
            "epochs_run": train_m["epochs_run"],
            "n_train": train_m["n_train"],
            "mae_predict_train_mean": ev["mae_predict_train_mean"],
            "paper_mae": PAPER_MAE.get(name),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        log(f"ablation {name}: test MAE {row['test_mae']:.2f} months (val {row['val_mae']:.2f}; "
            f"{row['seconds']:.0f} s)")  # fmt: skip
    reports_root = Path(reports_root)
    reports_root.mkdir(parents=True, exist_ok=True)
    (reports_root / "ablation.json").write_text(
        json.dumps({"budget": budget, "rows": rows}, indent=2) + "\n")  # fmt: skip
    (reports_root / "ablation.md").write_text(ablation_markdown(rows, budget))
    return rows


def _with_fusion(params: Params, fusion: str) -> Params:
    model = params.aggregator.model.model_copy(update={"fusion": fusion})
    return params.model_copy(
        update={"aggregator": params.aggregator.model_copy(update={"model": model})}
    )


def _finished(model_dir: Path, eval_dir: Path, params: Params) -> tuple[dict, dict] | None:
    """(train metrics, eval metrics) of a finished run trained with today's budget, else None."""
    cfg_f, train_f, eval_f = (model_dir / "config.json", model_dir / "metrics.json",
                              eval_dir / "metrics.json")  # fmt: skip
    if not (cfg_f.is_file() and train_f.is_file() and eval_f.is_file()):
        return None
    cfg = json.loads(cfg_f.read_text())
    a = params.aggregator
    try:  # through the config classes, so fields added since (with defaults) compare equal
        same = (
            cfg.get("img_size") == a.img_size
            and TrainConfig.model_validate(cfg.get("train")) == a.train
            and ModelConfig.model_validate(cfg.get("model")) == a.model
        )
    except ValueError:
        same = False
    return (json.loads(train_f.read_text()), json.loads(eval_f.read_text())) if same else None


def _budget(params: Params) -> dict:
    a = params.aggregator
    return {
        "backbone": a.model.backbone,
        "pretrained": a.model.pretrained,
        "img_size": a.img_size,
        "epochs": a.train.epochs,
        "batch_size": a.train.batch_size,
        "lr": a.train.lr,
        "max_train_images": a.train.max_train_images,
        "seed": a.train.seed,
        "fusion": a.model.fusion + " (rows marked per-region: one backbone per region)",
        "device": "cuda" if torch.cuda.is_available() else f"cpu ({platform.machine()})",
    }


def ablation_markdown(rows: list[dict], budget: dict) -> str:
    lines = [
        "# Region ablation",
        "",
        "Identical budget for every row: " + ", ".join(f"{k}={v}" for k, v in budget.items()) + ".",
        "",
        "| regions | test MAE (mo) | RMSE | bias | 90% coverage | val MAE | epochs (best) "
        "| n train / test | paper MAE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        paper = f"{r['paper_mae']:.1f}" if r["paper_mae"] is not None else "—"
        lines.append(
            f"| {r['regions']} | {r['test_mae']:.2f} | {r['test_rmse']:.2f} | "
            f"{r['test_bias']:+.2f} | {r['coverage']:.0%} | {r['val_mae']:.2f} | "
            f"{r['epochs_run']} ({r['best_epoch']}) | {r['n_train']} / {r['n_test']} | {paper} |"
        )
    if rows:
        lines += ["", f"Predicting the training mean: test MAE "
                      f"{rows[0]['mae_predict_train_mean']:.2f} months."]  # fmt: skip
    lines += [
        "",
        "Paper: Chen et al., arXiv 2006.00202, full-resolution RSNA images, 500-image test "
        "part; '—' = not quoted in the project design, not guessed.",
        "",
    ]
    return "\n".join(lines)
