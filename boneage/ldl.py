"""Label distribution learning (LDL) over monthly age bins.

Heads predict a distribution ``p`` over ``K`` (default 240) bins whose centres are the ages
0, 1, …, K-1 months. Training (Chen et al., arXiv 2006.00202) combines

- expectation regression: ``|y − E[p]|`` with ``E[p] = Σ_k k · p_k``, and
- label distribution learning: ``KL(G ‖ p)`` where ``G = N(y, σ²)`` discretised on the bins.

Conventions (used consistently by every function here):

- Bin ``k`` is the age interval ``[k − 0.5, k + 0.5)`` months with centre ``k``. A distribution
  is read as a histogram density (mass ``p_k`` spread uniformly over bin ``k``). Its mean is
  exactly ``Σ k p_k`` (= :func:`expectation`) and its quantiles come from the piecewise-linear
  CDF (:func:`distribution_quantiles`); the median of a one-hot at bin 50 is 50.0.
- Ages near the ends of the range get a *truncated* Gaussian target: ``N(y, σ²)`` is evaluated
  at the K bin centres and renormalised over those bins. Its mean is therefore pulled inward
  near the edges (for σ = 15, ``E[G(y=0)] ≈ 12`` months, and symmetrically
  ``E[G(y=239)] ≈ 227``); within about 2σ of an edge the KL term and the ``|y − E|`` term pull
  in slightly different directions. Ages outside ``[0, K-1]`` are allowed (the Gaussian is
  still truncated to the bins).
- Everything is computed in at least float32, also when the inputs come from
  ``torch.autocast`` in bf16/fp16, so the loss is finite and usable under mixed precision.

All functions are pure (no state, no config objects) and work on batched tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_BINS = 240
DEFAULT_SIGMA = 15.0

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_SIGMA",
    "bin_centres",
    "distribution_quantiles",
    "distribution_sd",
    "expectation",
    "gaussian_targets",
    "ldl_loss",
]


def _float_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (ints, bf16, fp16, fp32) computes in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def bin_centres(k: int, *, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ages (months) of the K bin centres: 0, 1, …, k-1."""
    return torch.arange(k, device=device, dtype=dtype)


def gaussian_targets(y: Tensor, k: int = DEFAULT_BINS, sigma: float = DEFAULT_SIGMA) -> Tensor:
    """Discretised, truncated Gaussian label distributions.

    Args:
        y: ages in months, shape ``[B]`` (any real or integer dtype).
        k: number of monthly bins (centres 0..k-1).
        sigma: standard deviation in months (> 0).

    Returns:
        ``[B, k]`` tensor (float32, or float64 for float64 ``y``): ``N(y, σ²)`` evaluated at the
        bin centres and normalised to sum to 1 over the k bins (a softmax of the log-density,
        so ages at or beyond the edges are handled without underflow to an all-zero row).
    """
    if y.ndim != 1:
        raise ValueError(f"y must have shape [B], got {tuple(y.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    dtype = _float_dtype(y)
    yf = y.to(dtype)
    centres = bin_centres(k, device=y.device, dtype=dtype)
    z = (centres[None, :] - yf[:, None]) / sigma
    return torch.softmax(-0.5 * z * z, dim=-1)


def expectation(p: Tensor) -> Tensor:
    """Expected age ``Σ_k k · p_k`` of distributions ``p`` of shape ``[B, K]`` → ``[B]``."""
    pf = p.to(_float_dtype(p))
    centres = bin_centres(p.shape[-1], device=p.device, dtype=pf.dtype)
    return (pf * centres).sum(dim=-1)


def distribution_sd(p: Tensor) -> Tensor:
    """Standard deviation (months) of the bin-centre distribution ``p`` ``[B, K]`` → ``[B]``.

    ``sqrt(Σ_k p_k (k − E[p])²)``. (The histogram-density reading adds 1/12 month² of
    within-bin variance; it is left out so that a one-hot has sd 0.)
    """
    pf = p.to(_float_dtype(p))
    centres = bin_centres(p.shape[-1], device=p.device, dtype=pf.dtype)
    mean = (pf * centres).sum(dim=-1, keepdim=True)
    var = (pf * (centres - mean) ** 2).sum(dim=-1)
    return var.clamp_min(0).sqrt()


def distribution_quantiles(p: Tensor, qs: Sequence[float] | Tensor) -> Tensor:
    """Quantiles (months) of distributions ``p`` ``[B, K]`` → ``[B, len(qs)]``.

    ``p`` is read as a histogram density: bin ``k`` spreads its mass uniformly over
    ``[k − 0.5, k + 0.5)``, so the CDF is piecewise linear through the points
    ``(k + 0.5, Σ_{j≤k} p_j)`` and quantiles interpolate linearly inside the bin where the CDF
    crosses ``q``. Rows are renormalised by their total mass first. Results lie in
    ``[−0.5, K − 0.5]``. Each ``q`` must lie strictly inside (0, 1), e.g. ``(0.05, 0.5, 0.95)``
    for the median and a 90 % interval.
    """
    if p.ndim != 2:
        raise ValueError(f"p must have shape [B, K], got {tuple(p.shape)}")
    dtype = _float_dtype(p)
    pf = p.to(dtype).clamp_min(0)
    q = torch.as_tensor(qs, dtype=dtype, device=p.device).reshape(-1)
    if q.numel() == 0:
        return pf.new_zeros((pf.shape[0], 0))
    if not bool(((q > 0) & (q < 1)).all()):
        raise ValueError(f"quantile levels must lie strictly between 0 and 1, got {q.tolist()}")
    k = pf.shape[-1]
    total = pf.sum(dim=-1, keepdim=True)
    if not bool((total > 0).all()):
        raise ValueError("every row of p must have positive total mass")
    pn = pf / total
    cdf = pn.cumsum(dim=-1)
    qb = q.expand(pf.shape[0], -1).contiguous()
    # First bin whose cumulative mass reaches q. Its own mass is > 0 (q > CDF of the bin
    # before it), apart from round-off, which the clamps below absorb.
    idx = torch.searchsorted(cdf.contiguous(), qb, right=False).clamp(max=k - 1)
    prev_idx = (idx - 1).clamp(min=0)
    cdf_before = torch.where(idx > 0, cdf.gather(-1, prev_idx), torch.zeros_like(qb))
    mass = pn.gather(-1, idx)
    tiny = torch.finfo(dtype).tiny
    frac = ((qb - cdf_before) / mass.clamp_min(tiny)).clamp(0, 1)
    return idx.to(dtype) - 0.5 + frac


def _reduce(x: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def ldl_loss(
    logits: Tensor,
    y: Tensor,
    sigma: float = DEFAULT_SIGMA,
    lam: float = 1.0,
    reduction: str = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Expectation regression + label distribution learning loss.

    ``loss_i = |y_i − E[softmax(logits_i)]| + lam · KL(G_i ‖ softmax(logits_i))`` with
    ``G_i = gaussian_targets(y_i, K, sigma)`` and ``K = logits.shape[-1]``.

    The KL divergence is computed from ``log_softmax`` (no ``log`` of a probability that may
    underflow): ``KL(G ‖ p) = Σ_k G_k (log G_k − log p_k)`` with ``0 · log 0 = 0``. Logits are
    upcast to float32 first, so the loss is finite under bf16/fp16 autocast.

    Args:
        logits: ``[B, K]`` unnormalised scores.
        y: ``[B]`` true ages in months.
        sigma: label-distribution standard deviation in months.
        lam: weight of the KL term (0 → pure expectation regression).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (per-sample ``[B]``).

    Returns:
        ``(loss, parts)``: ``parts = {"mae": ..., "kl": ...}`` are the two terms (reduced the same
        way as the loss), detached, for logging.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape [B, K], got {tuple(logits.shape)}")
    if y.shape != logits.shape[:1]:
        raise ValueError(f"y must have shape [B] = {tuple(logits.shape[:1])}, got {tuple(y.shape)}")
    dtype = _float_dtype(logits)
    log_p = F.log_softmax(logits.to(dtype), dim=-1)
    yf = y.to(device=logits.device, dtype=dtype)
    mae = (yf - expectation(log_p.exp())).abs()
    g = gaussian_targets(yf, k=logits.shape[-1], sigma=sigma)
    kl_terms = torch.xlogy(g, g) - g * log_p
    kl = torch.where(g > 0, kl_terms, torch.zeros_like(kl_terms)).sum(dim=-1)
    per_sample = mae + lam * kl
    loss = _reduce(per_sample, reduction)
    parts = {
        "mae": _reduce(mae, reduction).detach(),
        "kl": _reduce(kl, reduction).detach(),
    }
    return loss, parts
