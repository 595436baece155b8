"""Continuous normalizing flows (CNF / FFJORD) with exact, Hutchinson and bottleneck traces.

Chen, Rubanova, Bettencourt & Duvenaud (2018), "Neural Ordinary Differential Equations".
Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud (2019), "FFJORD: Free-form Continuous Dynamics
for Scalable Reversible Generative Models".
Finlay, Jacobsen, Nurbekyan & Oberman (2020), "How to train your neural ODE: the world of Jacobian
and kinetic regularization".

A CNF moves ``x`` along ``dz/dt = f(z, t, context)`` from ``t = 0`` to ``t = T``; the change of
log-density obeys ``d log p(z(t)) / dt = -tr(df/dz)``, so the forward log-determinant is
``int_0^T tr(df/dz) dt``. Time is rescaled to ``s in [0, 1]`` (the solver integrates
``T * f(z, sT)``), which makes ``T`` an ordinary, optionally learned, parameter. All solves go
through :func:`ctflow.ode.integrate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..ode import NFECounter, SolverOptions, integrate
from .base import Transform
from .nets import make_activation

__all__ = [
    "ConcatLinear",
    "ConcatSquashLinear",
    "GatedLinear",
    "VectorField",
    "CNF",
    "TRACE_ESTIMATORS",
    "LAYER_TYPES",
]

TRACE_ESTIMATORS = ("exact", "hutchinson", "bottleneck")
LAYER_TYPES = ("concat", "concatsquash", "gated", "input")


class ConcatLinear(nn.Module):
    """``W [x, c] + b``: the conditioning vector ``c`` (time features and context) is concatenated."""

    def __init__(self, in_features: int, out_features: int, cond_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features + cond_features, out_features)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.linear(torch.cat([x, cond.expand(x.shape[0], -1)], dim=1))


class ConcatSquashLinear(nn.Module):
    """``(W x + b) * sigmoid(A c + a) + B c`` (the FFJORD concat-squash layer)."""

    def __init__(self, in_features: int, out_features: int, cond_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(cond_features, out_features)
        self.shift = nn.Linear(cond_features, out_features, bias=False)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.linear(x) * torch.sigmoid(self.gate(cond)) + self.shift(cond)


class GatedLinear(nn.Module):
    """``ConcatLinear(x, c) * sigmoid(ConcatLinear'(x, c))``: a gated linear unit with conditioning."""

    def __init__(self, in_features: int, out_features: int, cond_features: int):
        super().__init__()
        self.value = ConcatLinear(in_features, out_features, cond_features)
        self.gate = ConcatLinear(in_features, out_features, cond_features)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.value(x, cond) * torch.sigmoid(self.gate(x, cond))


class _InputOnlyLinear(nn.Module):
    """Linear layer that ignores the conditioning (used after the first layer in ``"input"`` mode)."""

    def __init__(self, in_features: int, out_features: int, cond_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.linear(x)


_LAYERS = {"concat": ConcatLinear, "concatsquash": ConcatSquashLinear, "gated": GatedLinear}


class VectorField(nn.Module):
    """Neural vector field ``f(z, t, context)``: an MLP of time-conditioned layers.

    Args:
        dim: state size.
        hidden: hidden layer sizes.
        context_dim: size of the conditioning context.
        layer: ``"concatsquash"``, ``"concat"``, ``"gated"`` (time and context enter every layer) or
            ``"input"`` (concatenated to the input only).
        activation: hidden activation (``softplus``, ``tanh``, ``elu``, ...; smooth ones suit ODEs).
        time_embedding: ``"linear"`` (``t`` itself) or ``"fourier"`` (``cos/sin(k pi t)``,
            ``k = 1..freqs``).
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_dim: int = 0,
        layer: str = "concatsquash",
        activation: str = "softplus",
        time_embedding: str = "linear",
        freqs: int = 3,
    ):
        super().__init__()
        if layer not in LAYER_TYPES:
            raise ValueError(f"unknown layer {layer!r}; valid: {', '.join(LAYER_TYPES)}")
        if time_embedding not in ("linear", "fourier"):
            raise ValueError(f"unknown time_embedding {time_embedding!r}; valid: 'linear', 'fourier'")
        if not hidden:
            raise ValueError("the vector field needs at least one hidden layer")
        self.dim, self.context_dim = dim, context_dim
        self.time_embedding = time_embedding
        self.register_buffer("freqs", torch.arange(1, freqs + 1) * math.pi)
        time_features = 1 if time_embedding == "linear" else 2 * freqs
        cond = time_features + context_dim
        sizes = [dim, *hidden, dim]
        self.layers = nn.ModuleList()
        for i in range(len(sizes) - 1):
            kind = _LAYERS.get(layer, ConcatLinear) if (layer != "input" or i == 0) else _InputOnlyLinear
            self.layers.append(kind(sizes[i], sizes[i + 1], cond))
        self.activations = nn.ModuleList(make_activation(activation) for _ in hidden)
        # The narrowest hidden layer is where the bottleneck trace estimator splits the network.
        self.bottleneck_index = min(range(len(hidden)), key=lambda i: hidden[i])
        self.bottleneck_width = hidden[self.bottleneck_index]

    def condition(self, t: Tensor, context: Tensor | None, like: Tensor) -> Tensor:
        """The conditioning row(s) ``[time features, context]``."""
        t = t.to(like).reshape(1, 1)
        tf = (
            t
            if self.time_embedding == "linear"
            else torch.cat([(self.freqs * t).cos(), (self.freqs * t).sin()], 1)
        )
        if context is None:
            return tf
        return torch.cat([tf.expand(context.shape[0], -1), context], dim=1)

    def encode(self, z: Tensor, cond: Tensor) -> Tensor:
        """Layers up to and including the bottleneck (post-activation)."""
        h = z
        for i in range(self.bottleneck_index + 1):
            h = self.activations[i](self.layers[i](h, cond))
        return h

    def decode(self, h: Tensor, cond: Tensor) -> Tensor:
        """The remaining layers, from the bottleneck to the output."""
        for i in range(self.bottleneck_index + 1, len(self.layers)):
            h = self.layers[i](h, cond)
            if i < len(self.activations):
                h = self.activations[i](h)
        return h

    def forward(self, t: Tensor, z: Tensor, context: Tensor | None = None) -> Tensor:
        cond = self.condition(t, context, z)
        return self.decode(self.encode(z, cond), cond)


class _Dynamics(nn.Module):
    """Augmented dynamics in rescaled time: ``(z, logdet[, kinetic, jacobian])``."""

    def __init__(self, cnf: CNF):
        super().__init__()
        self.__dict__["cnf"] = cnf  # not a submodule: the CNF owns this module, not the reverse
        self.context: Tensor | None = None
        self.noise: Tensor | None = None
        self.reg_noise: Tensor | None = None
        self.regularise = False

    def forward(self, s: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        cnf, field = self.cnf, self.cnf.field
        z = state[0]
        T = cnf.end_time
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not (create_graph and z.requires_grad):
                # Without an outer graph (no_grad solves, the adjoint's forward pass) the state may
                # still carry requires_grad from its inputs: start a fresh leaf to differentiate.
                z = z.detach().requires_grad_(True)
            if cnf.trace == "bottleneck":
                cond = field.condition(s * T, self.context, z)
                h = field.encode(z, cond)
                f = field.decode(h, cond)
                e = self.noise
                a = torch.autograd.grad(h, z, e, create_graph=True)[0]
                b = torch.autograd.grad(f, h, a, create_graph=create_graph, retain_graph=True)[0]
                trace = (b * e).sum(1)
            else:
                f = field(s * T, z, self.context)
                if cnf.trace == "exact":
                    trace = f.new_zeros(f.shape[0])
                    for d in range(f.shape[1]):
                        g = torch.autograd.grad(
                            f[:, d].sum(), z, create_graph=create_graph, retain_graph=True
                        )[0]
                        trace = trace + g[:, d]
                else:
                    e = self.noise
                    vjp = torch.autograd.grad(f, z, e, create_graph=create_graph, retain_graph=True)[0]
                    trace = (vjp * e).sum(1)
            out = [T * f, T * trace]
            if self.regularise:
                out.append(T * f.square().sum(1))
                e = self.reg_noise
                vjp = torch.autograd.grad(f, z, e, create_graph=create_graph, retain_graph=True)[0]
                out.append(T * vjp.square().sum(1))
        if not create_graph:
            out = [o.detach() for o in out]
        return tuple(out)


class CNF(Transform):
    """Continuous normalizing flow layer (FFJORD when the trace is estimated).

    Grathwohl et al. (2019), "FFJORD: Free-form Continuous Dynamics for Scalable Reversible
    Generative Models"; Chen et al. (2018), "Neural Ordinary Differential Equations".

    Args:
        dim: event size.
        context_dim: conditioning context size (a conditional CNF when > 0).
        hidden, layer, activation, time_embedding: the :class:`VectorField` (or pass ``field``).
        trace: ``"exact"`` (one backward pass per dimension), ``"hutchinson"`` (unbiased estimate
            ``e^T (df/dz) e`` with one noise draw per solve) or ``"bottleneck"`` (the same
            estimate taken through the narrowest hidden layer, lower variance when it is narrow).
        noise: ``"gaussian"`` or ``"rademacher"`` noise for the estimators.
        end_time: integration time ``T``; ``learn_end_time`` makes it a parameter (kept positive).
        solver: :class:`~ctflow.ode.SolverOptions` or a dict of its fields.
        kinetic, jacobian: weights of the kinetic-energy and Jacobian-Frobenius regularisers
            (Finlay et al. 2020); when non-zero and training, :meth:`regularization` returns the
            weighted, batch-averaged integrals of the last forward solve.
    """

    analytic_inverse = False

    def __init__(
        self,
        dim: int,
        context_dim: int = 0,
        hidden: Sequence[int] = (64, 64),
        layer: str = "concatsquash",
        activation: str = "softplus",
        time_embedding: str = "linear",
        field: nn.Module | None = None,
        trace: str = "exact",
        noise: str = "gaussian",
        end_time: float = 1.0,
        learn_end_time: bool = False,
        solver: SolverOptions | dict | None = None,
        kinetic: float = 0.0,
        jacobian: float = 0.0,
    ):
        super().__init__()
        if trace not in TRACE_ESTIMATORS:
            raise ValueError(f"unknown trace estimator {trace!r}; valid: {', '.join(TRACE_ESTIMATORS)}")
        if noise not in ("gaussian", "rademacher"):
            raise ValueError(f"unknown noise {noise!r}; valid: 'gaussian', 'rademacher'")
        if not end_time > 0:
            raise ValueError(f"end_time must be positive, got {end_time}")
        if kinetic < 0 or jacobian < 0:
            raise ValueError("regularisation weights kinetic and jacobian must be >= 0")
        self.dim, self.context_dim = dim, context_dim
        self.field = (
            field
            if field is not None
            else VectorField(dim, hidden, context_dim, layer, activation, time_embedding)
        )
        if trace == "bottleneck" and not hasattr(self.field, "encode"):
            raise ValueError("trace='bottleneck' needs a field with encode/decode (a VectorField)")
        self.trace, self.noise = trace, noise
        self.log_end_time = nn.Parameter(torch.tensor(math.log(end_time)), requires_grad=learn_end_time)
        if isinstance(solver, dict):
            solver = SolverOptions(**solver)
        self.solver = solver or SolverOptions()
        self.kinetic, self.jacobian = float(kinetic), float(jacobian)
        self.counter = NFECounter(_Dynamics(self))
        self._last_regularization: Tensor | None = None

    @property
    def end_time(self) -> Tensor:
        return self.log_end_time.exp()

    @property
    def nfe_forward(self) -> int:
        """Function evaluations of forward-in-time solves since the last :meth:`reset_nfe`."""
        return self.counter.nfe_forward

    @property
    def nfe_backward(self) -> int:
        """Function evaluations spent by backpropagation since the last :meth:`reset_nfe`."""
        return self.counter.nfe_backward

    def reset_nfe(self) -> None:
        self.counter.reset()

    def _draw(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        if self.noise == "gaussian":
            return torch.randn(shape, dtype=like.dtype, device=like.device)
        return torch.randint(0, 2, shape, device=like.device).to(like.dtype) * 2 - 1

    def _solve(self, x: Tensor, context: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor]:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"CNF expects input of shape (batch, {self.dim}), got {tuple(x.shape)}")
        dyn: _Dynamics = self.counter.func
        dyn.context = context
        width = self.field.bottleneck_width if self.trace == "bottleneck" else self.dim
        dyn.noise = self._draw((x.shape[0], width), x) if self.trace != "exact" else None
        regularise = self.training and not reverse and (self.kinetic > 0 or self.jacobian > 0)
        dyn.regularise = regularise
        dyn.reg_noise = self._draw(tuple(x.shape), x) if regularise else None
        zeros = x.new_zeros(x.shape[0])
        state = (x, zeros, zeros, zeros) if regularise else (x, zeros)
        s = torch.tensor([1.0, 0.0] if reverse else [0.0, 1.0], dtype=x.dtype, device=x.device)
        params = tuple(p for p in self.parameters() if p.requires_grad)
        if context is not None and context.requires_grad:
            params = (*params, context)
        out = integrate(self.counter, state, s, self.solver, counter=self.counter, adjoint_params=params)
        final = [o[-1] for o in out]
        if regularise:
            self._last_regularization = self.kinetic * final[2].mean() + self.jacobian * final[3].mean()
        return final[0], final[1]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._solve(x, context, reverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # Integrating from s=1 back to s=0 accumulates -int tr(df/dz) dt: the inverse log-det.
        return self._solve(z, context, reverse=True)

    def regularization(self) -> Tensor | None:
        """Weighted kinetic + Jacobian penalty of the last training-mode forward solve (or None)."""
        reg, self._last_regularization = self._last_regularization, None
        return reg
