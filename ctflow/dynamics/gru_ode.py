"""GRU-ODE vector field and the GRU-Bayes update.

De Brouwer, Simm, Arany & Moreau (2019), "GRU-ODE-Bayes: Continuous modeling of
sporadically-observed time series".

Between observations the hidden state follows the autonomous GRU-ODE
``dh/dt = (1 - z) * (g - h)`` with ``r = sigmoid(W_r h + b_r)``, ``z = sigmoid(W_z h + b_z)``,
``g = tanh(W_g (r * h) + b_g)``; since ``z`` is in ``(0, 1)`` and ``g`` in ``(-1, 1)``, ``h`` stays
bounded and the flow is contracting at rate at most 1, which keeps explicit steps stable.
At an observation, :class:`GRUBayes` maps per-variable statistics of the observation under the
predicted density (masked to the observed variables) through a per-variable layer and a GRU cell
that updates only the rows with something observed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GRUODECell", "GRUBayes"]


class GRUODECell(nn.Module):
    """The GRU-ODE vector field ``f(h) = (1 - z) * (g - h)`` (autonomous form)."""

    def __init__(self, hidden_size: int, bias: bool = True):
        super().__init__()
        self.hidden_size = hidden_size
        self.rz = nn.Linear(hidden_size, 2 * hidden_size, bias=bias)
        self.g = nn.Linear(hidden_size, hidden_size, bias=bias)

    def forward(self, h: Tensor) -> Tensor:
        rate, target = self.rate_and_target(h)
        return rate * (target - h)

    def rate_and_target(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(1 - z, g)``: the field relaxes ``h`` towards ``g`` at rate ``1 - z``."""
        r, z = torch.sigmoid(self.rz(h)).chunk(2, dim=-1)
        return 1.0 - z, torch.tanh(self.g(r * h))


class GRUBayes(nn.Module):
    """GRU-Bayes jump: ``h <- GRUCell(prep(stats) * mask, h)`` on rows with an observation.

    Args:
        n_variables: number of observed variables ``D``.
        n_statistics: features per variable (4 for the paper's Gaussian:
            ``[y, mu, log var, standardised residual]``; flows give e.g. ``[y, z, log-density]``).
        prep_hidden: width of the per-variable preprocessing layer.
        hidden_size: size of the hidden state.
    """

    def __init__(self, n_variables: int, n_statistics: int, prep_hidden: int, hidden_size: int):
        super().__init__()
        self.n_variables, self.prep_hidden = n_variables, prep_hidden
        bound = (6.0 / (n_statistics + prep_hidden)) ** 0.5
        self.prep_weight = nn.Parameter(
            torch.empty(n_variables, n_statistics, prep_hidden).uniform_(-bound, bound)
        )
        self.prep_bias = nn.Parameter(torch.zeros(n_variables, prep_hidden))
        self.cell = nn.GRUCell(n_variables * prep_hidden, hidden_size)

    def forward(self, h: Tensor, stats: Tensor, mask: Tensor) -> Tensor:
        """``stats (B, D, k)``, ``mask (B, D)``; rows with nothing observed keep their state."""
        prep = torch.relu(torch.einsum("bdk,dkp->bdp", stats, self.prep_weight) + self.prep_bias)
        prep = (prep * mask.unsqueeze(-1)).flatten(1)
        h_new = self.cell(prep, h)
        observed = mask.amax(dim=-1, keepdim=True)
        return h + observed * (h_new - h)
