"""Gaussianization flows: trainable marginal Gaussianization alternating with learned rotations.

Meng, Song, Song & Ermon (2020), "Gaussianization Flows".

A marginal layer maps each dimension through ``y = Phi^{-1}(F(x))`` with ``F`` a logistic kernel
density estimate (learned anchor points and bandwidths, equal weights) or a logistic mixture with
learned weights; a rotation layer is a product of Householder reflections (orthogonal, log-det 0).
The inverse of the marginal layer is solved by bisection inside an exact bracket.
``Phi^{-1}`` is evaluated from ``log F`` and ``log(1 - F)`` so that it stays accurate in the tails.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Compose, Transform
from .mixture_cdf import invert_logit_mixture_cdf, logistic_mixture_log_cdfs
from .normal import normal_log_prob

__all__ = ["MarginalGaussianization", "HouseholderRotation", "GaussianizationBlock", "ndtri_from_log"]


def ndtri_from_log(log_p: Tensor, newton_steps: int = 3) -> Tensor:
    """``Phi^{-1}(exp(log_p))`` for ``log_p <= log(1/2)``, accurate even when ``exp(log_p)`` underflows.

    Starts from ``ndtri`` (or the tail asymptote ``-sqrt(-2 log p - log(-4 pi log p))``) and polishes
    with Newton steps on ``log Phi(y) = log_p``.
    """
    tiny = torch.finfo(log_p.dtype).tiny
    p = log_p.exp()
    ell = (-2.0 * log_p).clamp_min(1.0)
    asymptote = -torch.sqrt((ell - torch.log(2 * math.pi * ell)).clamp_min(0.0))
    y = torch.where(p > 1e3 * tiny, torch.special.ndtri(p.clamp_min(tiny)), asymptote)
    for _ in range(newton_steps):
        log_phi_cdf = torch.special.log_ndtr(y)
        # d log Phi(y) / dy = phi(y) / Phi(y)
        y = y - (log_phi_cdf - log_p) * torch.exp(log_phi_cdf - normal_log_prob(y))
    return y


def _gaussian_quantile(log_cdf: Tensor, log_sf: Tensor) -> Tensor:
    """``Phi^{-1}(F)`` from ``log F`` and ``log(1 - F)``, using the smaller tail for accuracy."""
    lower = log_cdf < log_sf
    y_tail = ndtri_from_log(torch.where(lower, log_cdf, log_sf))
    return torch.where(lower, y_tail, -y_tail)


class MarginalGaussianization(Transform):
    """Elementwise ``y_i = Phi^{-1}(F_i(x_i))`` with a learned logistic-mixture CDF per dimension.

    Meng et al. (2020), "Gaussianization Flows". ``kind="kde"``: equal weights on ``n_components``
    learned anchors (a logistic kernel density estimate); ``kind="mixture"``: learned weights too.
    With a context, the anchors and bandwidths are shifted by a linear function of it.
    """

    analytic_inverse = False

    def __init__(
        self,
        dim: int,
        n_components: int = 8,
        context_dim: int = 0,
        kind: str = "kde",
        init_spread: float = 2.0,
        inverse_tol: float = 1e-10,
    ):
        super().__init__()
        if kind not in ("kde", "mixture"):
            raise ValueError(f"unknown kind {kind!r}; valid: 'kde', 'mixture'")
        self.dim, self.k, self.context_dim, self.kind = dim, n_components, context_dim, kind
        anchors = torch.linspace(-init_spread, init_spread, n_components).expand(dim, -1).clone()
        self.means = nn.Parameter(anchors + 0.01 * torch.randn(dim, n_components))
        self.log_scales = nn.Parameter(
            torch.full((dim, n_components), math.log(init_spread / n_components + 0.3))
        )
        self.logits = nn.Parameter(torch.zeros(dim, n_components), requires_grad=(kind == "mixture"))
        if context_dim:
            self.hyper = nn.Linear(context_dim, 2 * dim * n_components)
            nn.init.zeros_(self.hyper.weight)
            nn.init.zeros_(self.hyper.bias)
        self.inverse_tol = inverse_tol

    def _params(self, batch: int, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        means, log_s = self.means.unsqueeze(0), self.log_scales.unsqueeze(0)
        if self.context_dim:
            if context is None:
                raise ValueError(f"this layer needs a context of shape (batch, {self.context_dim})")
            dm, ds = self.hyper(context).view(-1, 2, self.dim, self.k).unbind(1)
            means, log_s = means + dm, log_s + ds
        return self.logits.unsqueeze(0), means, log_s.clamp(-7.0, 7.0)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MarginalGaussianization expects (batch, {self.dim}), got {tuple(x.shape)}")

    def _map(self, x: Tensor, logits: Tensor, means: Tensor, log_s: Tensor) -> tuple[Tensor, Tensor]:
        log_cdf, log_sf, log_pdf = logistic_mixture_log_cdfs(x, logits, means, log_s)
        y = _gaussian_quantile(log_cdf, log_sf)
        return y, (log_pdf - normal_log_prob(y)).sum(1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        return self._map(x, *self._params(x.shape[0], context))

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        logits, means, log_s = self._params(z.shape[0], context)
        logits = logits.expand(*means.shape)
        # Solve logit F(x) = logit Phi(z), both sides computed in log space.
        target = torch.special.log_ndtr(z) - torch.special.log_ndtr(-z)
        x = invert_logit_mixture_cdf(target, logits, means, log_s, tol=self.inverse_tol)
        _, ladj = self._map(x, logits, means, log_s)
        return x, -ladj


class HouseholderRotation(Transform):
    """Orthogonal map ``z = H_K ... H_1 x`` with ``H_k = I - 2 v_k v_k^T / |v_k|^2`` (log-det 0)."""

    def __init__(self, dim: int, n_reflections: int | None = None):
        super().__init__()
        self.dim = dim
        self.vectors = nn.Parameter(torch.randn(n_reflections or dim, dim))

    @staticmethod
    def _reflect(x: Tensor, v: Tensor) -> Tensor:
        v = v / v.norm().clamp_min(torch.finfo(v.dtype).tiny)
        return x - 2.0 * (x @ v).unsqueeze(1) * v

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        for v in self.vectors:
            x = self._reflect(x, v)
        return x, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        for v in reversed(self.vectors):
            z = self._reflect(z, v)
        return z, z.new_zeros(z.shape[0])


class GaussianizationBlock(Compose):
    """One Gaussianization-flow block: a rotation, then marginal Gaussianization.

    Meng et al. (2020), "Gaussianization Flows".
    """

    def __init__(self, dim: int, n_components: int = 8, context_dim: int = 0, kind: str = "kde"):
        super().__init__(
            [HouseholderRotation(dim), MarginalGaussianization(dim, n_components, context_dim, kind)]
        )
