"""Normal-distribution helpers: standard-normal log-density, Gaussian CDF and quantiles."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["LOG_SQRT_2PI", "check_levels", "normal_cdf", "normal_log_prob", "normal_quantile"]

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def normal_log_prob(z: Tensor) -> Tensor:
    """Elementwise standard-normal log-density ``log phi(z)``."""
    return -0.5 * z.square() - LOG_SQRT_2PI


def normal_cdf(y: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
    """CDF of ``N(mu, exp(log_var))`` at ``y`` (elementwise, broadcasting)."""
    return 0.5 * torch.erfc(-(y - mu) * torch.exp(-0.5 * log_var) / math.sqrt(2))


def normal_quantile(mu: Tensor, log_var: Tensor, q: float | Tensor) -> Tensor:
    """Quantiles of ``N(mu, exp(log_var))`` at levels ``q`` (a float, or a broadcasting tensor)."""
    q = check_levels(q, mu)
    return mu + torch.exp(0.5 * log_var) * math.sqrt(2) * torch.erfinv(2 * q - 1)


def check_levels(q: float | Tensor, like: Tensor) -> Tensor:
    """Quantile levels as a tensor of ``like``'s dtype and device, each strictly inside (0, 1)."""
    q = torch.as_tensor(q, dtype=like.dtype, device=like.device)
    if not bool(((q > 0) & (q < 1)).all()):
        raise ValueError(f"quantile levels must lie strictly between 0 and 1, got {q.tolist()}")
    return q
