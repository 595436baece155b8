"""Scores for probabilistic forecasts: NLL, CRPS, energy score, interval coverage, MSE/MAE.

Every function takes an optional ``mask`` (1 = the value was observed) and averages over the
observed entries only. Samples come first: ``samples (n_samples, *shape)`` against ``y (*shape)``.

Gneiting & Raftery (2007), "Strictly Proper Scoring Rules, Prediction, and Estimation" (CRPS and
energy score).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_mean", "nll", "crps_samples", "energy_score", "interval_coverage", "mse", "mae"]


def _mask(y: Tensor, mask: Tensor | None) -> Tensor:
    return torch.ones_like(y) if mask is None else mask.to(y)


def masked_mean(values: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``values`` over entries where ``mask`` is 1 (all entries without a mask)."""
    m = _mask(values, mask)
    if m.sum() == 0:
        raise ValueError("the mask selects no entry")
    return (values * m).sum() / m.sum()


def nll(log_prob: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood of the observed entries, from their log-densities."""
    return masked_mean(-log_prob, mask)


def crps_samples(samples: Tensor, y: Tensor, mask: Tensor | None = None, reduce: bool = True) -> Tensor:
    """CRPS of a marginal sample ensemble: ``E|X - y| - E|X - X'| / 2`` (lower is better).

    The second term uses the sorted-sample identity (O(n log n)); this is the usual estimator
    with ``1/n^2`` normalisation, as in ``properscoring`` and ``scoringrules``.

    >>> import torch
    >>> crps_samples(torch.zeros(10, 3), torch.ones(3))  # a point mass: the absolute error
    tensor(1.)
    >>> crps_samples(torch.tensor([[0.0], [1.0]]), torch.tensor([0.0]))  # 1/2 - 1/4
    tensor(0.2500)
    """
    if samples.shape[1:] != y.shape:
        raise ValueError(
            f"samples must have shape (n_samples, *y.shape={tuple(y.shape)}), got {tuple(samples.shape)}"
        )
    n = samples.shape[0]
    term1 = (samples - y).abs().mean(0)
    s = samples.sort(dim=0).values
    weights = (2 * torch.arange(1, n + 1, dtype=s.dtype, device=s.device) - n - 1).view(-1, *[1] * y.dim())
    term2 = (weights * s).sum(0) / (n * n)
    crps = term1 - term2
    return masked_mean(crps, mask) if reduce else crps


def energy_score(samples: Tensor, y: Tensor, mask: Tensor | None = None, beta: float = 1.0) -> Tensor:
    """Energy score of joint samples ``(n, *batch, d)`` for vectors ``y (*batch, d)``.

    ``ES = E||X - y||^beta - E||X - X'||^beta / 2`` over the last axis; ``mask (*batch,)`` selects
    which vectors count.

    >>> import torch
    >>> energy_score(torch.zeros(10, 3, 2), torch.tensor([[3.0, 4.0]]).expand(3, 2))  # |(3, 4)|
    tensor(5.)
    """
    if samples.shape[1:] != y.shape:
        raise ValueError(
            f"samples must have shape (n_samples, *y.shape={tuple(y.shape)}), got {tuple(samples.shape)}"
        )
    n = samples.shape[0]
    term1 = (samples - y).norm(dim=-1).pow(beta).mean(0)
    flat = samples.movedim(0, -2)  # (*batch, n, d)
    # Direct differences, not the matrix-product shortcut: its rounding leaves distances of about
    # 1e-8 (float64) to 1e-4 (float32) on the diagonal, which ``pow(beta < 1)`` inflates.
    dist = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
    pair = dist.pow(beta).sum((-1, -2)) / (n * n)
    es = term1 - 0.5 * pair
    return masked_mean(es, mask)


def interval_coverage(lower: Tensor, upper: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Fraction of observed values inside ``[lower, upper]``.

    >>> import torch
    >>> y = torch.tensor([0.5, 2.0, 0.2, -1.0])
    >>> interval_coverage(torch.zeros(4), torch.ones(4), y)
    tensor(0.5000)
    >>> interval_coverage(torch.zeros(4), torch.ones(4), y, mask=torch.tensor([1, 0, 1, 0]))
    tensor(1.)
    """
    inside = ((y >= lower) & (y <= upper)).to(y.dtype)
    return masked_mean(inside, mask)


def mse(prediction: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error over observed entries."""
    return masked_mean((prediction - y).square(), mask)


def mae(prediction: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error over observed entries."""
    return masked_mean((prediction - y).abs(), mask)
