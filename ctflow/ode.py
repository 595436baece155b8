"""The one entry point to the ODE solvers: solver choice, tolerances, adjoint and NFE counting.

Everything in ctflow that integrates an ODE (continuous normalizing flows, continuous-time hidden
states) goes through :func:`integrate`, so solver options mean the same everywhere and function
evaluations are counted the same way. :func:`integrate_intervals` advances many series over their
own intervals at once (per-series time rescaling), with fused fixed-step loops or a torchdiffeq
solve. :data:`SOLVERS` describes every method; validation, step planning and NFE counting read it.
SDE integration lives in :mod:`ctflow.sde` (re-exported here).

Chen, Rubanova, Bettencourt & Duvenaud (2018), "Neural Ordinary Differential Equations";
solvers from ``torchdiffeq``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from .checks import choice, positive_int, real_number
from .sde import SDE_METHODS, integrate_sde_intervals

__all__ = [
    "integrate_intervals",
    "steps_for",
    "fixed_step_plan",
    "FUSED_METHODS",
    "integrate_ragged",
    "integrate_sde_intervals",
    "SDE_METHODS",
    "SolverSpec",
    "SOLVERS",
    "solver_spec",
    "FIXED_STEP_STAGES",
    "SolverOptions",
    "NFECounter",
    "integrate",
    "FIXED_STEP",
    "ADAPTIVE",
    "INTERVAL_ONLY",
    "ERROR_NORMS",
]


@dataclass(frozen=True)
class SolverSpec:
    """What ctflow needs to know of an ODE method.

    ``fixed_step``: steps of a set length (``SolverOptions.step_size``, in time units) without
    error control; otherwise adaptive (``rtol``/``atol``). ``stages``: field evaluations per step
    (per attempted step of an adaptive method, whose first stage reuses the previous step's last
    evaluation); ``None`` where it varies (the Adams methods start with RK4 steps, and the implicit
    one iterates its corrector). ``order``: the order of accuracy (for the Adams methods the order
    they reach after the start, at least). ``interval_only``: a scheme of
    :func:`integrate_intervals` alone, not of torchdiffeq. ``defaults``: torchdiffeq options that
    ``SolverOptions.extra`` may override.
    """

    name: str
    fixed_step: bool
    stages: int | None
    order: int
    interval_only: bool = False
    defaults: tuple[tuple[str, Any], ...] = ()


SOLVERS: dict[str, SolverSpec] = {
    spec.name: spec
    for spec in (
        SolverSpec("dopri5", fixed_step=False, stages=6, order=5),
        SolverSpec("dopri8", fixed_step=False, stages=13, order=8),
        SolverSpec("bosh3", fixed_step=False, stages=3, order=3),
        SolverSpec("fehlberg2", fixed_step=False, stages=2, order=2),
        SolverSpec("adaptive_heun", fixed_step=False, stages=1, order=2),
        SolverSpec("euler", fixed_step=True, stages=1, order=1),
        SolverSpec("midpoint", fixed_step=True, stages=2, order=2),
        SolverSpec("rk4", fixed_step=True, stages=4, order=4),
        SolverSpec("heun3", fixed_step=True, stages=3, order=3),
        # torchdiffeq raises the order up to an 11-step Adams-Bashforth by default, whose tiny
        # stability region makes the error grow as the step shrinks (dy/dt = -y on [0, 1]: error
        # 2e-4 with 10 steps, 0.46 with 80); max_order=5 stops at the 4-step, 4th-order method.
        SolverSpec("explicit_adams", fixed_step=True, stages=None, order=4, defaults=(("max_order", 5),)),
        SolverSpec("implicit_adams", fixed_step=True, stages=None, order=4),
        # The field must offer ``rate_and_target(h)`` so that ``dh/dt = rate * (target - h)``; each
        # step relaxes exactly with the coefficients frozen, which stays stable for any step length
        # (long gaps between observations).
        SolverSpec("exp_euler", fixed_step=True, stages=1, order=1, interval_only=True),
    )
}

# Views of SOLVERS under their former names.
FIXED_STEP = tuple(n for n, s in SOLVERS.items() if s.fixed_step and not s.interval_only)
ADAPTIVE = tuple(n for n, s in SOLVERS.items() if not s.fixed_step)
INTERVAL_ONLY = tuple(n for n, s in SOLVERS.items() if s.interval_only)
FIXED_STEP_STAGES = {n: s.stages for n, s in SOLVERS.items() if s.fixed_step and s.stages is not None}
ERROR_NORMS = ("rms", "max")


def solver_spec(method: str) -> SolverSpec:
    """The :class:`SolverSpec` of ``method``; ``ValueError`` naming the valid ones if unknown."""
    return SOLVERS[choice(method, "ODE method", SOLVERS)]


@dataclass
class SolverOptions:
    """How to integrate: ``method`` (adaptive: dopri5, dopri8, bosh3, fehlberg2, adaptive_heun;
    fixed-step: euler, midpoint, rk4, heun3, explicit_adams, implicit_adams; between observations
    only, :func:`integrate_intervals`' exp_euler; see :data:`SOLVERS`), tolerances for
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
        spec = solver_spec(self.method)
        positive_int(self.max_steps, "max_steps", allow_none=True)
        real_number(self.rtol, "rtol", positive=True)
        real_number(self.atol, "atol", positive=True)
        choice(self.norm, "error norm", ERROR_NORMS)
        real_number(self.aux_atol, "aux_atol", positive=True, allow_none=True, finite=False)
        if "norm" in self.extra:
            raise ValueError("set the error norm with SolverOptions.norm, not through extra")
        if spec.fixed_step:
            real_number(self.step_size, "step_size", positive=True, allow_none=True)

    @property
    def spec(self) -> SolverSpec:
        return SOLVERS[self.method]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _torchdiffeq_options(self) -> dict[str, Any]:
        opts = {**dict(self.spec.defaults), **self.extra}
        if self.spec.fixed_step and self.step_size is not None:
            opts["step_size"] = self.step_size
        if not self.spec.fixed_step:
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
    """Counts evaluations of a vector field: wraps ``func(t, state)``, or counts what it is told.

    ``nfe_forward`` counts evaluations made while solving forward in time; ``nfe_backward`` counts
    evaluations made by backpropagation: calls of the adjoint ODE, or, when differentiating through
    the solver, each recorded evaluation whose graph the gradient traverses. Counters accumulate
    until :meth:`reset`.

    ``NFECounter(func)`` wraps a vector field: use it as the field of :func:`integrate` and every
    call is counted. ``NFECounter()`` wraps nothing: code that evaluates a field itself (the fused
    loops of :func:`integrate_intervals`, an SDE solve) reports its counts with :meth:`add`. Both
    are modules, so a model holding one as a submodule is found by ``module.modules()``.
    """

    def __init__(self, func: nn.Module | None = None):
        super().__init__()
        self.func = func
        self.nfe_forward = 0
        self.nfe_backward = 0
        self._in_forward_solve = False

    def reset(self) -> None:
        self.nfe_forward = 0
        self.nfe_backward = 0

    def add(self, n_forward: int = 0, n_backward: int = 0) -> None:
        """Count ``n_forward`` evaluations of a forward solve and ``n_backward`` of backpropagation."""
        self.nfe_forward += n_forward
        self.nfe_backward += n_backward

    def _count_backward(self, grad: Tensor) -> Tensor:
        self.nfe_backward += 1
        return grad

    def forward(self, t: Tensor, state):
        if self.func is None:
            raise RuntimeError("this NFECounter wraps no vector field; report counts with add()")
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

    >>> import torch
    >>> from torch import nn
    >>> class Decay(nn.Module):
    ...     def forward(self, t, y):
    ...         return -y
    >>> y = integrate(Decay(), torch.ones(1), torch.tensor([0.0, 1.0]))  # y(t) = exp(-t)
    >>> y.shape, round(y[-1].item(), 4)
    (torch.Size([2, 1]), 0.3679)
    """
    options = options or SolverOptions()
    adaptive = not options.spec.fixed_step
    if options.spec.interval_only:
        raise ValueError(
            f"method {options.method!r} integrates between observations only (integrate_intervals)"
        )
    if counter is not None and func is not counter:
        raise ValueError("pass the NFECounter itself as func so that its evaluations are counted")
    kwargs: dict[str, Any] = {
        "rtol": options.rtol,
        "atol": options._atol(y0) if adaptive else options.atol,
        "method": options.method,
        "options": options._torchdiffeq_options(),
    }
    if counter is not None:
        counter._in_forward_solve = True
    try:
        if options.adjoint:
            params = adjoint_params if adjoint_params is not None else tuple(func.parameters())
            adjoint_options = {k: v for k, v in kwargs["options"].items() if k != "norm"}
            if adaptive and options.adjoint_seminorm:
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


def steps_for(max_dt: float, step_size: float) -> int:
    """Number of equal steps so that no row's step exceeds ``step_size``."""
    return max(1, math.ceil(max_dt / step_size - 1e-9))


def _interval_steps(max_dt: float, options: SolverOptions) -> int:
    """Fixed steps over an interval of ``max_dt`` (0 for none), capped at ``options.max_steps``."""
    step_size = _step_size(options)
    if max_dt <= 0:
        return 0
    return min(steps_for(max_dt, step_size), options.max_steps or math.inf)


def _step_size(options: SolverOptions) -> float:
    if options.step_size is None:
        raise ValueError(f"solver method {options.method!r} needs step_size (the largest step in time units)")
    return options.step_size


def fixed_step_plan(dts: Tensor, options: SolverOptions) -> list[int | None]:
    """Step counts of a fixed-step solver for each column of intervals ``dts (B, K)``.

    Column ``k`` gets ``steps_for(max_b dts[b, k], step_size)`` steps (0 for an all-zero column),
    at most ``max_steps``, read back from the device once for all columns; adaptive methods get
    ``None`` per column.
    """
    if not options.spec.fixed_step:
        return [None] * dts.shape[1]
    _step_size(options)
    if dts.numel() and float(dts.min()) < 0:
        raise ValueError("query or observation times precede the state's time")
    max_dt = dts.amax(dim=0).tolist() if dts.numel() else []
    return [_interval_steps(m, options) for m in max_dt]


# One step of length ``step`` (per row, (B, 1)) of the fixed-step schemes that integrate_intervals
# runs in its own loop: no solver object and no time grid per interval, which dominate the cost of
# the many short solves between observations. The other fixed-step methods go through torchdiffeq.
_Step = Callable[[Any, Tensor, Tensor], Tensor]


def _exp_euler_step(field: Any, h: Tensor, step: Tensor) -> Tensor:
    rate, target = field.rate_and_target(h)
    return target + (h - target) * torch.exp(-step * rate)


def _euler_step(field: Any, h: Tensor, step: Tensor) -> Tensor:
    return h + step * field(h)


def _midpoint_step(field: Any, h: Tensor, step: Tensor) -> Tensor:
    return h + step * field(h + 0.5 * step * field(h))


def _rk4_step(field: Any, h: Tensor, step: Tensor) -> Tensor:
    k1 = field(h)
    k2 = field(h + 0.5 * step * k1)
    k3 = field(h + 0.5 * step * k2)
    k4 = field(h + step * k3)
    return h + step / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


_FUSED_STEPS: dict[str, _Step] = {
    "exp_euler": _exp_euler_step,
    "euler": _euler_step,
    "midpoint": _midpoint_step,
    "rk4": _rk4_step,
}
FUSED_METHODS: tuple[str, ...] = tuple(_FUSED_STEPS)
"""Fixed-step methods that :func:`integrate_intervals` runs in its own loop, one field evaluation
per stage and no solver object: cheap enough to be planned step by step."""


class _Rescaled(nn.Module):
    def __init__(self, field: Callable[[Tensor], Tensor], dt: Tensor):
        super().__init__()
        self.field, self.dt = field, dt

    def forward(self, s: Tensor, h: Tensor) -> Tensor:
        return self.dt * self.field(h)


def _solve_rescaled(
    field: Callable[[Tensor], Tensor],
    h: Tensor,
    scale: Tensor,
    options: SolverOptions,
    s: Tensor,
    counter: NFECounter | None,
) -> Tensor:
    """``h`` at ``s[-1]`` under ``dh/ds = scale * f(h)``, solved by :func:`integrate` from ``s[0]``."""
    wrapped = NFECounter(_Rescaled(field, scale))
    params = field.parameters() if isinstance(field, nn.Module) else ()
    # Tensors the field depends on besides its parameters (a bound context) need gradients too.
    extra = tuple(getattr(field, "adjoint_tensors", ()))
    adjoint = tuple(p for p in params if p.requires_grad) + extra
    out = integrate(wrapped, h, s, options, counter=wrapped, adjoint_params=adjoint)[-1]
    if counter is not None:
        counter.add(wrapped.nfe_forward)
    return out


def integrate_ragged(
    field: Callable[[Tensor], Tensor],
    h: Tensor,
    step: Tensor,
    counts: list[int],
    options: SolverOptions,
    counter: NFECounter | None = None,
) -> Tensor:
    """Fixed steps of a fused method (:data:`FUSED_METHODS`) where rows take different numbers of
    steps: with the rows of ``h (B, H)`` sorted by their step counts, largest first, step ``t``
    advances the first ``counts[t]`` rows, row ``b`` by ``step[b]`` time units. A field with a
    ``first_rows(c)`` method (per-row data, e.g. a bound context) is restricted to those rows;
    any other field must map rows independently.

    >>> import torch
    >>> options = SolverOptions("euler", step_size=0.5)
    >>> h = integrate_ragged(lambda h: -h, torch.ones(3, 1), torch.tensor([0.5, 0.5, 0.5]), [3, 1], options)
    >>> h.squeeze(1)  # a step of every row, then a second step of the first row only
    tensor([0.2500, 0.5000, 0.5000])
    """
    step_fn = _FUSED_STEPS[options.spec.name]
    step = step.unsqueeze(-1)
    restrict = getattr(field, "first_rows", None)
    done = []  # rows that have taken all their steps, last rows first (views, copied once at the end)
    for c in counts:
        if c < h.shape[0]:
            done.append(h[c:])
            h = h[:c]
        if c:
            h = step_fn(field if restrict is None else restrict(c), h, step[:c])
    h = torch.cat([h, *reversed(done)]) if done else h
    if counter is not None:
        counter.add(len(counts) * options.spec.stages)
    return h


def integrate_intervals(
    field: Callable[[Tensor], Tensor],
    h: Tensor,
    dt: Tensor,
    options: SolverOptions,
    n_steps: int | None = None,
    counter: NFECounter | None = None,
) -> Tensor:
    """Advance ``h (B, H)`` by ``dt (B,)`` under the autonomous field ``f(h)``, all rows in lockstep.

    A fixed-step method takes ``n_steps`` equal steps in every row (a row's step is ``dt_b /
    n_steps``), so that with the default ``n_steps = steps_for(max(dt), options.step_size)`` (at
    most ``max_steps``) no step exceeds ``step_size`` time units, whatever the method. That default
    reads ``max(dt)`` back from the device; pass ``n_steps`` (e.g. from :func:`fixed_step_plan`) to
    avoid the sync. Adaptive methods ignore ``n_steps``. ``counter`` gets the forward evaluations.

    >>> import torch
    >>> options = SolverOptions("rk4", step_size=0.1)
    >>> h = integrate_intervals(lambda h: -h, torch.ones(3, 1), torch.tensor([0.0, 1.0, 2.0]), options)
    >>> h.squeeze(1)  # each row decays for its own duration: exp(-dt)
    tensor([1.0000, 0.3679, 0.1353])
    """
    scale = dt.unsqueeze(-1)
    spec = options.spec
    if not spec.fixed_step:
        s = torch.tensor([0.0, 1.0], dtype=h.dtype, device=h.device)
        return _solve_rescaled(field, h, scale, options, s, counter)
    if n_steps is None:
        n_steps = _interval_steps(float(dt.max()) if dt.numel() else 0.0, options)
    if n_steps == 0:
        return h
    step_fn = _FUSED_STEPS.get(spec.name)
    if step_fn is None:
        # torchdiffeq's fixed grid is the time grid it is given when step_size is unset
        grid = torch.linspace(0.0, 1.0, n_steps + 1, dtype=h.dtype, device=h.device)
        return _solve_rescaled(field, h, scale, dataclasses.replace(options, step_size=None), grid, counter)
    step = scale / n_steps
    for _ in range(n_steps):
        h = step_fn(field, h, step)
    if counter is not None:
        counter.add(n_steps * spec.stages)
    return h
