"""Flow++ mixture-of-logistics CDF coupling and the logistic-mixture CDF it is built on.

Ho, Chen, Srinivas, Duan & Abbeel (2019), "Flow++: Improving Flow-Based Generative Models with
Variational Dequantization and Architecture Design".

The elementwise map on the transformed part is
``y = logit(F(x; pi, mu, s)) * exp(a) + b`` with ``F`` a K-component mixture of logistics, all
parameters produced by a conditioner from the untransformed part (and the context). Its
log-derivative is ``log f(x) - log F(x) - log(1 - F(x)) + a``, computed in log space so that it
stays finite far into the tails. The inverse solves ``logit F(x) = (y - b) exp(-a)`` by vectorised
bisection inside an exact bracket, to ``inverse_tol``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..checks import positive_int
from .coupling import _Coupling
from .nets import soft_clamp
from .numerics import solve_increasing

__all__ = [
    "logistic_mixture_log_cdfs",
    "logistic_mixture_bracket",
    "invert_logit_mixture_cdf",
    "MixtureCDFCoupling",
]


def logistic_mixture_log_cdfs(
    x: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(log F(x), log(1 - F(x)), log f(x))`` of a logistic mixture; components on the last axis.

    ``x`` has the shape of the parameters without their last axis.
    """
    log_w = torch.log_softmax(logits, dim=-1)
    u = (x.unsqueeze(-1) - means) * torch.exp(-log_scales)
    below = log_w + F.logsigmoid(u)  # log(w sigmoid(u)); log sigmoid(-u) = log sigmoid(u) - u
    above = below - u
    log_cdf = torch.logsumexp(below, dim=-1)
    log_sf = torch.logsumexp(above, dim=-1)
    log_pdf = torch.logsumexp(below + above - log_w - log_scales, dim=-1)
    return log_cdf, log_sf, log_pdf


def logistic_mixture_bracket(
    logit_target: Tensor, means: Tensor, log_scales: Tensor
) -> tuple[Tensor, Tensor]:
    """An exact bracket for ``logit F(x) = logit_target``.

    ``F`` lies between the smallest and the largest component CDF, so the root lies between
    ``min_k`` and ``max_k`` of ``mu_k + target * exp(s_k)``.
    """
    cand = means + logit_target.unsqueeze(-1) * torch.exp(log_scales)
    return cand.min(dim=-1).values, cand.max(dim=-1).values


def invert_logit_mixture_cdf(
    target: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor, tol: float | None = None
) -> Tensor:
    """Solve ``logit F(x) = target`` for a logistic mixture ``F`` (bisection in the exact bracket).

    Differentiable: the solution carries the implicit-function gradient (see ``solve_increasing``).
    """
    lo, hi = logistic_mixture_bracket(target, means, log_scales)

    def logit_cdf(v: Tensor) -> Tensor:
        lc, ls, _ = logistic_mixture_log_cdfs(v, logits, means, log_scales)
        return lc - ls

    def dlogit_cdf(v: Tensor) -> Tensor:
        lc, ls, lp = logistic_mixture_log_cdfs(v, logits, means, log_scales)
        return (lp - lc - ls).exp()

    return solve_increasing(logit_cdf, dlogit_cdf, target, lo, hi, tol=tol)


class MixtureCDFCoupling(_Coupling):
    """Flow++ coupling: mixture-of-logistics CDF, inverse sigmoid, then affine, on the masked part.

    Ho et al. (2019), "Flow++: Improving Flow-Based Generative Models with Variational
    Dequantization and Architecture Design". The conditioner returns ``3 * K + 2`` values per
    dimension: the affine log-scale ``a`` (soft-clamped) and shift ``b``, and the mixture logits,
    means and log-scales (clamped to ``[-7, 7]``).

    Args:
        mask: 1 for transformed dimensions (see :mod:`ctflow.flows.coupling`).
        context_dim, hidden, conditioner, activation: as for the other couplings.
        n_components: mixture size K.
        inverse_tol: absolute tolerance of the bisection inverse (in ``x`` units).
    """

    def __init__(
        self,
        mask: Tensor,
        context_dim: int = 0,
        hidden: Sequence[int] = (64, 64),
        conditioner: nn.Module | None = None,
        activation: str = "relu",
        n_components: int = 4,
        scale_bound: float = 3.0,
        inverse_tol: float = 1e-10,
    ):
        n_components = positive_int(n_components, "n_components")
        self.n_params = 3 * n_components + 2
        super().__init__(mask, context_dim, hidden, conditioner, activation)
        self.n_components = n_components
        self.scale_bound = float(scale_bound)
        self.inverse_tol = float(inverse_tol)

    def _mixture(self, x_cond: Tensor, context: Tensor | None, shape: torch.Size):
        out = self.conditioner(x_cond * (1.0 - self.mask), context)
        out = out.view(shape[0], self.n_params, *shape[1:]).movedim(1, -1)  # (..., P)
        k = self.n_components
        log_a = soft_clamp(out[..., 0], self.scale_bound)
        b = out[..., 1]
        logits, means, log_s = out[..., 2 : 2 + k], out[..., 2 + k : 2 + 2 * k], out[..., 2 + 2 * k :]
        return log_a, b, logits, means, log_s.clamp(-7.0, 7.0)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_a, b, logits, means, log_s = self._mixture(x, context, x.shape)
        log_cdf, log_sf, log_pdf = logistic_mixture_log_cdfs(x, logits, means, log_s)
        y = (log_cdf - log_sf) * log_a.exp() + b
        ladj = (log_pdf - log_cdf - log_sf + log_a) * self.mask
        return self.mask * y + (1.0 - self.mask) * x, self._sum_event(ladj)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_a, b, logits, means, log_s = self._mixture(z, context, z.shape)
        target = (z - b) * (-log_a).exp()
        x = invert_logit_mixture_cdf(target, logits, means, log_s, tol=self.inverse_tol)
        x = self.mask * x + (1.0 - self.mask) * z
        log_cdf, log_sf, log_pdf = logistic_mixture_log_cdfs(x, logits, means, log_s)
        ladj = (log_pdf - log_cdf - log_sf + log_a) * self.mask
        return x, -self._sum_event(ladj)
