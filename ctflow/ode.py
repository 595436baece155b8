"""The one entry point to the ODE solvers: solver choice, tolerances, adjoint and NFE counting.

Everything in ctflow that integrates an ODE (continuous normalizing flows, continuous-time hidden
states) goes through :func:`integrate`, so solver options mean the same everywhere and function
evaluations are counted the same way. :func:`integrate_intervals` advances many series over their
own intervals at once (per-series time rescaling), with fused fixed-step loops or an adaptive solve.

Chen, Rubanova, Bettencourt & Duvenaud (2018), "Neural Ordinary Differential Equations";
solvers from ``torchdiffeq``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

__all__ = [
    "integrate_intervals",
    "steps_for",
    "fixed_step_plan",
    "integrate_sde_intervals",
    "SDE_METHODS",
    "FIXED_STEP_STAGES",
    "SolverOptions",
    "NFECounter",
    "integrate",
    "FIXED_STEP",
    "ADAPTIVE",
    "ERROR_NORMS",
]

FIXED_STEP = ("euler", "midpoint", "rk4", "heun3", "explicit_adams", "implicit_adams")
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
# Schemes of integrate_intervals alone: the field must offer ``rate_and_target(h)`` so that
# ``dh/dt = rate * (target - h)``; each step relaxes exactly with the coefficients frozen, which
# stays stable for any step length (long gaps between observations).
INTERVAL_ONLY = ("exp_euler",)
ERROR_NORMS = ("rms", "max")


@dataclass
class SolverOptions:
    """How to integrate: ``method`` (adaptive: dopri5, dopri8, bosh3, fehlberg2, adaptive_heun;
    fixed-step: euler, midpoint, rk4, heun3, explicit_adams, implicit_adams; between observations
    only, :func:`integrate_intervals`' exp_euler), tolerances for
    adaptive solvers, ``step_size`` for fixed-step ones, and ``adjoint`` to backpropagate by
    solving the adjoint ODE (memory O(1) in the number of steps) instead of through the solver.
    ``adjoint_rtol``/``adjoint_atol`` default to the forward tolerances. ``max_steps`` caps the
    fixed steps of one interval of :func:`integrate_intervals` (longer gaps take longer steps).

    Error control of adaptive solvers: each step's error estimate is divided element-wise by
    ``atol + rtol * |y|`` and reduced to one number by ``norm``; the step is accepted when that
    number is at most 1.

    * ``norm="rms"`` (default): root mean square over each tensor of the state, then the largest
      over the tensors of a tuple state (torchdiffeq's default norm).
    * ``norm="max"``: the largest scaled error over all elements (every element of every sample
      is held to the tolerance on its own).
    * ``aux_atol``: the absolute tolerance of the auxiliary tensors of a tuple state, i.e. every
      tensor after the first (for a CNF: the log-determinant and the regulariser integrals); the
      first tensor keeps ``atol``. ``None`` (default) uses ``atol``. A larger value holds the
      log-determinant to a looser absolute error than the state; ``math.inf`` leaves the auxiliary
      tensors out of error control altogether, so that the step size is set by the state alone.
      It applies to forward-in-time solves; an adjoint solve uses ``adjoint_atol`` throughout.
    * ``adjoint_seminorm``: with ``adjoint=True``, leave the parameter-gradient integrals out of the
      adjoint solve's error control (Kidger, Chen & Lyons 2021, "'Hey, that's not an ODE': Faster
      ODE Adjoints via Seminorms"); this cuts the backward NFE when those integrals are what limits
      the adjoint's steps, the gradients being held to the tolerance through the state's adjoint.

    The norm's value only chooses step sizes: it is computed without gradient tracking, so the
    step-size selection is never differentiated through.
    """

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    step_size: float | None = None
    adjoint: bool = False
    adjoint_rtol: float | None = None
    adjoint_atol: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    norm: str = "rms"
    aux_atol: float | None = None
    adjoint_seminorm: bool = False
    max_steps: int | None = None

    def __post_init__(self) -> None:
        valid = FIXED_STEP + ADAPTIVE + INTERVAL_ONLY
        if self.method not in valid:
            raise ValueError(f"unknown ODE method {self.method!r}; valid: {', '.join(valid)}")
        if self.max_steps is not None and not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ValueError(f"max_steps must be a positive int or None, got {self.max_steps!r}")
        for name in ("rtol", "atol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.norm not in ERROR_NORMS:
            raise ValueError(f"unknown error norm {self.norm!r}; valid: {', '.join(ERROR_NORMS)}")
        if self.aux_atol is not None and not self.aux_atol > 0:
            raise ValueError(f"aux_atol must be positive (or math.inf), got {self.aux_atol}")
        if "norm" in self.extra:
            raise ValueError("set the error norm with SolverOptions.norm, not through extra")
        if (
            self.method in FIXED_STEP + INTERVAL_ONLY
            and self.step_size is not None
            and not self.step_size > 0
        ):
            raise ValueError(f"step_size must be positive, got {self.step_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _torchdiffeq_options(self) -> dict[str, Any]:
        opts = dict(self.extra)
        if self.method in FIXED_STEP and self.step_size is not None:
            opts["step_size"] = self.step_size
        if self.method in ADAPTIVE:
            opts["norm"] = _ERROR_NORMS[self.norm]
        return opts

    def _atol(self, y0: Tensor | tuple[Tensor, ...]) -> float | tuple[float, ...]:
        if self.aux_atol is None or isinstance(y0, Tensor) or len(y0) < 2:
            return self.atol
        return (self.atol,) + (self.aux_atol,) * (len(y0) - 1)


def _reduce(x: Tensor | tuple[Tensor, ...], per_tensor: Callable[[Tensor], Tensor]) -> Tensor:
    tensors = (x,) if isinstance(x, Tensor) else tuple(x)
    values = [per_tensor(p.detach()) for p in tensors if p.numel() > 0]
    if not values:
        return torch.zeros((), dtype=tensors[0].dtype, device=tensors[0].device)
    return torch.stack(values).max()


@torch.no_grad()
def _rms_norm(x: Tensor | tuple[Tensor, ...]) -> Tensor:
    """Largest over the tensors of the root mean square of each."""
    return _reduce(x, lambda p: p.square().mean().sqrt())


@torch.no_grad()
def _max_norm(x: Tensor | tuple[Tensor, ...]) -> Tensor:
    """Largest absolute value over all elements."""
    return _reduce(x, lambda p: p.abs().max())


_ERROR_NORMS: dict[str, Callable[[Any], Tensor]] = {"rms": _rms_norm, "max": _max_norm}


class NFECounter(nn.Module):
    """Wraps a vector field ``func(t, state)`` and counts its evaluations.

    ``nfe_forward`` counts evaluations made while solving forward in time; ``nfe_backward`` counts
    evaluations made by backpropagation: calls of the adjoint ODE, or, when differentiating through
    the solver, each recorded evaluation whose graph the gradient traverses. Counters accumulate
    until :meth:`reset`.
    """

    def __init__(self, func: nn.Module):
        super().__init__()
        self.func = func
        self.nfe_forward = 0
        self.nfe_backward = 0
        self._in_forward_solve = False

    def reset(self) -> None:
        self.nfe_forward = 0
        self.nfe_backward = 0

    def _count_backward(self, grad: Tensor) -> Tensor:
        self.nfe_backward += 1
        return grad

    def forward(self, t: Tensor, state):
        out = self.func(t, state)
        if not self._in_forward_solve:
            self.nfe_backward += 1  # called by the adjoint solve during backpropagation
            return out
        self.nfe_forward += 1
        first = out[0] if isinstance(out, tuple) else out
        if first.requires_grad:
            first.register_hook(self._count_backward)
        return out


def integrate(
    func: nn.Module,
    y0: Tensor | tuple[Tensor, ...],
    t: Tensor,
    options: SolverOptions | None = None,
    counter: NFECounter | None = None,
    adjoint_params: tuple[Tensor, ...] | None = None,
):
    """Solve ``dy/dt = func(t, y)`` from ``y0`` at the times ``t`` (1-D, increasing or decreasing).

    Returns the solution at every time in ``t`` (leading axis), as ``torchdiffeq.odeint`` does;
    ``y0`` may be a tuple of tensors. Pass an :class:`NFECounter` wrapping ``func`` (and use it as
    ``func``) to count evaluations. ``adjoint_params`` defaults to ``func``'s parameters.
    """
    options = options or SolverOptions()
    if options.method in INTERVAL_ONLY:
        raise ValueError(
            f"method {options.method!r} integrates between observations only (integrate_intervals)"
        )
    if counter is not None and func is not counter:
        raise ValueError("pass the NFECounter itself as func so that its evaluations are counted")
    kwargs: dict[str, Any] = {
        "rtol": options.rtol,
        "atol": options._atol(y0) if options.method in ADAPTIVE else options.atol,
        "method": options.method,
        "options": options._torchdiffeq_options(),
    }
    if counter is not None:
        counter._in_forward_solve = True
    try:
        if options.adjoint:
            params = adjoint_params if adjoint_params is not None else tuple(func.parameters())
            adjoint_options = {k: v for k, v in kwargs["options"].items() if k != "norm"}
            if options.method in ADAPTIVE and options.adjoint_seminorm:
                # torchdiffeq builds the adjoint norm from the forward one (``norm`` above), leaving
                # the parameter-gradient integrals out when asked for a seminorm.
                adjoint_options["norm"] = "seminorm"
            return odeint_adjoint(
                func,
                y0,
                t,
                adjoint_rtol=options.adjoint_rtol or options.rtol,
                adjoint_atol=options.adjoint_atol or options.atol,
                adjoint_params=params,
                adjoint_options=adjoint_options,
                **kwargs,
            )
        return odeint(func, y0, t, **kwargs)
    finally:
        if counter is not None:
            counter._in_forward_solve = False


# ---------------------------------------------------------------- lockstep intervals
# Each row b of a state advances by its own duration dt_b (e.g. to that series' next
# observation). Rescaling time per row, dh/ds = dt_b * f(h) for s in [0, 1], puts the whole batch on
# one clock, so one solve advances every series; rows with dt_b = 0 do not move.

FIXED_STEP_STAGES = {"euler": 1, "midpoint": 2, "rk4": 4, "exp_euler": 1}


def steps_for(max_dt: float, step_size: float) -> int:
    """Number of equal steps so that no row's step exceeds ``step_size``."""
    return max(1, math.ceil(max_dt / step_size - 1e-9))


class _Rescaled(nn.Module):
    def __init__(self, field: Callable[[Tensor], Tensor], dt: Tensor):
        super().__init__()
        self.field, self.dt = field, dt

    def forward(self, s: Tensor, h: Tensor) -> Tensor:
        return self.dt * self.field(h)


def fixed_step_plan(dts: Tensor, options: SolverOptions) -> list[int | None]:
    """Step counts of a fixed-step solver for each column of intervals ``dts (B, K)``.

    Column ``k`` gets ``steps_for(max_b dts[b, k], step_size)`` steps (0 for an all-zero column),
    read back from the device once for all columns; adaptive methods get ``None`` per column.
    """
    if options.method not in FIXED_STEP_STAGES:
        return [None] * dts.shape[1]
    if options.step_size is None:
        raise ValueError(f"solver method {options.method!r} needs step_size")
    if dts.numel() and float(dts.min()) < 0:
        raise ValueError("query or observation times precede the state's time")
    max_dt = dts.amax(dim=0).tolist() if dts.numel() else []
    cap = options.max_steps or math.inf
    return [min(steps_for(m, options.step_size), cap) if m > 0 else 0 for m in max_dt]


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
            n_steps = min(steps_for(float(dt.max()), options.step_size), options.max_steps or math.inf)
        step = scale / n_steps
        for _ in range(n_steps):
            if method == "exp_euler":
                rate, target = field.rate_and_target(h)
                h = target + (h - target) * torch.exp(-step * rate)
            elif method == "euler":
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


# Fixed-step SDE schemes of torchsde usable with diagonal noise.
SDE_METHODS = ("euler", "milstein", "srk")


class _RescaledSDE(nn.Module):
    """``dy = dt * f(y) ds + sqrt(dt) * g(y) dW_s`` on ``s in [0, 1]`` (per-row durations ``dt``)."""

    sde_type = "ito"

    def __init__(
        self,
        drift: Callable[[Tensor], Tensor],
        diffusion: Callable[[Tensor], Tensor],
        dt: Tensor,
        noise_type: str,
    ):
        super().__init__()
        self.drift_fn, self.diffusion_fn, self.noise_type = drift, diffusion, noise_type
        self.scale = dt.unsqueeze(-1)
        self.root = dt.clamp_min(0).sqrt().view(-1, *([1] * (2 if noise_type == "general" else 1)))
        self.nfe = 0

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        self.nfe += 1
        return self.scale * self.drift_fn(y)

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        return self.root * self.diffusion_fn(y)


def integrate_sde_intervals(
    drift: Callable[[Tensor], Tensor],
    diffusion: Callable[[Tensor], Tensor],
    y: Tensor,
    dt: Tensor,
    n_steps: int,
    method: str = "euler",
    counter: NFECounter | None = None,
    noise_type: str = "diagonal",
) -> Tensor:
    """Advance ``y (B, K)`` by ``dt (B,)`` under the Ito SDE ``dy = f(y) dt + g(y) dW``, all rows
    in lockstep, with ``n_steps`` fixed steps of torchsde's ``method`` in per-row rescaled time
    (a row with ``dt = 0`` stays put). ``noise_type="diagonal"``: ``g(y)`` has ``y``'s shape;
    ``"general"``: ``g(y)`` is ``(B, K, m)`` for ``m`` Brownian motions (Euler only).
    """
    if noise_type not in ("diagonal", "general"):
        raise ValueError(f"noise_type must be 'diagonal' or 'general', got {noise_type!r}")
    if method not in SDE_METHODS:
        raise ValueError(f"unknown SDE method {method!r}; valid: {', '.join(SDE_METHODS)}")
    if n_steps == 0:
        return y
    import torchsde

    sde = _RescaledSDE(drift, diffusion, dt, noise_type)
    s = torch.tensor([0.0, 1.0], dtype=y.dtype, device=y.device)
    noise_size = (y.shape[0], diffusion(y).shape[-1]) if noise_type == "general" else tuple(y.shape)
    # The Brownian path's entropy comes from torch's generator, so torch.manual_seed repeats runs.
    entropy = int(torch.randint(2**31 - 1, (), device="cpu"))
    bm = torchsde.BrownianInterval(0.0, 1.0, size=noise_size, dtype=y.dtype, device=y.device, entropy=entropy)
    out = torchsde.sdeint(sde, y, s, bm=bm, method=method, dt=1.0 / n_steps)[-1]
    if counter is not None:
        counter.nfe_forward += sde.nfe
    return out
