"""Scores for probabilistic forecasts: NLL, CRPS, energy score, interval coverage, MSE/MAE.

Every function takes an optional ``mask`` (1 = the value was observed) and averages over the
observed entries only. Samples come first: ``samples (n_samples, *shape)`` against ``y (*shape)``.

Gneiting & Raftery (2007), "Strictly Proper Scoring Rules, Prediction, and Estimation" (CRPS and
energy score).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

__all__ = [
    "crps_per_value",
    "crps_samples",
    "energy_score",
    "evaluate",
    "interval_coverage",
    "mae",
    "masked_mean",
    "mse",
    "nll",
]


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


def crps_per_value(samples: np.ndarray, y: np.ndarray) -> np.ndarray:
    """CRPS of each entry of ``y (...)`` under draws ``samples (n, ...)`` (NaN where ``y`` is NaN)."""
    observed = ~np.isnan(y)
    crps = crps_samples(
        torch.from_numpy(np.asarray(samples, dtype=np.float64)),
        torch.from_numpy(np.where(observed, y, 0.0)),
        reduce=False,
    )
    return np.where(observed, crps.numpy(), np.nan)


def _quantile_columns(frame: pd.DataFrame) -> dict[float, str]:
    """The frame's ``q{100 q}`` columns by level."""
    out = {}
    for col in frame.columns:
        match = re.fullmatch(r"q(\d+(?:\.\d+)?)", str(col))
        if match:
            out[float(match.group(1)) / 100] = col
    return dict(sorted(out.items()))


def _horizon_groups(horizon: pd.Series, n_bins: int) -> pd.Series:
    """Horizons as group labels: the values themselves when there are at most ``n_bins`` of them,
    else ``n_bins`` equal-count ranges ``(low, high]``."""
    is_span = pd.api.types.is_timedelta64_dtype(horizon)
    if horizon.nunique() <= n_bins:
        return horizon.astype(str)
    numeric = horizon.dt.total_seconds() if is_span else horizon.astype(float)
    bins = pd.qcut(numeric, q=n_bins, duplicates="drop")

    def show(x: float) -> str:
        return str(pd.Timedelta(seconds=x)) if is_span else f"{x:.4g}"

    return bins.map(lambda iv: f"({show(iv.left)}, {show(iv.right)}]").astype(str)


def evaluate(
    frame: pd.DataFrame,
    metrics: Sequence[str] = ("crps", "mae", "mse", "coverage"),
    by: Sequence[str] = ("variable", "horizon"),
    horizon_bins: int = 4,
) -> pd.DataFrame:
    """Scores of a long forecast frame (:func:`ctflow.cross_validation`'s: ``actual``, ``mean``,
    ``q{100 q}`` columns and ``crps``) per group of ``by``: ``crps`` (the frame's own column, else
    twice the average quantile loss over its levels), ``mae`` and ``mse`` of the mean, and
    ``coverage_{c}`` of every central interval its quantile levels make. ``"horizon"`` in ``by``
    groups the horizons into ``horizon_bins`` equal-count bins (labelled by their ranges).

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"variable": ["y", "y"], "horizon": [1.0, 2.0], "actual": [0.0, 1.0],
    ...                       "mean": [0.5, 0.5], "q10": [-1.0, 0.8], "q90": [1.0, 1.2], "crps": [0.2, 0.3]})
    >>> evaluate(frame, by=("variable",)).round(3).to_dict("records")
    [{'variable': 'y', 'n': 2, 'crps': 0.25, 'mae': 0.5, 'mse': 0.25, 'coverage_80': 1.0}]
    """
    allowed = ("crps", "mae", "mse", "coverage")
    unknown = [m for m in metrics if m not in allowed]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(allowed)}")
    missing = [c for c in ("actual", "mean", *by) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame has no column(s) {missing}; columns are {list(map(str, frame.columns))}")
    data = frame[frame["actual"].notna()]
    keys = list(by)
    levels = _quantile_columns(data)
    y = data["actual"].to_numpy(dtype=np.float64)
    error = data["mean"].to_numpy(dtype=np.float64) - y
    derived: dict[str, np.ndarray] = {"_abs": np.abs(error), "_sq": error**2}
    if "horizon" in keys:
        derived["_horizon"] = _horizon_groups(data["horizon"], horizon_bins).to_numpy()
        keys[keys.index("horizon")] = "_horizon"
    if "crps" not in data.columns and levels:
        losses = [np.maximum(q * (y - data[c]), (q - 1) * (y - data[c])) for q, c in levels.items()]
        derived["crps"] = 2 * np.mean(losses, axis=0)
    pairs = [(q, 1 - q) for q in levels if q < 0.5 and any(abs(1 - q - r) < 1e-9 for r in levels)]
    for low, high in pairs:
        high_col = levels[min(levels, key=lambda r: abs(r - high))]
        inside = (y >= data[levels[low]].to_numpy()) & (y <= data[high_col].to_numpy())
        derived[f"coverage_{round(100 * (high - low))}"] = inside.astype(float)
    data = pd.concat(
        [data[[c for c in data.columns if c not in derived]], pd.DataFrame(derived, index=data.index)], axis=1
    )
    columns = {"n": ("actual", "size")}
    if "crps" in metrics and "crps" in data.columns:
        columns["crps"] = ("crps", "mean")
    if "mae" in metrics:
        columns["mae"] = ("_abs", "mean")
    if "mse" in metrics:
        columns["mse"] = ("_sq", "mean")
    if "coverage" in metrics:
        for low, high in sorted(pairs, key=lambda p: p[1] - p[0]):
            name = f"coverage_{round(100 * (high - low))}"
            columns[name] = (name, "mean")
    if not keys:
        return data.assign(_all=0).groupby("_all").agg(**columns).reset_index(drop=True)
    out = data.groupby(keys, sort=True, observed=True).agg(**columns).reset_index()
    return out.rename(columns={"_horizon": "horizon"})
