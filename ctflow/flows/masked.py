"""Emission densities over partly observed vectors: exact, normalised densities for every mask.

An emission ``p(y | c)`` of a sequence model must score an observation of which only some
variables were measured, without imputing the rest. Three constructions:

* :class:`GaussianEmission`: diagonal Gaussian; the density of an observed subset is the product
  of its marginals (De Brouwer et al. 2019, "GRU-ODE-Bayes").
* :class:`PerVariableFlowEmission`: an independent conditional 1-D flow per variable
  (mixture-of-logistics CDF, logit, affine: the Flow++ elementwise map), so every marginal is
  exact and non-Gaussian (skewed, heavy-tailed, multimodal).
* :class:`JointFlowEmission`: a masked autoregressive flow conditioned on the context *and the
  mask*, transforming only observed dimensions (the idea of ACFlow: Li, Akbar & Oliva 2020,
  "ACFlow: Flow Models for Arbitrary Conditional Likelihoods"). For each mask the map restricted
  to the observed coordinates is triangular with a positive diagonal, so it is a normalised
  density over exactly those coordinates, with dependence between them.

All share one interface: ``log_prob(y, mask, context) -> (batch,)`` summed over observed values,
``log_prob_terms`` per variable, ``sample(context, n)``, ``statistics`` (per-variable features for
the GRU-Bayes update) and ``mean``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .autoregressive import MADE
from .mixture_cdf import invert_logit_mixture_cdf, logistic_mixture_log_cdfs
from .nets import MLP, soft_clamp

__all__ = [
    "MaskedEmission",
    "GaussianEmission",
    "PerVariableFlowEmission",
    "JointFlowEmission",
    "LastValueEmission",
    "make_emission",
    "EMISSIONS",
]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _normal_log_prob(z: Tensor) -> Tensor:
    return -0.5 * z.square() - _LOG_SQRT_2PI


class MaskedEmission(nn.Module):
    """Interface of a conditional density over partly observed vectors of size ``dim``."""

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


class GaussianEmission(MaskedEmission):
    """Diagonal Gaussian ``N(mu(c), diag(sigma(c)^2))``, parameters from an MLP of the context
    (plus a linear map of it, or of its last ``linear_skip`` columns, with ``linear_skip``).

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
        return (_normal_log_prob(resid) - 0.5 * log_var) * mask

    def statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        return self.log_prob_and_statistics(y, mask, context)[1]

    def log_prob_and_statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_var = self.params(context)
        resid = (y - mu) * torch.exp(-0.5 * log_var)
        log_prob = ((_normal_log_prob(resid) - 0.5 * log_var) * mask).sum(-1)
        return log_prob, torch.stack([y, mu, log_var, resid], dim=-1) * mask.unsqueeze(-1)

    def sample(self, context: Tensor, n: int = 1) -> Tensor:
        mu, log_var = self.params(context)
        return mu + torch.exp(0.5 * log_var) * torch.randn(n, *mu.shape, dtype=mu.dtype, device=mu.device)

    def mean(self, context: Tensor, n_samples: int = 0) -> Tensor:
        return self.params(context)[0]

    def quantile(self, context: Tensor, q: float | Tensor) -> Tensor:
        """Exact marginal quantiles ``(batch, dim)``."""
        mu, log_var = self.params(context)
        q = torch.as_tensor(q, dtype=mu.dtype, device=mu.device)
        return mu + torch.exp(0.5 * log_var) * math.sqrt(2) * torch.erfinv(2 * q - 1)


class PerVariableFlowEmission(MaskedEmission):
    """Independent conditional 1-D flows: ``z_d = logit(F_d(y_d)) * exp(a_d) + b_d``, ``z_d ~ N(0, 1)``.

    ``F_d`` is a mixture of ``n_components`` logistics; every parameter comes from an MLP of the
    context (Ho et al. 2019, "Flow++", for the elementwise map). Marginals are exact, so any
    observed subset has the exact product density. GRU-Bayes statistics: ``[y, z, log p(y_d)]``.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        hidden: Sequence[int] = (25,),
        n_components: int = 4,
        scale_bound: float = 3.0,
    ):
        super().__init__(dim, context_dim)
        self.k = n_components
        self.scale_bound = scale_bound
        self.net = MLP(context_dim, dim * (3 * n_components + 2), hidden, zero_init=False)
        # Spread the initial component means so the mixture starts multimodal-capable.
        with torch.no_grad():
            bias = self.net.net[-1].bias.view(dim, 3 * n_components + 2)
            bias[:, 2 + n_components : 2 + 2 * n_components] = torch.linspace(-1.5, 1.5, n_components)

    def _params(self, context: Tensor):
        p = self.net(context).view(*context.shape[:-1], self.dim, 3 * self.k + 2)
        k = self.k
        log_a = soft_clamp(p[..., 0], self.scale_bound)
        b = p[..., 1]
        return log_a, b, p[..., 2 : 2 + k], p[..., 2 + k : 2 + 2 * k], p[..., 2 + 2 * k :].clamp(-7.0, 7.0)

    def _forward(self, y: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        log_a, b, logits, means, log_s = self._params(context)
        log_cdf, log_sf, log_pdf = logistic_mixture_log_cdfs(y, logits, means, log_s)
        z = (log_cdf - log_sf) * log_a.exp() + b
        return z, log_pdf - log_cdf - log_sf + log_a

    def log_prob_terms(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        z, ladj = self._forward(y * mask, context)
        return (_normal_log_prob(z) + ladj) * mask

    def statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        return self.log_prob_and_statistics(y, mask, context)[1]

    def log_prob_and_statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        z, ladj = self._forward(y * mask, context)
        terms = (_normal_log_prob(z) + ladj) * mask
        return terms.sum(-1), torch.stack([y, z, terms], dim=-1) * mask.unsqueeze(-1)

    def sample(self, context: Tensor, n: int = 1) -> Tensor:
        log_a, b, logits, means, log_s = (p.unsqueeze(0).expand(n, *p.shape) for p in self._params(context))
        z = torch.randn(log_a.shape, dtype=log_a.dtype, device=log_a.device)
        target = (z - b) * (-log_a).exp()
        return invert_logit_mixture_cdf(target, logits, means, log_s)


class JointFlowEmission(MaskedEmission):
    """Masked autoregressive flow over the observed variables, conditioned on context and mask.

    Each of ``n_layers`` layers maps ``u_d -> u_d * exp(s_d) + t_d`` for observed ``d`` with
    ``(s, t) = MADE(u * mask, [context, mask])`` (orders alternate between layers); unobserved
    coordinates are held at zero and contribute nothing. Papamakarios et al. (2017), "Masked
    Autoregressive Flow for Density Estimation"; masking as in Li, Akbar & Oliva (2020), "ACFlow".
    GRU-Bayes statistics: ``[y, z, per-variable log-density terms]``.

    As in ACFlow, the density of each observed subset is normalised and exact, but it is a
    density of its own (conditioned on the mask), not the marginal of the all-observed density.
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
        return (_normal_log_prob(z) + ladj) * mask

    def statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> Tensor:
        return self.log_prob_and_statistics(y, mask, context)[1]

    def log_prob_and_statistics(self, y: Tensor, mask: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        z, ladj = self._forward(y, mask, context)
        terms = (_normal_log_prob(z) + ladj) * mask
        return terms.sum(-1), torch.stack([y, z, terms], dim=-1) * mask.unsqueeze(-1)

    def sample(self, context: Tensor, n: int = 1) -> Tensor:
        ctx = context.unsqueeze(0).expand(n, *context.shape).reshape(-1, context.shape[-1])
        mask = torch.ones(ctx.shape[0], self.dim, dtype=ctx.dtype, device=ctx.device)
        cond = torch.cat([ctx, mask], dim=-1)
        u = torch.randn(ctx.shape[0], self.dim, dtype=ctx.dtype, device=ctx.device)
        for made in reversed(self.mades):
            z, x = u, torch.zeros_like(u)
            for _ in range(self.dim):
                shift, log_s = self._layer_params(made, x, mask, cond)
                x = (z - shift) * (-log_s).exp()
            u = x
        return u.view(n, *context.shape[:-1], self.dim)


class LastValueEmission(MaskedEmission):
    """An emission of the change since each variable's last observed value.

    The context ends with three blocks of ``dim`` columns, ``[c, last, seen, elapsed]``: the last
    observed value of every variable, whether it has been observed, and a feature of the time
    since. The density of ``y`` is ``inner``'s density of ``y - seen * last`` given the whole
    context (a shift, so the log-determinant is zero): persistence is the default the model
    corrects, as in the carry-forward baseline it improves on, and the width of the change can
    grow with the elapsed time (Che et al. 2018, "Recurrent Neural Networks for Multivariate Time
    Series with Missing Values", feed the same last values and intervals to GRU-D).
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

    def quantile(self, context: Tensor, q: float | Tensor) -> Tensor:
        """Exact marginal quantiles ``(batch, dim)`` where the inner emission has them."""
        if not hasattr(self.inner, "quantile"):
            raise NotImplementedError(f"{type(self.inner).__name__} has no closed-form quantiles")
        return self.inner.quantile(context, q) + self.shift(context)


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
