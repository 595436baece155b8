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

__all__ = ["BoundGRUODE", "GRUBayes", "GRUODECell", "InputJump"]


class GRUODECell(nn.Module):
    """The GRU-ODE vector field ``f(h) = (1 - z) * (g - h)`` (autonomous form).

    With ``context_dim > 0`` the gates also see a per-series context ``c`` (static covariates):
    ``r, z = sigmoid(W h + b + U_rz c)``, ``g = tanh(W_g (r * h) + b_g + U_g c)``; :meth:`bind`
    fixes ``c`` for one integration. ``U`` starts at 0 (the unconditioned field).
    """

    def __init__(self, hidden_size: int, bias: bool = True, context_dim: int = 0):
        super().__init__()
        self.hidden_size = hidden_size
        self.rz = nn.Linear(hidden_size, 2 * hidden_size, bias=bias)
        self.g = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.context_dim = context_dim
        if context_dim:
            self.context = nn.Linear(context_dim, 3 * hidden_size, bias=False)
            nn.init.zeros_(self.context.weight)

    def forward(self, h: Tensor) -> Tensor:
        rate, target = self.rate_and_target(h)
        return rate * (target - h)

    def rate_and_target(self, h: Tensor, shift: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(1 - z, g)``: the field relaxes ``h`` towards ``g`` at rate ``1 - z``; ``shift (B, 3H)``
        is added to the gates' pre-activations (the bound context's term)."""
        pre_rz = self.rz(h)
        if shift is not None:
            pre_rz = pre_rz + shift[..., : 2 * self.hidden_size]
        r, z = torch.sigmoid(pre_rz).chunk(2, dim=-1)
        pre_g = self.g(r * h)
        if shift is not None:
            pre_g = pre_g + shift[..., 2 * self.hidden_size :]
        return 1.0 - z, torch.tanh(pre_g)

    def bind(self, context: Tensor | None) -> GRUODECell | BoundGRUODE:
        """The field with the context ``c (B, context_dim)`` of each row fixed (itself without)."""
        if not self.context_dim or context is None:
            return self
        return BoundGRUODE(self, self.context(context))


class BoundGRUODE(nn.Module):
    """A :class:`GRUODECell` with each row's context term fixed: callable as ``f(h)``, with the
    ``rate_and_target`` that exponential Euler steps use. ``adjoint_tensors`` names the context
    term for adjoint solves (it is not a parameter, yet gradients must reach it)."""

    def __init__(self, cell: GRUODECell, shift: Tensor):
        super().__init__()
        self.cell, self.shift = cell, shift

    @property
    def adjoint_tensors(self) -> tuple[Tensor, ...]:
        return (self.shift,) if self.shift.requires_grad else ()

    def forward(self, h: Tensor) -> Tensor:
        rate, target = self.rate_and_target(h)
        return rate * (target - h)

    def rate_and_target(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.cell.rate_and_target(h, self.shift)

    def first_rows(self, n: int) -> BoundGRUODE:
        """The field of the first ``n`` rows (for :func:`ctflow.ode.integrate_ragged`)."""
        return BoundGRUODE(self.cell, self.shift[:n])


class InputJump(nn.Module):
    """The jump of the hidden state at an exogenous input (a dose, a treatment):
    ``h <- GRUCell([u * m, m], h)`` on the rows where some input is given (mask ``m``), the
    others unchanged. Inputs are conditioned on, never scored."""

    def __init__(self, n_inputs: int, hidden_size: int):
        super().__init__()
        self.n_inputs = n_inputs
        self.cell = nn.GRUCell(2 * n_inputs, hidden_size)

    def forward(self, h: Tensor, u: Tensor, mask: Tensor) -> Tensor:
        """``u, mask (B, E)``."""
        h_new = self.cell(torch.cat([u * mask, mask], dim=-1), h)
        given = mask.amax(dim=-1, keepdim=True)
        return h + given * (h_new - h)


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
