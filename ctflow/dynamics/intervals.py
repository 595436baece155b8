"""Lockstep integration of many series over their own intervals (per-series time rescaling).

Each row ``b`` of a hidden state must advance by its own duration ``dt_b`` (the time to that series'
next observation). Rescaling time per row, ``dh/ds = dt_b * f(h)`` for ``s in [0, 1]``, turns the
batch into one ODE on a common clock, so one solver call advances every series at once; rows with
``dt_b = 0`` (finished or padded series) do not move. Fixed-step methods take ``n`` equal steps in
``s`` (each row's step is ``dt_b / n <= step_size``); adaptive methods go through
:func:`ctflow.ode.integrate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..ode import NFECounter, SolverOptions, integrate

__all__ = ["integrate_intervals", "steps_for", "FIXED_STEP_STAGES"]

FIXED_STEP_STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}


def steps_for(max_dt: float, step_size: float) -> int:
    """Number of equal steps so that no row's step exceeds ``step_size``."""
    return max(1, math.ceil(max_dt / step_size - 1e-9))


class _Rescaled(nn.Module):
    def __init__(self, field: Callable[[Tensor], Tensor], dt: Tensor):
        super().__init__()
        self.field, self.dt = field, dt

    def forward(self, s: Tensor, h: Tensor) -> Tensor:
        return self.dt * self.field(h)


def integrate_intervals(
    field: Callable[[Tensor], Tensor],
    h: Tensor,
    dt: Tensor,
    options: SolverOptions,
    n_steps: int | None = None,
    counter: NFECounter | None = None,
) -> Tensor:
    """Advance ``h (B, H)`` by ``dt (B,)`` under the autonomous field ``f(h)``, all rows in lockstep.

    ``n_steps`` (fixed-step methods) defaults to ``steps_for(max(dt), options.step_size)``, which
    reads ``max(dt)`` back from the device; pass it to avoid that sync.
    """
    scale = dt.unsqueeze(-1)
    method = options.method
    if method in FIXED_STEP_STAGES:
        if n_steps is None:
            if options.step_size is None:
                raise ValueError(
                    f"method {method!r} needs options.step_size (the largest step in time units)"
                )
            n_steps = steps_for(float(dt.max()), options.step_size)
        step = scale / n_steps
        for _ in range(n_steps):
            if method == "euler":
                h = h + step * field(h)
            elif method == "midpoint":
                h = h + step * field(h + 0.5 * step * field(h))
            else:
                k1 = field(h)
                k2 = field(h + 0.5 * step * k1)
                k3 = field(h + 0.5 * step * k2)
                k4 = field(h + step * k3)
                h = h + step / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        if counter is not None:
            counter.nfe_forward += n_steps * FIXED_STEP_STAGES[method]
        return h
    func = _Rescaled(field, scale)
    s = torch.tensor([0.0, 1.0], dtype=h.dtype, device=h.device)
    wrapped = NFECounter(func)
    out = integrate(
        wrapped,
        h,
        s,
        options,
        counter=wrapped,
        adjoint_params=tuple(
            p for p in (field.parameters() if isinstance(field, nn.Module) else ()) if p.requires_grad
        ),
    )[-1]
    if counter is not None:
        counter.nfe_forward += wrapped.nfe_forward
    return out
