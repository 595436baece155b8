"""ODE-RNN: a GRU whose hidden state follows a neural ODE between observations.

Rubanova, Chen & Duvenaud (2019), "Latent ODEs for Irregularly-Sampled Time Series". Used as the
recognition network of latent ODE/SDE models, run backwards in time so that its final state
summarises a whole series at its first observation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import choice
from ..data.irregular import IrregularBatch
from ..ode import NFECounter, SolverOptions, fixed_step_plan, integrate_intervals
from .neural_flows import FLOWS, build_flow

__all__ = ["ODEFunc", "ODERNNEncoder", "reverse_series"]


class ODEFunc(nn.Module):
    """Autonomous vector field ``f(h)``: an MLP with tanh hidden layers."""

    def __init__(self, dim: int, hidden: int = 64, n_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        size = dim
        for _ in range(n_layers):
            layers += [nn.Linear(size, hidden), nn.Tanh()]
            size = hidden
        last = nn.Linear(size, dim)
        nn.init.normal_(last.weight, std=0.01)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


def _reversed_rows(batch: IrregularBatch) -> tuple[Tensor, Tensor]:
    """Row index ``(B, N)`` of each series' rows in reverse order, and which are valid."""
    n = batch.times.shape[1]
    lengths = batch.lengths.to(batch.times.device)
    k = torch.arange(n, device=batch.times.device)
    return (lengths[:, None] - 1 - k[None, :]).clamp_min(0), k[None, :] < lengths[:, None]


def _gather_reversed(x: Tensor, rev: Tensor, valid: Tensor) -> Tensor:
    """``x (B, N, K)`` in the row order ``rev``, 0 on padding."""
    return x.gather(1, rev.unsqueeze(-1).expand(-1, -1, x.shape[-1])) * valid.unsqueeze(-1).to(x.dtype)


def reverse_series(batch: IrregularBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each series' rows in reverse time order: ``times, values, mask (B, N[, D])`` and the
    backward gaps ``dt (B, N)`` (``dt[:, 0] = 0``; 0 on padding)."""
    n = batch.times.shape[1]
    rev, valid = _reversed_rows(batch)
    times = batch.times.gather(1, rev)
    values = _gather_reversed(batch.values, rev, valid)
    mask = _gather_reversed(batch.mask, rev, valid)
    dt = torch.zeros_like(times)
    if n > 1:
        dt[:, 1:] = (times[:, :-1] - times[:, 1:]) * valid[:, 1:].to(times.dtype)
    return times, values, mask, dt


class ODERNNEncoder(nn.Module):
    """ODE-RNN run backwards over each series (all series in lockstep, as in GRU-ODE-Bayes).

    Between observations (going back in time) the state follows ``dh/dt = f(h)``, or with
    ``dynamics`` a neural flow (:mod:`ctflow.dynamics.neural_flows`) gives the state a gap later
    in one call (Biloš et al. 2021, "Neural Flows: Efficient Alternative to Neural ODEs"); at
    each observation a GRU cell reads ``[values * mask, mask]`` (with ``n_inputs``, also
    ``[inputs * input_mask, input_mask]``) and updates the rows with something observed or given.
    Returns the state at each series' first row, ``(B, hidden_size)``.
    """

    def __init__(
        self,
        n_variables: int,
        hidden_size: int = 32,
        ode_hidden: int = 64,
        solver: SolverOptions | dict | None = None,
        n_inputs: int = 0,
        dynamics: str = "ode",
    ):
        super().__init__()
        self.hidden_size, self.n_inputs = hidden_size, n_inputs
        choice(dynamics, "dynamics", ("ode", *FLOWS))
        self.flow = None if dynamics == "ode" else build_flow(dynamics, hidden_size)
        self.field = ODEFunc(hidden_size, ode_hidden, n_layers=1) if self.flow is None else None
        self.cell = nn.GRUCell(2 * (n_variables + n_inputs), hidden_size)
        if isinstance(solver, dict):
            solver = SolverOptions(**solver)
        self.solver = solver or SolverOptions(method="euler", step_size=0.25)
        self.nfe = NFECounter()

    def forward(self, batch: IrregularBatch, return_states: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """State at each series' first observation ``(B, H)``; with ``return_states`` also the state
        after reading each observation (a summary of it and everything after it), ``(B, N, H)``
        in the original row order (0 on padding)."""
        ref = self.cell.weight_hh
        batch = batch.to(ref.device, ref.dtype)
        _, values, mask, dt = reverse_series(batch)
        if self.n_inputs:
            if batch.n_inputs != self.n_inputs:
                raise ValueError(f"this encoder reads {self.n_inputs} inputs; the batch has {batch.n_inputs}")
            rev, valid = _reversed_rows(batch)
            values = torch.cat([values, _gather_reversed(batch.inputs, rev, valid)], dim=-1)
            mask = torch.cat([mask, _gather_reversed(batch.input_mask, rev, valid)], dim=-1)
        h = ref.new_zeros(values.shape[0], self.hidden_size)
        plan = fixed_step_plan(dt, self.solver) if self.flow is None else [None] * dt.shape[1]
        states = []
        for k, n_steps in enumerate(plan):
            if self.flow is not None:
                if k:  # dt[:, 0] is 0: the flow would return the state as it is
                    h = self.flow(h, dt[:, k])
            elif n_steps != 0:
                h = integrate_intervals(self.field, h, dt[:, k], self.solver, n_steps, counter=self.nfe)
            m = mask[:, k]
            h_new = self.cell(torch.cat([values[:, k] * m, m], dim=-1), h)
            observed = m.amax(dim=-1, keepdim=True)
            h = h + observed * (h_new - h)
            if return_states:
                states.append(h)
        if not return_states:
            return h
        if not states:
            return h, h.new_zeros(h.shape[0], 0, self.hidden_size)
        rev = torch.stack(states, dim=1)  # position j holds the state after row len - 1 - j
        n = rev.shape[1]
        lengths = batch.lengths.to(ref.device)
        k = torch.arange(n, device=ref.device)
        idx = (lengths[:, None] - 1 - k[None, :]).clamp_min(0)
        forward_order = rev.gather(1, idx.unsqueeze(-1).expand(-1, -1, self.hidden_size))
        valid = (k[None, :] < lengths[:, None]).unsqueeze(-1).to(rev.dtype)
        return h, forward_order * valid
