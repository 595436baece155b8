"""Validation by forecasting held-out last observations, and its report against persistence."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .baselines import LastValueBaseline
from .checkpoint import rng_scope
from .data.irregular import IrregularBatch, to_dataframe
from .metrics import crps_samples, interval_coverage

__all__ = ["validation_report"]


def _model_draws(model: nn.Module, context: IrregularBatch, target: IrregularBatch, n: int) -> tuple:
    """Marginal predictive draws ``(n, B, Q, D)`` and log-densities ``(B, Q)`` of the targets."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ctx, tgt = context.to(param.device, param.dtype), target.to(param.device, param.dtype)
            predictive = model.predict(model.filter(ctx), tgt.times, model.known_inputs(tgt))
            draws = predictive.sample(n)
            log_prob = predictive.log_prob(tgt.values, tgt.mask)
    finally:
        model.train(was_training)
    return draws.double().cpu(), log_prob.double().cpu()


def _scores(draws: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """CRPS and 80%/95% central-interval coverage of draws ``(n, ...)`` over observed ``y``."""
    out = {"crps": float(crps_samples(draws, y, mask))}
    for level in (0.8, 0.95):
        lo, hi = torch.quantile(draws, torch.tensor([(1 - level) / 2, (1 + level) / 2]).double(), dim=0)
        out[f"coverage_{round(100 * level)}"] = float(interval_coverage(lo, hi, y, mask))
    return out


def validation_report(
    model: nn.Module,
    train: IrregularBatch,
    context: IrregularBatch,
    target: IrregularBatch,
    n_samples: int = 200,
    seed: int | None = 0,
    max_series: int = 500,
) -> dict[str, Any]:
    """The model's and persistence's forecasts of held-out observations, in standardised units.

    ``train`` is what the model was fitted on, ``context``/``target`` the held-out split (same
    series, targets after each context). Persistence is :class:`ctflow.baselines.LastValueBaseline`
    fitted on ``train`` (last value plus training residuals of the same horizon bin); its NLL is
    that of a Gaussian with the mean and spread of its draws. Values are on the model's scale (each
    variable standardised), so scores add up across variables. At most ``max_series`` held-out
    series (a random subset) are scored, which bounds the memory of the draws.
    """
    if len(context) > max_series:
        keep = np.sort(np.random.default_rng(seed).choice(len(context), max_series, replace=False))
        context, target = context.select(keep, trim=True), target.select(keep, trim=True)
    # Persistence needs a value to persist: series whose context holds only inputs are left out.
    known = (context.mask.sum((1, 2)) > 0) & (target.mask.sum((1, 2)) > 0)
    if not bool(known.all()):
        keep = np.flatnonzero(known.cpu().numpy())
        context, target = context.select(keep, trim=True), target.select(keep, trim=True)
    with rng_scope(seed, next(model.parameters()).device, always_fork=True):
        draws, log_prob = _model_draws(model, context, target, n_samples)
    y, mask = target.values.double(), target.mask.double()
    model_scores = _scores(draws, y, mask)
    model_scores["nll"] = float(-log_prob.sum() / mask.sum())

    names = {"id_col": train.id_col, "time_col": train.time_col}

    def targets_only(batch: IrregularBatch) -> pd.DataFrame:
        return to_dataframe(batch, include_static=False, include_inputs=False)

    baseline = LastValueBaseline(random_state=seed).fit(targets_only(train), **names)
    target_frame = targets_only(target)
    forecast = baseline.forecast(
        targets_only(context),
        times=target_frame[[train.id_col, train.time_col]],
        n_samples=n_samples,
    )
    # The baseline's rows follow the target frame's (series, then time); put them on the grid.
    for col in (train.id_col, train.time_col):
        if not np.array_equal(forecast.queries[col].to_numpy(), target_frame[col].to_numpy()):
            raise RuntimeError("the baseline's forecast rows are not in the targets' order")
    pad = target.pad_mask & (target.mask.sum(-1) > 0)  # the rows with a target (not inputs only)
    base = torch.zeros_like(draws)
    base[:, pad] = torch.as_tensor(forecast.samples, dtype=base.dtype)
    base_scores = _scores(base, y, mask)
    mu, sd = base.mean(0), base.std(0, unbiased=False).clamp_min(1e-6)
    base_log_prob = torch.distributions.Normal(mu, sd).log_prob(torch.where(mask > 0, y, mu))
    base_scores["nll"] = float(-(base_log_prob * mask).sum() / mask.sum())

    report: dict[str, Any] = {"n_series": len(target), "n_values": int(mask.sum())}
    for name, scores in (("model", model_scores), ("persistence", base_scores)):
        for key, value in scores.items():
            report[f"{name}_{key}"] = value
    ratio = report["model_crps"] / report["persistence_crps"] if report["persistence_crps"] > 0 else math.nan
    report["crps_ratio"] = ratio
    return report
