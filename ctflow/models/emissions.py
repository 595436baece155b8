"""Emission densities over partly observed vectors: exact, normalised densities for every mask.

An emission ``p(y | c)`` of a sequence model must score an observation of which only some
variables were measured, without imputing the rest. Three constructions:

* :class:`GaussianEmission`: diagonal Gaussian; the density of an observed subset is the product
  of its marginals (De Brouwer et al. 2019, "GRU-ODE-Bayes").
* :class:`PerVariableFlowEmission`: an independent conditional 1-D flow per variable, the
  mixture-of-logistics CDF of Flow++ onto a logistic base, so every marginal is an exact
  mixture of logistics (skewed, heavy-tailed, multimodal) with closed-form moments.
* :class:`JointFlowEmission`: a masked autoregressive flow conditioned on the context *and the
  mask*, transforming only observed dimensions (the idea of ACFlow: Li, Akbar & Oliva 2020,
  "ACFlow: Flow Models for Arbitrary Conditional Likelihoods"). For each mask the map restricted
  to the observed coordinates is triangular with a positive diagonal, so it is a normalised
  density over exactly those coordinates, with dependence between them.

:class:`LastValueEmission` wraps any of them to model the change since each variable's last
observed value. The constructions use the flow layers of :mod:`ctflow.flows`.

All share one interface: ``log_prob(y, mask, context) -> (batch,)`` summed over observed values,
``log_prob_terms`` per variable, ``sample(context, n)`` (joint draws of all variables) and
``statistics`` (per-variable features for the GRU-Bayes update). Forecasts need each variable's
*marginal* predictive: ``mean``, ``variance``, ``cdf``, ``quantile`` and ``marginal_sample``. Every
emission here gives all five exactly (closed form, or a bracketed solve of an exact CDF to the
float precision), with one batched pass and no Monte Carlo; the base class falls back to Monte
Carlo from ``sample`` for emissions that define only a density and a sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import positive_int
from ..flows.autoregressive import MADE, _DegreeByDegree
from ..flows.mixture_cdf import logistic_mixture_bracket, logistic_mixture_log_cdfs
from ..flows.nets import MLP, soft_clamp
from ..flows.normal import check_levels, normal_cdf, normal_log_prob, normal_quantile
from ..flows.numerics import solve_increasing

__all__ = [
    "MaskedEmission",
    "GaussianEmission",
    "PerVariableFlowEmission",
    "JointFlowEmission",
    "LastValueEmission",
    "make_emission",
    "resolve_emission",
    "EMISSIONS",
]


class MaskedEmission(nn.Module):
    """Interface of a conditional density over partly observed vectors of size ``dim``.

    Subclasses define ``log_prob_terms``, ``statistics`` and ``sample``; the marginal quantities
    below default to Monte Carlo from ``sample`` (``quantile`` by a bracketed solve of ``cdf``
    where a subclass gives one) and are overridden with exact ones where the density has them.
    """

    n_statistics: int = 3

    def __init__(self, dim: int, context_dim: int):
        super().__init__()
        self.dim, self.context_dim = dim, context_dim

    def log_prob_terms(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        """Per-variable log-density contributions ``(batch, dim)``, zero where unobserved."""
        raise NotImplementedError

    def log_prob(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        """Log-density of the observed values of each row: ``(batch,)``."""
        return self.log_prob_terms(y, mask, context).sum(-1)

    def statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        """Per-variable features ``(batch, dim, n_statistics)`` describing ``y`` under the density."""
        raise NotImplementedError

    def sample(self, context: Tensor, n: int = 1) -> Tensor:
        """``n`` joint samples of all variables per context row: ``(n, batch, dim)``."""
        raise NotImplementedError

    def log_prob_and_statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """``log_prob`` and ``statistics`` together (subclasses share the work between them)."""
        return self.log_prob(y, mask, context), self.statistics(y, mask, context)

    def mean(self, context: Tensor, n_samples: int = 256) -> Tensor:
        """Mean of every variable ``(batch, dim)`` (Monte Carlo unless known in closed form)."""
        return self.sample(context, n_samples).mean(0)

    def variance(self, context: Tensor, n_samples: int = 256) -> Tensor:
        """Marginal variance of every variable ``(batch, dim)`` (Monte Carlo unless exact)."""
        return self.sample(context, n_samples).var(0)

    def cdf(self, y: Tensor, context: Tensor) -> Tensor:
        """Marginal CDF of every variable at ``y (batch, dim)``."""
        return self.cdf_function(context)(y)

    def cdf_function(self, context: Tensor) -> Callable[[Tensor], Tensor]:
        """The marginal CDFs at ``context`` as a function of ``y``, the network evaluated once
        (for solvers that call it many times)."""
        raise NotImplementedError(f"{type(self).__name__} has no marginal CDF")

    def quantile(self, context: Tensor, q: float | Tensor, n_samples: int = 1000) -> Tensor:
        """Marginal quantiles ``(batch, dim)`` at levels ``q`` (a float, or a tensor that
        broadcasts to ``(batch, dim)``); Monte Carlo (interpolated order statistics) unless exact."""
        q = check_levels(q, context)
        draws = self.marginal_sample(context, n_samples).sort(0).values
        pos = (q * (n_samples - 1)).expand(draws.shape[1:])
        below = pos.floor().long().clamp(0, n_samples - 1)
        above = (below + 1).clamp_max(n_samples - 1)
        lo, hi = draws.gather(0, below.unsqueeze(0))[0], draws.gather(0, above.unsqueeze(0))[0]
        return lo + (pos - below) * (hi - lo)

    def marginal_sample(self, context: Tensor, n: int = 1) -> Tensor:
        """``n`` draws ``(n, batch, dim)`` of each variable from its marginal (for forecasts of
        single values; ``sample`` draws all variables jointly)."""
        return self.sample(context, n)

    def auxiliary_nll(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        """An extra training term ``(batch,)`` that a model adds to its loss (none by default)."""
        return y.new_zeros(y.shape[:-1])


class _GaussianMarginals:
    """Marginal quantities of an emission whose every variable is marginally Gaussian with
    mean and log-variance ``marginal_params(context)``: all exact."""

    def marginal_params(self, context: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def mean(self, context: Tensor, n_samples: int = 0) -> Tensor:
        return self.marginal_params(context)[0]

    def variance(self, context: Tensor, n_samples: int = 0) -> Tensor:
        return self.marginal_params(context)[1].exp()

    def cdf_function(self, context: Tensor) -> Callable[[Tensor], Tensor]:
        mu, log_var = self.marginal_params(context)
        return lambda y: normal_cdf(y, mu, log_var)

    def quantile(self, context: Tensor, q: float | Tensor, n_samples: int = 0) -> Tensor:
        """Exact marginal quantiles ``(batch, dim)``."""
        return normal_quantile(*self.marginal_params(context), q)

    def marginal_sample(self, context: Tensor, n: int = 1) -> Tensor:
        mu, log_var = self.marginal_params(context)
        return mu + (0.5 * log_var).exp() * torch.randn(n, *mu.shape, dtype=mu.dtype, device=mu.device)


class GaussianEmission(_GaussianMarginals, MaskedEmission):
    """Diagonal Gaussian ``N(mu(c), diag(sigma(c)^2))``, parameters from an MLP of the context
    (plus a linear map of it, or of its last ``linear_skip`` columns, with ``linear_skip``).

    Exact: density, mean, variance, CDF, quantiles and samples (all closed form).

    GRU-Bayes statistics are the paper's: ``[y, mu, log sigma^2, (y - mu) / sigma]``
    (De Brouwer, Simm, Arany & Moreau 2019, "GRU-ODE-Bayes: Continuous modeling of
    sporadically-observed time series").
    """

    n_statistics = 4

    def __init__(
        self,
        dim: int,
        context_dim: int,
        hidden: Sequence[int] = (25,),
        min_log_var: float = -12.0,
        linear_skip: bool | int = False,
        max_log_var: float = 20.0,
    ):
        super().__init__(dim, context_dim)
        # With a linear skip both parts start at zero: N(0, 1) until the data say otherwise, the
        # linear part (a few weights per feature) learning first, the network's corrections later.
        self.net = MLP(context_dim, 2 * dim, hidden, zero_init=linear_skip)
        # An int: the linear part sees only the context's last ``linear_skip`` columns (e.g. the
        # hand-made features after a hidden state), a handful of weights that small data can fit.
        self.skip_columns = context_dim if linear_skip is True else int(linear_skip)
        self.skip = nn.Linear(self.skip_columns, 2 * dim) if linear_skip else None
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)
        self.min_log_var, self.max_log_var = min_log_var, max_log_var

    def params(self, context: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(context)
        if self.skip is not None:
            out = out + self.skip(context[..., context.shape[-1] - self.skip_columns :])
        mu, log_var = out.chunk(2, dim=-1)
        # The upper bound keeps draws finite for inputs far outside the training data.
        return mu, log_var.clamp(self.min_log_var, self.max_log_var)

    def log_prob_terms(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        mu, log_var = self.params(context)
        resid = (y - mu) * torch.exp(-0.5 * log_var)
        return (normal_log_prob(resid) - 0.5 * log_var) * mask

    def statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        return self.log_prob_and_statistics(y, mask, context)[1]

    def log_prob_and_statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_var = self.params(context)
        resid = (y - mu) * torch.exp(-0.5 * log_var)
        log_prob = ((normal_log_prob(resid) - 0.5 * log_var) * mask).sum(-1)
        return log_prob, torch.stack([y, mu, log_var, resid], dim=-1) * mask.unsqueeze(-1)

    def marginal_params(self, context: Tensor) -> tuple[Tensor, Tensor]:
        return self.params(context)

    def sample(self, context: Tensor, n: int = 1) -> Tensor:
        return self.marginal_sample(context, n)  # the variables are independent


class PerVariableFlowEmission(MaskedEmission):
    """Independent conditional 1-D flows: ``z_d = logit F_d(y_d)`` with ``z_d`` standard logistic.

    ``F_d`` is the CDF of a mixture of ``n_components`` logistics whose weights, means and scales
    come from an MLP of the context (the Flow++ elementwise map: Ho, Chen, Srinivas, Duan &
    Abbeel 2019, "Flow++: Improving Flow-Based Generative Models with Variational Dequantization
    and Architecture Design"), so each variable's density is exactly that mixture and any
    observed subset has the exact product density. GRU-Bayes statistics: ``[y, z, log p(y_d)]``.

    Exact: density, mean, variance (closed form), CDF, quantiles (bisection in the mixture's
    exact bracket to the float precision, then one Newton step) and samples (a component per
    draw, then its closed-form inverse CDF).
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        hidden: Sequence[int] = (25,),
        n_components: int = 4,
    ):
        positive_int(n_components, "n_components")
        super().__init__(dim, context_dim)
        self.k = n_components
        self.net = MLP(context_dim, dim * 3 * n_components, hidden, zero_init=False)
        # Components start spread over the standardised range, each with unit variance.
        with torch.no_grad():
            bias = self.net.net[-1].bias.view(dim, 3, n_components)
            bias[:, 1] = torch.linspace(-0.5, 0.5, n_components)
            bias[:, 2] = math.log(math.sqrt(3) / math.pi) - 1.0

    def mixture(self, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log-weights, means and log-scales of every variable's mixture: ``(..., dim, K)`` each."""
        p = self.net(context).view(*context.shape[:-1], self.dim, 3, self.k)
        return torch.log_softmax(p[..., 0, :], dim=-1), p[..., 1, :], p[..., 2, :].clamp(-7.0, 7.0)

    def _forward(self, y: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        log_cdf, log_sf, log_pdf = logistic_mixture_log_cdfs(y, *self.mixture(context))
        return log_cdf - log_sf, log_pdf

    def log_prob_terms(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        return self._forward(y * mask, context)[1] * mask

    def statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        return self.log_prob_and_statistics(y, mask, context)[1]

    def log_prob_and_statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        z, log_pdf = self._forward(y * mask, context)
        terms = log_pdf * mask
        return terms.sum(-1), torch.stack([y, z, terms], dim=-1) * mask.unsqueeze(-1)

    def mean(self, context: Tensor, n_samples: int = 0) -> Tensor:
        log_w, means, _ = self.mixture(context)
        return (log_w.exp() * means).sum(-1)

    def variance(self, context: Tensor, n_samples: int = 0) -> Tensor:
        log_w, means, log_s = self.mixture(context)
        w = log_w.exp()
        mean = (w * means).sum(-1, keepdim=True)
        # A logistic of scale s has variance s^2 pi^2 / 3.
        return (w * ((means - mean).square() + (2 * log_s).exp() * (math.pi**2 / 3))).sum(-1)

    def cdf_function(self, context: Tensor) -> Callable[[Tensor], Tensor]:
        log_w, means, log_s = self.mixture(context)
        return lambda y: logistic_mixture_log_cdfs(y, log_w, means, log_s)[0].exp()

    def quantile(self, context: Tensor, q: float | Tensor, n_samples: int = 0) -> Tensor:
        log_w, means, log_s = self.mixture(context)
        level = check_levels(q, means).expand(means.shape[:-1])
        target = torch.log(level) - torch.log1p(-level)
        lo, hi = logistic_mixture_bracket(target, means, log_s)
        weights, inv_scale = log_w.exp(), (-log_s).exp()
        offset = means * inv_scale

        def cdf(v: Tensor) -> Tensor:  # the plain CDF: cheap enough to bisect on
            return (weights * torch.sigmoid(v.unsqueeze(-1) * inv_scale - offset)).sum(-1)

        root = solve_increasing(cdf, None, level, lo, hi)
        # One Newton step on logit F, which keeps its precision in the tails (and carries the
        # implicit-function gradient).
        lc, ls, lp = logistic_mixture_log_cdfs(root, log_w, means, log_s)
        return root - (lc - ls - target) / (lp - lc - ls).exp()

    def sample(self, context: Tensor, n: int = 1) -> Tensor:
        log_w, means, log_s = self.mixture(context)
        shape = (n, *means.shape[:-1])
        # Component by inverse CDF of the weights, then the logistic's own inverse CDF.
        u = torch.rand(shape, dtype=means.dtype, device=means.device)
        pick = (u.unsqueeze(-1) > log_w.exp().cumsum(-1)).sum(-1, keepdim=True).clamp_max(self.k - 1)
        mu = means.expand(*shape, self.k).gather(-1, pick).squeeze(-1)
        log_scale = log_s.expand(*shape, self.k).gather(-1, pick).squeeze(-1)
        v = torch.rand(shape, dtype=means.dtype, device=means.device)
        tiny = torch.finfo(means.dtype).tiny
        return mu + log_scale.exp() * (torch.log(v.clamp_min(tiny)) - torch.log1p(-v))


class JointFlowEmission(_GaussianMarginals, MaskedEmission):
    """Masked autoregressive flow over the observed variables, conditioned on context and mask.

    Each of ``n_layers`` layers maps ``u_d -> u_d * exp(s_d) + t_d`` for observed ``d`` with
    ``(s, t) = MADE(u * mask, [context, mask])`` (orders alternate between layers); unobserved
    coordinates are held at zero and contribute nothing. Papamakarios et al. (2017), "Masked
    Autoregressive Flow for Density Estimation"; masking as in Li, Akbar & Oliva (2020), "ACFlow".
    GRU-Bayes statistics: ``[y, z, per-variable log-density terms]``.

    As in ACFlow, the density of each observed subset is normalised and exact, but it is a
    density of its own (conditioned on the mask), not the marginal of the all-observed density.
    A variable's marginal is therefore its density under the mask that observes it alone, and
    that density is Gaussian: with one coordinate observed, every layer's shift and scale for it
    depend on the context and mask only (its predecessors are masked out), so the layers
    compose to one affine map. In training, ``auxiliary_nll`` scores one observed variable of
    each row with two or more alone (the ACFlow training of arbitrary marginals), so these
    marginals are learned even where all variables are always observed together.

    Exact: density, and every marginal quantity (mean, variance, CDF, quantiles, marginal
    samples: one pass of each layer). Joint samples of all variables (``sample``) take ``dim``
    passes of each layer, the sequential direction of an autoregressive flow.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        hidden: Sequence[int] = (32, 32),
        n_layers: int = 3,
        scale_bound: float = 3.0,
    ):
        super().__init__(dim, context_dim)
        self.scale_bound = scale_bound
        self.mades = nn.ModuleList(
            MADE(dim, 2, hidden, context_dim + dim, order="sequential" if i % 2 == 0 else "reverse")
            for i in range(n_layers)
        )

    def _layer_params(self, made: MADE, u: Tensor, mask: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = made(u * mask, cond).chunk(2, dim=-1)
        return shift * mask, soft_clamp(raw, self.scale_bound) * mask

    def _forward(self, y: Tensor, mask: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        cond = torch.cat([context, mask], dim=-1)
        u = y * mask
        ladj = torch.zeros_like(u)
        for made in self.mades:
            shift, log_s = self._layer_params(made, u, mask, cond)
            u = (u * log_s.exp() + shift) * mask
            ladj = ladj + log_s
        return u, ladj

    def log_prob_terms(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        z, ladj = self._forward(y, mask, context)
        return (normal_log_prob(z) + ladj) * mask

    def statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        return self.log_prob_and_statistics(y, mask, context)[1]

    def log_prob_and_statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        z, ladj = self._forward(y, mask, context)
        terms = (normal_log_prob(z) + ladj) * mask
        return terms.sum(-1), torch.stack([y, z, terms], dim=-1) * mask.unsqueeze(-1)

    def marginal_params(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance ``(..., dim)`` of each variable's Gaussian marginal."""
        lead, d = context.shape[:-1], self.dim
        ctx = context.reshape(-1, context.shape[-1])
        masks = torch.eye(d, dtype=ctx.dtype, device=ctx.device).repeat(ctx.shape[0], 1)
        cond = torch.cat([ctx.repeat_interleave(d, dim=0), masks], dim=-1)
        # Inputs stay zero: a coordinate's parameters see only its (masked) predecessors.
        u = torch.zeros_like(masks)
        log_scale, shift = torch.zeros_like(masks), torch.zeros_like(masks)
        for made in self.mades:
            t, log_s = self._layer_params(made, u, masks, cond)
            shift = shift * log_s.exp() + t
            log_scale = log_scale + log_s
        # Row i * d + j holds variable j's map under the mask that observes it alone.
        log_scale = log_scale.view(-1, d, d).diagonal(dim1=1, dim2=2)
        shift = shift.view(-1, d, d).diagonal(dim1=1, dim2=2)
        # z = y exp(S) + T with z ~ N(0, 1): y ~ N(-T exp(-S), exp(-2 S)).
        return (-shift * (-log_scale).exp()).reshape(*lead, d), (-2 * log_scale).reshape(*lead, d)

    def auxiliary_nll(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        lead = y.shape[:-1]
        y, mask = y.reshape(-1, self.dim), mask.reshape(-1, self.dim)
        context = context.reshape(-1, self.context_dim)
        several = mask.sum(-1) >= 2
        # One observed variable per row, uniformly at random.
        pick = torch.multinomial(mask + (mask.sum(-1, keepdim=True) == 0).to(mask), 1)
        alone = torch.zeros_like(mask).scatter_(1, pick, 1.0) * several.unsqueeze(-1).to(mask)
        return -self.log_prob(y, alone, context).reshape(lead)

    def sample(self, context: Tensor, n: int = 1) -> Tensor:
        ctx = context.unsqueeze(0).expand(n, *context.shape).reshape(-1, context.shape[-1])
        mask = torch.ones(ctx.shape[0], self.dim, dtype=ctx.dtype, device=ctx.device)
        cond = torch.cat([ctx, mask], dim=-1)
        u = torch.randn(ctx.shape[0], self.dim, dtype=ctx.dtype, device=ctx.device)
        for made in reversed(self.mades):
            u = self._invert_layer(made, u, cond)
        return u.view(n, *context.shape[:-1], self.dim)

    def _invert_layer(self, made: MADE, z: Tensor, cond: Tensor) -> Tensor:
        """``x`` with ``x * exp(s(x)) + t(x) = z``, every variable observed: ``dim`` sequential
        steps, each computing only the hidden units that the newly solved variable feeds."""
        if torch.is_grad_enabled():
            frozen, x = made.freeze(cond), torch.zeros_like(z)
            for _ in range(self.dim):
                shift, raw = made(x, frozen=frozen).chunk(2, dim=-1)
                x = (z - shift) * (-soft_clamp(raw, self.scale_bound)).exp()
            return x
        solver = _DegreeByDegree(made, cond, z.shape[0], z)
        z_t = z.t().index_select(0, solver.in_order)  # (dim, batch), in degree order
        for k in range(self.dim):
            shift, raw = solver.params(k)
            torch.mul(z_t[k] - shift, (-soft_clamp(raw, self.scale_bound)).exp(), out=solver.solved[k])
        return solver.solved.index_select(0, made.degrees - 1).t().contiguous()


class LastValueEmission(MaskedEmission):
    """An emission of the change since each variable's last observed value.

    The context ends with three blocks of ``dim`` columns, ``[c, last, seen, elapsed]``: the last
    observed value of every variable, whether it has been observed, and a feature of the time
    since. The density of ``y`` is ``inner``'s density of ``y - seen * last`` given the whole
    context (a shift, so the log-determinant is zero): persistence is the default the model
    corrects, as in the carry-forward baseline it improves on, and the width of the change can
    grow with the elapsed time (Che et al. 2018, "Recurrent Neural Networks for Multivariate Time
    Series with Missing Values", feed the same last values and intervals to GRU-D).

    Every marginal quantity is the inner emission's, shifted (exact where the inner one is).
    """

    def __init__(self, inner: MaskedEmission):
        if inner.context_dim <= 3 * inner.dim:
            raise ValueError(
                f"the inner emission's context_dim ({inner.context_dim}) must exceed "
                f"3 * dim ({3 * inner.dim})"
            )
        super().__init__(inner.dim, inner.context_dim)
        self.inner = inner
        self.n_statistics = inner.n_statistics

    def shift(self, context: Tensor) -> Tensor:
        """``seen * last`` from the context's last three blocks: ``(..., dim)``."""
        d = self.dim
        last, seen = context[..., -3 * d : -2 * d], context[..., -2 * d : -d]
        return last * seen

    def log_prob_terms(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        return self.inner.log_prob_terms(y - self.shift(context), mask, context)

    def statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        return self.inner.statistics(y - self.shift(context), mask, context)

    def log_prob_and_statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        return self.inner.log_prob_and_statistics(y - self.shift(context), mask, context)

    def sample(self, context: Tensor, n: int = 1) -> Tensor:
        return self.inner.sample(context, n) + self.shift(context)

    def mean(self, context: Tensor, n_samples: int = 256) -> Tensor:
        return self.inner.mean(context, n_samples) + self.shift(context)

    def variance(self, context: Tensor, n_samples: int = 256) -> Tensor:
        return self.inner.variance(context, n_samples)

    def cdf_function(self, context: Tensor) -> Callable[[Tensor], Tensor]:
        inner, shift = self.inner.cdf_function(context), self.shift(context)
        return lambda y: inner(y - shift)

    def quantile(self, context: Tensor, q: float | Tensor, n_samples: int = 1000) -> Tensor:
        return self.inner.quantile(context, q, n_samples) + self.shift(context)

    def marginal_sample(self, context: Tensor, n: int = 1) -> Tensor:
        return self.inner.marginal_sample(context, n) + self.shift(context)

    def auxiliary_nll(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        return self.inner.auxiliary_nll(y - self.shift(context), mask, context)


EMISSIONS = {
    "gaussian": GaussianEmission,
    "mixlogistic": PerVariableFlowEmission,
    "maf": JointFlowEmission,
}


# Flow names of the builders that denote the same emission.
EMISSION_ALIASES = {"mixlogcdf": "mixlogistic", "flowpp": "mixlogistic"}


def make_emission(name: str, dim: int, context_dim: int, **options) -> MaskedEmission:
    """An emission by name: ``gaussian``, ``mixlogistic`` (per-variable flows; also ``mixlogcdf``
    or ``flowpp``), ``maf`` (joint flow)."""
    if not isinstance(name, str):
        raise TypeError(f"emission must be a name, got {type(name).__name__}")
    key = EMISSION_ALIASES.get(name.lower(), name.lower())
    if key not in EMISSIONS:
        valid = ", ".join([*EMISSIONS, *EMISSION_ALIASES])
        raise ValueError(
            f"unknown emission {name!r}; valid: {valid} (an emission must give an exact density over "
            "every subset of observed variables, which these constructions do)"
        )
    return EMISSIONS[key](dim, context_dim, **options)


def resolve_emission(
    emission: str | MaskedEmission, dim: int, context_dim: int, options: dict[str, Any]
) -> MaskedEmission:
    """A model's emission: built by :func:`make_emission` with ``options`` from a name, or an
    instance checked to be a :class:`MaskedEmission` over ``dim`` variables and ``context_dim``."""
    if isinstance(emission, str):
        return make_emission(emission, dim, context_dim, **options)
    if not isinstance(emission, MaskedEmission):
        raise TypeError(f"emission must be a name or a MaskedEmission, got {type(emission).__name__}")
    if emission.context_dim != context_dim:
        raise ValueError(f"the emission's context_dim must be {context_dim}, got {emission.context_dim}")
    if emission.dim != dim:
        raise ValueError(f"the emission's dim must be {dim} (one per variable), got {emission.dim}")
    return emission
