"""Compact weights (fp16 / weight-only int8) and `boneage export`: the exported bundle
loads as fp32, scores like any bundle, and its model card states what was measured."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from boneage.bundle import COMPONENTS
from boneage.cli import app
from boneage.compaction import compact_state, expand_state, weights_precision
from boneage.config import EvaluateConfig, ModelConfig
from boneage.evaluate import compute_metrics
from boneage.export import error_statement, export_bundle
from boneage.ingest import ingest
from boneage.models import AgeNet
from boneage.registry import open_model
from boneage.score import score_frame
from boneage.training import load_model, save_model  # fmt: skip
from tests.bundle_factory import make_bundle, rsna_cohort, tiny_params


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g) * 0.1,
        "dw.weight": torch.randn(8, 1, 3, 3, generator=g),
        "zero.weight": torch.zeros(4, 6),
        "fc.weight": torch.randn(5, 16, generator=g) * 3,
        "fc.bias": torch.randn(5, generator=g),
        "bn.running_var": torch.rand(8, generator=g) * 400 + 1e-4,
        "bn.num_batches_tracked": torch.tensor(17),
    }


def test_int8_is_per_channel_within_half_a_step_and_keeps_everything_else():
    s = _state()
    packed = compact_state(s, "int8")
    back = expand_state(packed)
    assert back.keys() == s.keys()
    for k, v in s.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
    assert back["bn.num_batches_tracked"].item() == 17
    for k in ("conv.weight", "dw.weight", "fc.weight"):
        rows = s[k].reshape(s[k].shape[0], -1)
        step = rows.abs().amax(1) / 127  # per output channel, not per tensor
        err = (back[k] - s[k]).reshape(rows.shape).abs().amax(1)
        assert torch.all(err <= step * 0.5 * 1.01 + 1e-6), k
    assert torch.equal(back["zero.weight"], s["zero.weight"])
    # vectors in fp16: relative error of half precision
    rel = ((back["bn.running_var"] - s["bn.running_var"]).abs() / s["bn.running_var"]).max()
    assert rel < 1e-3
    # one flat buffer per dtype, not a tensor per entry
    assert set(packed["data"]) == {"int8", "scale", "float16", "int64"}


def test_fp16_and_fp32_and_bad_formats():
    s = _state()
    half = expand_state(compact_state(s, "fp16"))
    for k, v in s.items():
        if v.is_floating_point():
            assert torch.equal(half[k], v.half().float()), k
    assert compact_state(s, "fp32") is s and expand_state(s) is s
    with pytest.raises(ValueError, match="weights precision 'int4'"):
        compact_state(s, "int4")
    bad = compact_state(s, "int8") | {"boneage_weights": "int3/9"}
    with pytest.raises(ValueError, match="m.pt: weights format 'int3/9'"):
        expand_state(bad, "m.pt")


def test_compacted_model_dir_loads_with_load_model(tmp_path):
    torch.manual_seed(0)
    net = AgeNet(ModelConfig(backbone="resnet18", pretrained="none", k=240, sex_dim=4),
                 in_channels=3).eval()  # fmt: skip
    save_model(net, tmp_path / "m", {"kind": "aggregator"})
    full, _ = load_model(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    torch.save(compact_state(state, "int8"), tmp_path / "m" / "model.pt")
    assert weights_precision(tmp_path / "m" / "model.pt") == "int8"
    small, _ = load_model(tmp_path / "m")
    x, sex = torch.rand(2, 3, 64, 64), torch.tensor([0.0, 1.0])
    with torch.no_grad():
        p_full, p_small = full(x, sex).softmax(-1), small(x, sex).softmax(-1)
    k = torch.arange(240.0)
    # expected ages of the two weight sets agree closely (weight-only int8)
    assert torch.allclose((p_full * k).sum(-1), (p_small * k).sum(-1), atol=1.0)


def test_error_statement_bootstrap_is_seeded_and_ordered():
    err = np.abs(np.random.default_rng(1).normal(0, 10, size=400))
    a, b = error_statement(err), error_statement(err)
    assert a == b
    lo, hi = a["mae_ci95"]
    assert lo < err.mean() < hi
    q = a["abs_error_quantiles"]
    assert q["50"] < q["90"] < q["95"]
    c = a["cohort_mae_upper95"]  # smaller cohorts: wider bound, all above the mean
    assert c["10"] > c["25"] > c["100"] > err.mean()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, rsna299):
    """A tiny bundle and an ingest of 12 real RSNA images, about half of them test."""
    root = tmp_path_factory.mktemp("export")
    bundle = make_bundle(root, age=120)
    cohort = rsna_cohort(rsna299, root / "cohort", 12)
    p = tiny_params(ingest={"split": {"train": 0.25, "val": 0.25, "test": 0.5, "seed": 3}})
    ingest(cohort, cohort / "labels.csv", root / "ingest", p.ingest, progress=False)
    return bundle, cohort, root / "ingest"


@pytest.mark.slow
def test_export_writes_compact_bundle_and_a_card_of_what_it_measured(trained, tmp_path):
    bundle, cohort, ingest_dir = trained
    (tmp_path / "data.md").write_text("Test data, no terms.\n")
    (tmp_path / "timings.tsv").write_text(
        "step\twall_s\tcpu_s\tattempts\ningest\t12.0\t\t1\naggregator\t600.0\t1150.5\t2\n"
        "total\t612.0\t1150.5\t3\n"
    )
    out = tmp_path / "ref"
    card = export_bundle(bundle, out, "int8", ingest=ingest_dir, cohort=cohort,
                         data_card=tmp_path / "data.md", command="make it",
                         status="test export", timings=tmp_path / "timings.tsv",
                         machine="2 CPU cores")  # fmt: skip
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["weights_precision"] == "int8"
    src_meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["exported"]["from_weights_sha256"] == src_meta["weights_sha256"]
    assert meta["weights_sha256"] != src_meta["weights_sha256"]
    for c in COMPONENTS:
        assert weights_precision(out / c / "model.pt") == "int8"
    assert card["weights_mb"] < 0.27 * card["source_weights_mb"]

    # the card's numbers are those of scoring the test split with the exported bundle
    man = pd.read_parquet(ingest_dir / "manifest.parquet")
    test = man[man["split"] == "test"].sort_values("id")
    frame = pd.DataFrame({"path": [str(cohort / s) for s in test["source"]],
                          "id": test["id"].astype(str), "sex": test["sex"]})  # fmt: skip
    pred = score_frame(open_model(out), frame)
    df = pred.rename(columns={"boneage_months": "pred_months", "p05_months": "lo_months",
                              "p95_months": "hi_months", "sex_used": "sex"})  # fmt: skip
    df["true_months"] = test["boneage_months"].to_numpy(dtype=float)
    expect = compute_metrics(df[df["status"] == "ok"], EvaluateConfig())
    m = card["metrics"]
    assert len(test) >= 3
    assert m["n"] == m["n_input"] == len(test) and m["n_not_scored"] == 0
    assert m["mae"] == pytest.approx(expect["mae"]) and m["bias"] == pytest.approx(expect["bias"])
    assert m["mae_ci95"][0] <= m["mae"] <= m["mae_ci95"][1]
    pc = card["precision_check"]
    assert pc["n"] == len(test) and pc["mae_exported"] == pytest.approx(m["mae"])
    assert (
        card["split"]["test"]["n"] == len(test)
        and sum(v["n"] for v in card["split"].values()) == 12
    )

    md = (out / "MODEL_CARD.md").read_text()
    for part in ("> **Status:** test export", "## Data", "Test data, no terms.", "## Performance",
                 f"**{m['mae']:.2f}**", "## Training", "make it", "## Limitations",
                 "Greulich–Pyle", f"boneage score --model {out}",
                 "Per-stage time of the run that produced it (2 CPU cores)",
                 "| ingest | 0.2 | — |", "| aggregator (2 attempts) | 10.0 | 19.2 |",
                 "interrupted and resumed", "| total | 10.2 | 19.2 |"):  # fmt: skip
        assert part in md, part
    assert card["timings"]["steps"][1] == {"step": "aggregator", "wall_s": 600.0,
                                           "cpu_s": 1150.5, "attempts": 2}  # fmt: skip

    # exporting again replaces the earlier export; an exported bundle is not re-exported
    export_bundle(bundle, out, "fp16")
    assert weights_precision(out / "aggregator" / "model.pt") == "fp16"
    with pytest.raises(ValueError, match="already exported"):
        export_bundle(out, tmp_path / "again", "int8")


@pytest.mark.slow
def test_export_cli_refusals(trained, tmp_path):
    bundle, cohort, ingest_dir = trained
    run = CliRunner().invoke
    other = tmp_path / "not-an-export"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    r = run(app, ["export", "--bundle", str(bundle), "--out", str(other)])
    assert r.exit_code == 2 and "not an earlier export" in r.output
    assert (other / "keep.txt").is_file()
    r = run(app, ["export", "--bundle", str(bundle), "--out", str(tmp_path / "o"),
                  "--ingest", str(ingest_dir)])  # fmt: skip
    assert r.exit_code == 2 and "--ingest and --cohort together" in r.output
    r = run(app, ["export", "--bundle", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not a boneage model bundle" in r.output
    r = run(app, ["export", "--bundle", str(bundle), "--out", str(tmp_path / "o"),
                  "--weights", "int4"])  # fmt: skip
    assert r.exit_code == 2 and "weights precision 'int4'" in r.output


def test_bundle_with_another_aggregator_describes_it_in_its_params(tmp_path):
    """`boneage bundle --aggregator DIR` (how the reference model takes the best ablation
    row): the bundle's params say the regions and size of the aggregator it holds."""
    import yaml

    src = make_bundle(tmp_path, age=120)
    models = src.parent / "models-120"
    out = tmp_path / "b"
    r = CliRunner().invoke(app, ["bundle", "--models-root", str(models), "--aggregator",
                                 str(models / "carpal"), "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "bundle.json").read_text())
    params = yaml.safe_load((out / "params.yaml").read_text())
    assert meta["regions"] == params["aggregator"]["regions"] == ["R1"]
    assert params["aggregator"]["img_size"] == 48
    assert open_model(out).bundle.params.aggregator.regions == ("R1",)


def test_card_states_the_budget_the_ablation_rows_shared():
    from boneage.modelcard import _ablation_lines

    row = {"regions": "H+R1+R2", "val_mae": 8.5, "test_mae": 8.25, "test_rmse": 11.0,
           "coverage": 0.9, "paper_mae": 4.8}  # fmt: skip
    budget = {"backbone": "tf_efficientnet_lite0", "img_size": 160, "epochs": 4,
              "batch_size": 32, "seed": 0}  # fmt: skip
    ab = {"budget": budget, "rows": [row, {**row, "regions": "O"}]}
    md = "\n".join(_ablation_lines(ab))
    assert "tf_efficientnet_lite0 at 160 px, 4 epochs, batch 32, seed 0" in md
    assert "| H+R1+R2 | 8.50 | 8.25 | 11.00 | 90 % | 4.8 |" in md and "| O | 8.50 |" in md
    assert "not recorded" in "\n".join(_ablation_lines({"rows": [row]}))
    assert _ablation_lines(None) == []
