"""Deep ensembles of sequence models: an equal-weight mixture of independently initialised members.

Lakshminarayanan, Pritzel & Blundell (2017), "Simple and Scalable Predictive Uncertainty
Estimation using Deep Ensembles". Every member is a complete sequence model (same architecture,
its own random initialisation and its own draws of training noise); they are trained side by
side on the same batches, each on its own loss. A forecast is the equal-weight mixture of the
members' predictive densities: its mean averages theirs, its variance adds their spread to their
average variance, and its quantiles solve the averaged CDF.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..data.irregular import IrregularBatch
from ..flows.numerics import shuffled_draws, solve_increasing
from .base import Predictive, QueryInputs, SequenceModel

__all__ = ["DeepEnsemble", "EnsemblePredictive"]


class EnsemblePredictive:
    """Equal-weight mixture of the members' predictive densities at the same query points."""

    def __init__(self, members: Sequence[Predictive]):
        if not members:
            raise ValueError("an ensemble predictive needs at least one member")
        self.members = list(members)

    def log_prob(self, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log-density ``(B, Q)`` of ``y (B, Q, D)`` (observed entries of ``mask``)."""
        lp = torch.stack([m.log_prob(y, mask) for m in self.members])
        return torch.logsumexp(lp, 0) - math.log(len(self.members))

    def mean(self, n_samples: int = 256) -> Tensor:
        """``(B, Q, D)``: the average of the members' means."""
        return torch.stack([m.mean(n_samples) for m in self.members]).mean(0)

    def variance(self, n_samples: int = 256) -> Tensor:
        """``(B, Q, D)``: the mixture's variance (law of total variance over the members)."""
        means = torch.stack([m.mean(n_samples) for m in self.members])
        second = torch.stack([m.variance(n_samples) for m in self.members]) + means.square()
        return second.mean(0) - means.mean(0).square()

    def cdf(self, y: Tensor) -> Tensor:
        """The mixture's marginal CDFs at ``y (B, Q, D)``."""
        return torch.stack([m.cdf(y) for m in self.members]).mean(0)

    def quantile(self, q: float | Tensor, n_samples: int = 1000) -> Tensor:
        """Marginal quantiles ``(B, Q, D)``: bisection on the averaged CDF inside ``[min, max]``
        of the members' own quantiles (each member's CDF at a level-``q`` point of the mixture
        brackets it); from draws for members without a CDF."""
        own = torch.stack([m.quantile(q, n_samples) for m in self.members])
        if len(self.members) == 1:
            return own[0]
        try:
            cdfs = [m.cdf_function() for m in self.members]
        except (AttributeError, NotImplementedError):  # members with a sampler only
            return torch.quantile(self.sample(n_samples), float(q), dim=0)
        level = torch.as_tensor(q, dtype=own.dtype, device=own.device).expand(own.shape[1:])
        lo, hi = own.min(0).values, own.max(0).values
        return solve_increasing(lambda y: torch.stack([f(y) for f in cdfs]).mean(0), None, level, lo, hi)

    def sample(self, n: int) -> Tensor:
        """Draws ``(n, B, Q, D)`` stratified over the members (``ceil(n / M)`` each), shuffled
        independently per query and cut to ``n``."""
        return shuffled_draws(torch.cat([m.sample(-(-n // len(self.members))) for m in self.members]), n)


class DeepEnsemble(SequenceModel):
    """A deep ensemble (Lakshminarayanan, Pritzel & Blundell 2017, "Simple and Scalable
    Predictive Uncertainty Estimation using Deep Ensembles") of sequence models.

    ``members``: :class:`~ctflow.models.base.SequenceModel` instances, typically one
    architecture built ``M`` times so that each starts from its own random initialisation. The
    training loss is the sum of the members' losses (each member's gradient is its own);
    forecasts are the equal-weight mixture.

    >>> from ctflow.models import DeepEnsemble, GRUODEBayes
    >>> ensemble = DeepEnsemble([GRUODEBayes(2, hidden_size=8) for _ in range(3)])
    >>> len(ensemble)
    3
    """

    def __init__(self, members: Sequence[SequenceModel]):
        super().__init__()
        members = list(members)
        if len(members) < 1:
            raise ValueError("a DeepEnsemble needs at least one member")
        for i, member in enumerate(members):
            if not isinstance(member, SequenceModel):
                raise TypeError(f"member {i} must be a ctflow SequenceModel, got {type(member).__name__}")
        self.members = nn.ModuleList(members)
        # Forecast memory scales with every member's states (and their particles).
        self.n_particles = sum(m.n_particles for m in members)

    def __len__(self) -> int:
        return len(self.members)

    def loss(self, batch: IrregularBatch) -> Tensor:
        """Sum of the members' training losses."""
        return torch.stack([m.loss(batch) for m in self.members]).sum()

    def nll_terms(self, batch: IrregularBatch) -> tuple[Tensor, Tensor]:
        """The members' mean total NLL and the count of observed values. By Jensen's inequality
        the mean of the members' NLLs bounds the mixture's NLL from above."""
        terms = [m.nll_terms(batch) for m in self.members]
        return torch.stack([t[0] for t in terms]).mean(), terms[0][1]

    def filter(self, batch: IrregularBatch) -> tuple:
        """Each member's filter state."""
        return tuple(m.filter(batch) for m in self.members)

    @property
    def n_inputs(self) -> int:
        return self.members[0].n_inputs

    def past_only_inputs(self) -> Tensor:
        return self.members[0].past_only_inputs()

    def predict(self, state: tuple, times: Tensor, inputs: QueryInputs | None = None) -> EnsemblePredictive:
        """The equal-weight mixture of the members' predictive densities at ``times (B, Q)``."""
        pairs = zip(self.members, state, strict=True)
        return EnsemblePredictive([m.predict(s, times, inputs) for m, s in pairs])

    def sample_paths(self, state: tuple, times: Tensor, n: int, inputs: QueryInputs | None = None) -> Tensor:
        """Joint paths ``(n, B, Q, D)``: ``ceil(n / M)`` from each member, shuffled per series
        (a path stays whole; which member drew it is random)."""
        self._check_n_paths(n)
        k = -(-n // len(self.members))
        x = torch.cat([m.sample_paths(s, times, k, inputs) for m, s in zip(self.members, state, strict=True)])
        order = torch.rand(x.shape[:2], device=x.device).argsort(0)[:n]
        return x.gather(0, order[:, :, None, None].expand(-1, -1, *x.shape[2:]))
