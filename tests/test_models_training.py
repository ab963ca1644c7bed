"""AgeNet, CAM, the training loop, checkpoints and MLflow tracking."""

from __future__ import annotations

import pytest
import torch

from boneage.config import AugmentConfig, ModelConfig, TrainConfig
from boneage.models import AgeNet
from boneage.tracking import Tracker
from boneage.training import (
    TensorData,
    fit,
    load_model,
    predict,
    resize_batch,
    save_model,
    tta_views,
)
from tests.corpus import bar_task

MCFG = ModelConfig(backbone="resnet18", pretrained="none", output_stride=32, k=240)


def _data(n: int, seed: int) -> TensorData:
    return bar_task(n, seed)


def test_forward_shapes_and_sex_input():
    m = AgeNet(MCFG)
    logits, feats = m(torch.rand(2, 1, 64, 64), return_features=True)
    assert logits.shape == (2, 240) and feats.shape == (2, 512, 2, 2)
    ms = AgeNet(MCFG.model_copy(update={"sex_dim": 8}))
    assert ms(torch.rand(2, 1, 64, 64), torch.tensor([0.0, 1.0])).shape == (2, 240)
    with pytest.raises(ValueError, match="sex"):
        ms(torch.rand(2, 1, 64, 64))
    with pytest.raises(ValueError, match="in_channels"):
        AgeNet(MCFG, in_channels=0)
    assert AgeNet(MCFG, in_channels=2)(torch.rand(2, 2, 64, 64)).shape == (2, 240)


def test_per_region_fusion_gives_each_region_its_own_backbone(tmp_path):
    torch.manual_seed(0)
    cfg = MCFG.model_copy(update={"fusion": "per_region", "sex_dim": 4})
    m = AgeNet(cfg, in_channels=3).eval()
    single = AgeNet(MCFG).eval()
    assert m.head.in_features == 3 * single.n_features + 4
    # same architecture and start per branch, separate parameters
    assert all(
        p is not q for p, q in zip(m.backbone.parameters(), m.branches[0].parameters(), strict=True)
    )
    x, sex = torch.rand(2, 3, 64, 64), torch.tensor([0.0, 1.0])
    with torch.no_grad():
        # branch i sees region i only: the pooled features are the concatenation of each
        # backbone's features of its own grayscale region
        z = torch.cat([m.pool(m._branch(i, x[:, i : i + 1])) for i in range(3)], 1)
        z = torch.cat([z, m.sex_embed(sex.view(-1, 1))], 1)
        assert torch.allclose(m(x, sex), m.head(z), atol=1e-5)
        # changing region 2 changes only branch 2's features
        x2 = x.clone()
        x2[:, 2] = torch.rand(2, 64, 64)
        f0 = m.pool(m._branch(0, x2[:, :1]))
        assert torch.allclose(f0, z[:, : single.n_features], atol=1e-6)
        assert not torch.allclose(m(x2, sex), m(x, sex))
    with pytest.raises(ValueError, match="per_region"):
        m(x, sex, return_features=True)
    save_model(m, tmp_path / "pr", {"kind": "aggregator"})
    loaded, meta = load_model(tmp_path / "pr")
    assert meta["model"]["fusion"] == "per_region" and loaded.branches is not None
    with torch.no_grad():
        assert torch.allclose(loaded(x, sex), m(x, sex), atol=1e-5)


def test_cam_is_normalised_and_invariant_to_a_shift_of_all_class_weights():
    torch.manual_seed(0)
    m = AgeNet(MCFG).eval()
    x = torch.rand(3, 1, 96, 96)
    with torch.no_grad():
        logits, feats = m(x, return_features=True)
        cam, peak = m.cam(feats, logits, 12, (96, 96))
        assert cam.shape == (3, 96, 96) and cam.min() >= 0 and cam.max() <= 1
        assert torch.allclose(cam.amax(dim=(1, 2)), torch.ones(3)) or (peak == 0).any()
        # softmax (so the prediction) is unchanged by adding v to every class's weights;
        # the centred CAM must be unchanged too
        m.head.weight += torch.randn(1, m.head.weight.shape[1])
        logits2, feats2 = m(x, return_features=True)
        cam2, _ = m.cam(feats2, logits2, 12, (96, 96))
    assert torch.allclose(torch.softmax(logits, 1), torch.softmax(logits2, 1), atol=1e-5)
    assert torch.allclose(cam, cam2, atol=1e-4)


def test_cam_without_window_uses_the_predicted_distribution():
    torch.manual_seed(1)
    m = AgeNet(MCFG).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        logits, feats = m(x, return_features=True)
        cam, _ = m.cam(feats, logits, None, feats.shape[-2:])
        w = m.head.weight[:, : m.n_features]
        w = w - w.mean(0, keepdim=True)
        ref = torch.einsum("bc,bchw->bhw", torch.softmax(logits, 1) @ w, feats).relu()
        ref = ref / ref.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        # a window covering every class weights all classes equally: a different map
        wide, _ = m.cam(feats, logits, 1000, feats.shape[-2:])
    assert torch.allclose(cam, ref, atol=1e-4)
    assert not torch.allclose(cam, wide, atol=1e-3)


def test_fit_learns_and_checkpoint_roundtrips(tmp_path):
    train, val = _data(96, 0), _data(32, 1)
    cfg = TrainConfig(epochs=6, batch_size=16, lr=3e-3, patience=6, device="cpu")
    model = AgeNet(MCFG)
    before = float(
        (predict(model, val, torch.device("cpu")).argmax(1).float() - val.age).abs().mean()
    )
    res = fit(model, train, val, cfg, AugmentConfig(rotation_deg=0, shift=0.0, scale=(1, 1)),
              progress=False)  # fmt: skip
    assert res.epochs_run == 6 and len(res.history) == 6
    assert res.best_val_mae == min(h["val_mae"] for h in res.history)
    assert res.best_val_mae < 0.6 * before
    save_model(model, tmp_path / "m", {"stage": "hand", "img_size": 32})
    loaded, meta = load_model(tmp_path / "m")
    assert meta["stage"] == "hand" and meta["model"]["backbone"] == "resnet18"
    # fp32: the weights round-trip exactly (bf16 results depend on the memory format)
    p1 = predict(model.cpu(), val, torch.device("cpu"), amp="fp32")
    p2 = predict(loaded, val, torch.device("cpu"), amp="fp32")
    assert torch.allclose(p1, p2, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "nothing")


def test_tracker_logs_to_sqlite(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = Tracker(uri=uri)
    with t.run("exp", "run1", {"stage": "hand"}):
        t.log_params({"model": {"backbone": "x"}, "n": 3})
        t.log_metrics({"val_mae": 12.5}, step=1)
        f = tmp_path / "a.json"
        f.write_text("{}")
        t.log_artifact(f)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run = client.get_run(t.run_id)
    assert run.data.params["model.backbone"] == "x"
    assert run.data.metrics["val_mae"] == 12.5
    assert run.data.tags["stage"] == "hand"
    assert (tmp_path / "artifacts").is_dir()
    off = Tracker(enabled=False)
    with off.run("exp", "r"):
        off.log_metrics({"a": 1})
    assert off.run_id is None


class _Killed(RuntimeError):
    pass


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_fit_resumes_after_a_kill_exactly_as_an_uninterrupted_run(tmp_path, ema):
    """Per-epoch checkpoints: a run killed after epoch 2 and started again runs epochs 3-4
    only and ends with the uninterrupted run's history and weights (also with EMA)."""
    train, val = _data(32, 0), _data(8, 1)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=3e-3, patience=9, device="cpu", ema=ema)
    aug = AugmentConfig(rotation_deg=5)

    def run(ckpt=None, on_epoch=None):
        torch.manual_seed(0)
        model = AgeNet(MCFG)
        res = fit(model, train, val, cfg, aug, progress=False, checkpoint=ckpt,
                  on_epoch=on_epoch)  # fmt: skip
        return model, res

    ref_model, ref = run()
    ckpt = tmp_path / "ckpt.pt"

    def kill_after_2(row):
        if row["epoch"] == 2:
            raise _Killed

    with pytest.raises(_Killed):
        run(ckpt, kill_after_2)
    assert ckpt.is_file()
    epochs_run = []
    model, res = run(ckpt, lambda row: epochs_run.append(row["epoch"]))
    assert epochs_run == [3, 4]  # epochs before the kill were not re-run
    assert [h["val_mae"] for h in res.history] == [h["val_mae"] for h in ref.history]
    assert res.best_epoch == ref.best_epoch and res.samples_seen == ref.samples_seen
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_a_checkpoint_for_other_settings_is_not_resumed(tmp_path):
    train, val = _data(16, 0), _data(8, 1)
    ckpt = tmp_path / "ckpt.pt"
    cfg = TrainConfig(epochs=1, batch_size=16, device="cpu")
    fit(AgeNet(MCFG), train, val, cfg, None, progress=False, checkpoint=ckpt)
    seen = []
    other = cfg.model_copy(update={"epochs": 2, "lr": 5e-4})
    fit(AgeNet(MCFG), train, val, other, None, progress=False, checkpoint=ckpt,
        on_epoch=lambda row: seen.append(row["epoch"]))  # fmt: skip
    assert seen == [1, 2]  # started afresh


def test_progressive_resizing_trains_early_epochs_at_the_low_size(tmp_path):
    """low_res_epochs=2 of 3: the first two epochs' steps see low_res_size inputs, the last
    epoch's the full size; validation is at full size throughout; history says which."""
    train, val = _data(32, 0), _data(8, 1)
    full = train.x.shape[-1]
    cfg = TrainConfig(epochs=3, batch_size=16, patience=9, device="cpu", low_res_size=32,
                      low_res_epochs=2)  # fmt: skip
    model = AgeNet(MCFG)
    seen: list[tuple[bool, int]] = []
    model.register_forward_pre_hook(lambda m, a: seen.append((m.training, a[0].shape[-1])))
    res = fit(model, train, val, cfg, AugmentConfig(rotation_deg=5), progress=False)
    assert [h["train_size"] for h in res.history] == [32, 32, full]
    steps = len(range(0, 32, 16))
    train_sizes = [s for training, s in seen if training]
    assert train_sizes == [32] * 2 * steps + [full] * steps
    assert {s for training, s in seen if not training} == {full}
    with pytest.raises(ValueError, match="low_res_size"):
        TrainConfig(low_res_epochs=2)


def test_resize_batch_antialiases_and_keeps_the_layout():
    x = torch.zeros(2, 1, 64, 64)
    x[..., ::2] = 1.0  # a pattern finer than the target grid: antialiasing averages it
    y = resize_batch(x.contiguous(memory_format=torch.channels_last), 32, True)
    assert y.shape == (2, 1, 32, 32) and y.is_contiguous(memory_format=torch.channels_last)
    inner = y[..., 1:-1, 1:-1]  # the borders weight a truncated filter
    assert torch.allclose(inner, torch.full_like(inner, 0.5), atol=0.02)
    assert resize_batch(x, 64, False) is x


def test_tta_views_shift_by_whole_pixels_with_black_fill():
    x = torch.arange(2 * 1 * 4 * 10, dtype=torch.float32).reshape(2, 1, 4, 10) + 1
    views = tta_views(x, 0.2)  # 2 px along x (10 wide), 1 px along y (4 high)
    assert len(views) == 5 and views[0] is x
    right, left, down, up = views[1:]
    assert torch.equal(right[..., 2:], x[..., :-2]) and (right[..., :2] == 0).all()
    assert torch.equal(left[..., :-2], x[..., 2:]) and (left[..., -2:] == 0).all()
    assert torch.equal(down[..., 1:, :], x[..., :-1, :]) and (down[..., :1, :] == 0).all()
    assert torch.equal(up[..., :-1, :], x[..., 1:, :]) and (up[..., -1:, :] == 0).all()


def test_predict_with_tta_averages_the_five_views():
    torch.manual_seed(0)
    data = _data(6, 0)
    model = AgeNet(MCFG).eval()
    got = predict(model, data, torch.device("cpu"), batch_size=4, amp="fp32", tta_shift=0.1)
    x = data.x.float() / 255
    with torch.no_grad():
        want = torch.stack([torch.softmax(model(v, data.sex), 1) for v in tta_views(x, 0.1)])
    torch.testing.assert_close(got, want.mean(0), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, predict(model, data, torch.device("cpu"), amp="fp32"))
