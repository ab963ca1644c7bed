"""Label distribution learning: targets, summaries of a distribution, and the loss."""

from __future__ import annotations

import math

import pytest
import torch

from boneage.ldl import (
    distribution_quantiles,
    distribution_sd,
    expectation,
    gaussian_targets,
    ldl_loss,
)

K = 240


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize("age", [0.0, 0.4, 60.0, 120.0, 200.5, 239.0, 240.0])
def test_gaussian_targets_rows_sum_to_one(age):
    g = gaussian_targets(torch.tensor([age]), k=K, sigma=15.0)
    assert g.shape == (1, K)
    assert g.dtype == torch.float32
    assert torch.isfinite(g).all() and (g >= 0).all()
    assert g.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_gaussian_targets_batch_and_peak():
    y = torch.tensor([10.0, 120.0, 230.0])
    g = gaussian_targets(y, k=K, sigma=15.0)
    assert g.shape == (3, K)
    assert torch.allclose(g.sum(-1), torch.ones(3), atol=1e-5)
    assert g.argmax(-1).tolist() == [10, 120, 230]


def test_gaussian_targets_integer_and_float64_inputs():
    assert gaussian_targets(torch.tensor([120]), k=K).dtype == torch.float32
    g64 = gaussian_targets(torch.tensor([120.0], dtype=torch.float64), k=K)
    assert g64.dtype == torch.float64


def test_gaussian_targets_narrow_sigma_at_far_edge_is_not_all_zero():
    # N(500, 0.5²) underflows everywhere on 0..239 when computed as exp; softmax keeps mass.
    g = gaussian_targets(torch.tensor([500.0]), k=K, sigma=0.5)
    assert g.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert g[0, -1].item() == pytest.approx(1.0, abs=1e-5)


def test_gaussian_targets_rejects_bad_args():
    with pytest.raises(ValueError):
        gaussian_targets(torch.tensor([[1.0]]))
    with pytest.raises(ValueError):
        gaussian_targets(torch.tensor([1.0]), sigma=0.0)


# --------------------------------------------------------------------------- summaries


def test_expectation_of_symmetric_distribution():
    p = torch.zeros(2, K)
    p[0, 100] = 1.0
    p[1, 90], p[1, 100], p[1, 110] = 0.25, 0.5, 0.25
    assert expectation(p).tolist() == pytest.approx([100.0, 100.0], abs=1e-4)


def test_expectation_and_sd_of_gaussian_target():
    g = gaussian_targets(torch.tensor([120.0]), k=K, sigma=15.0)
    assert expectation(g).item() == pytest.approx(120.0, abs=1e-3)
    assert distribution_sd(g).item() == pytest.approx(15.0, abs=0.05)


def test_truncated_target_mean_is_pulled_inward_at_edges():
    """Documented behaviour: near the ends the target is a truncated Gaussian, so its mean
    lies inside the range (≈ half-normal mean σ·sqrt(2/π) ≈ 12 months for σ = 15)."""
    g = gaussian_targets(torch.tensor([0.0, 239.0]), k=K, sigma=15.0)
    e = expectation(g)
    assert 0.0 < e[0].item() < 15.0
    assert e[0].item() == pytest.approx(15.0 * math.sqrt(2 / math.pi), abs=0.5)
    assert e[1].item() == pytest.approx(239.0 - e[0].item(), abs=1e-3)  # mirror image
    assert distribution_sd(g)[0].item() < 15.0


def test_quantiles_of_one_hot():
    p = torch.zeros(1, K)
    p[0, 50] = 1.0
    q = distribution_quantiles(p, (0.05, 0.5, 0.95))
    assert q.shape == (1, 3)
    assert q[0].tolist() == pytest.approx([49.55, 50.0, 50.45], abs=1e-4)
    assert distribution_sd(p).item() == 0.0


def test_quantiles_of_gaussian_target_match_normal_quantiles():
    g = gaussian_targets(torch.tensor([120.0, 60.0]), k=K, sigma=15.0)
    q = distribution_quantiles(g, torch.tensor([0.05, 0.5, 0.95]))
    z95 = 1.6448536
    assert q[0].tolist() == pytest.approx([120 - z95 * 15, 120.0, 120 + z95 * 15], abs=0.1)
    assert q[1, 1].item() == pytest.approx(60.0, abs=0.05)
    # monotone in q
    assert (q[:, 1:] >= q[:, :-1]).all()


def test_quantiles_interpolate_between_bins_and_renormalise():
    p = torch.zeros(1, K)
    p[0, 10], p[0, 20] = 2.0, 2.0  # unnormalised: total mass 4
    q = distribution_quantiles(p, (0.25, 0.5, 0.75))
    # bin 10 spans [9.5, 10.5): q=0.25 is halfway through it; the CDF is flat between bins.
    assert q[0].tolist() == pytest.approx([10.0, 10.5, 20.0], abs=1e-4)


def test_quantiles_reject_levels_outside_open_interval():
    p = torch.full((1, K), 1.0 / K)
    for bad in ((0.0,), (1.0,), (-0.1, 0.5)):
        with pytest.raises(ValueError):
            distribution_quantiles(p, bad)


# --------------------------------------------------------------------------- loss


def test_kl_is_zero_when_prediction_equals_target_and_nonnegative_otherwise():
    y = torch.tensor([30.0, 120.0, 239.0])
    g = gaussian_targets(y, k=K, sigma=15.0)
    # logits = log G reproduce G exactly after softmax (zeros in G → very negative logits)
    logits = torch.log(g.clamp_min(1e-30))
    loss, parts = ldl_loss(logits, y, sigma=15.0, lam=1.0, reduction="none")
    assert parts["kl"].abs().max().item() < 1e-5
    torch.manual_seed(0)
    for _ in range(5):
        _, parts = ldl_loss(torch.randn(8, K) * 3, torch.rand(8) * 239, sigma=15.0, lam=1.0)
        assert parts["kl"].item() >= 0.0


def test_lambda_zero_is_pure_expectation_regression():
    torch.manual_seed(0)
    logits = torch.randn(4, K)
    y = torch.tensor([12.0, 50.0, 150.0, 230.0])
    loss, parts = ldl_loss(logits, y, sigma=15.0, lam=0.0, reduction="none")
    expected = (y - expectation(torch.softmax(logits, -1))).abs()
    assert torch.allclose(loss, expected, atol=1e-4)
    assert torch.allclose(parts["mae"], expected, atol=1e-4)


def test_loss_combines_terms_and_reductions():
    torch.manual_seed(1)
    logits = torch.randn(5, K)
    y = torch.rand(5) * 239
    per, parts_none = ldl_loss(logits, y, sigma=10.0, lam=2.0, reduction="none")
    assert per.shape == (5,)
    assert torch.allclose(per, parts_none["mae"] + 2.0 * parts_none["kl"], atol=1e-4)
    mean, parts_mean = ldl_loss(logits, y, sigma=10.0, lam=2.0)
    total, _ = ldl_loss(logits, y, sigma=10.0, lam=2.0, reduction="sum")
    assert mean.ndim == 0 and mean.item() == pytest.approx(per.mean().item(), rel=1e-5)
    assert total.item() == pytest.approx(per.sum().item(), rel=1e-5)
    assert parts_mean["mae"].item() == pytest.approx(parts_none["mae"].mean().item(), rel=1e-5)
    with pytest.raises(ValueError):
        ldl_loss(logits, y, reduction="max")


def test_parts_are_detached_and_loss_dtype_float32():
    logits = torch.zeros(2, K, requires_grad=True)
    loss, parts = ldl_loss(logits, torch.tensor([10.0, 20.0]), sigma=15.0, lam=1.0)
    assert loss.requires_grad and loss.dtype == torch.float32
    assert not parts["mae"].requires_grad and not parts["kl"].requires_grad


def test_shape_errors():
    with pytest.raises(ValueError):
        ldl_loss(torch.zeros(2, K), torch.zeros(3))
    with pytest.raises(ValueError):
        ldl_loss(torch.zeros(K), torch.zeros(1))


def test_one_sgd_step_moves_expectation_toward_target_and_reduces_loss():
    logits = torch.zeros(1, K, requires_grad=True)  # uniform → E = 119.5
    y = torch.tensor([60.0])
    opt = torch.optim.SGD([logits], lr=1.0)
    loss0, _ = ldl_loss(logits, y, sigma=15.0, lam=1.0)
    e0 = expectation(torch.softmax(logits, -1)).item()
    assert e0 == pytest.approx(119.5, abs=1e-4)
    opt.zero_grad()
    loss0.backward()
    assert torch.isfinite(logits.grad).all()
    opt.step()
    loss1, _ = ldl_loss(logits, y, sigma=15.0, lam=1.0)
    e1 = expectation(torch.softmax(logits, -1)).item()
    assert 60.0 <= e1 < e0 - 1.0
    assert loss1.item() < loss0.item()


@pytest.mark.parametrize("lam", [0.0, 1e3])
def test_each_term_alone_pulls_toward_target(lam):
    """λ = 0: only |y − E| acts; λ = 1000: the KL term dominates. Both move E toward y."""
    logits = torch.zeros(1, K, requires_grad=True)
    loss, _ = ldl_loss(logits, torch.tensor([200.0]), sigma=15.0, lam=lam)
    loss.backward()
    with torch.no_grad():
        stepped = logits - 1e-3 * logits.grad / logits.grad.abs().max()
    assert expectation(torch.softmax(stepped, -1)).item() > 119.5


def test_loss_is_finite_under_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    head = torch.nn.Linear(32, K)
    x = torch.randn(6, 32)
    y = torch.tensor([0.0, 1.0, 60.0, 120.0, 228.0, 239.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x)
        assert logits.dtype == torch.bfloat16
        loss, parts = ldl_loss(logits, y, sigma=15.0, lam=1.0)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(parts["mae"]) and torch.isfinite(parts["kl"])
    loss.backward()
    assert torch.isfinite(head.weight.grad).all()


def test_summaries_accept_bf16_input():
    g = gaussian_targets(torch.tensor([120.0]), k=K).to(torch.bfloat16)
    assert expectation(g).dtype == torch.float32
    assert expectation(g).item() == pytest.approx(120.0, abs=0.5)
    assert distribution_quantiles(g, (0.5,)).item() == pytest.approx(120.0, abs=0.5)
