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

Jacobian products for the trace are taken in one of two ways. For a :class:`VectorField` whose
activations are known (see :func:`activation_jvp`), tangents are pushed through the layers with
the values (forward mode): the exact trace carries the ``dim`` basis vectors as tangents (their
products are the Jacobian's columns) and the Hutchinson estimate carries the noise vector, so one
evaluation is plain tensor algebra and backpropagating through the solver needs first-order
autograd only. Any other field uses reverse-mode vector-Jacobian products (one batched product for
the exact trace), which backpropagation then differentiates a second time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import choice, real_number
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
    "JACOBIAN_PRODUCTS",
    "activation_jvp",
]

TRACE_ESTIMATORS = ("exact", "hutchinson", "bottleneck")
LAYER_TYPES = ("concat", "concatsquash", "gated", "input")
JACOBIAN_PRODUCTS = ("auto", "forward", "reverse")

# ``(input, output, tangents) -> tangents``: an elementwise activation's derivative applied to tangents.
TangentMap = Callable[[Tensor, Tensor, Tensor], Tensor]
_aten = torch.ops.aten


def _silu_jvp(pre: Tensor, post: Tensor, tangents: Tensor) -> Tensor:
    s = torch.sigmoid(pre)
    return s * (1.0 + pre * (1.0 - s)) * tangents


def activation_jvp(act: nn.Module) -> TangentMap | None:
    """Jacobian-vector product of an elementwise activation module, ``(input, output, v) -> a'(input) v``.

    ``v`` may carry extra leading dimensions (several tangents per input). The Jacobian of an
    elementwise map is diagonal, so this is the activation's own backward kernel applied to the
    tangents: one fused operation, itself differentiable. Known: ``ReLU``, ``ELU``, ``Tanh``,
    ``Sigmoid``, ``Softplus``, ``SiLU``, ``GELU``; ``None`` for anything else (or an in-place module),
    which sends the CNF to reverse-mode Jacobian products.
    """
    if getattr(act, "inplace", False):
        return None
    kind = type(act)
    if kind is nn.ELU:
        alpha = float(act.alpha)
        if alpha >= 0:
            return lambda pre, post, v: _aten.elu_backward(v, alpha, 1, 1, True, post)
        return lambda pre, post, v: _aten.elu_backward(v, alpha, 1, 1, False, pre)
    if kind is nn.Tanh:
        return lambda pre, post, v: _aten.tanh_backward(v, post)
    if kind is nn.Sigmoid:
        return lambda pre, post, v: _aten.sigmoid_backward(v, post)
    if kind is nn.ReLU:
        return lambda pre, post, v: _aten.threshold_backward(v, post, 0)
    if kind is nn.Softplus:
        beta, threshold = float(act.beta), float(act.threshold)
        return lambda pre, post, v: _aten.softplus_backward(v, pre, beta, threshold)
    if kind is nn.SiLU:
        return _silu_jvp
    if kind is nn.GELU:
        approximate = act.approximate
        return lambda pre, post, v: _aten.gelu_backward(v, pre, approximate=approximate)
    return None


class ConcatLinear(nn.Module):
    """``W [x, c] + b``: the conditioning vector ``c`` (time features and context) is concatenated."""

    def __init__(self, in_features: int, out_features: int, cond_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features + cond_features, out_features)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.linear(torch.cat([x, cond.expand(x.shape[0], -1)], dim=1))

    def jvp(self, x: Tensor, cond: Tensor, dxs: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The output and its derivatives along the tangents ``dxs`` (each broadcastable to ``x``)."""
        w = self.linear.weight[:, : x.shape[1]]  # the conditioning does not depend on x
        return self(x, cond), [F.linear(dx, w) for dx in dxs]


class ConcatSquashLinear(nn.Module):
    """``(W x + b) * sigmoid(A c + a) + B c`` (the FFJORD concat-squash layer)."""

    def __init__(self, in_features: int, out_features: int, cond_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(cond_features, out_features)
        self.shift = nn.Linear(cond_features, out_features, bias=False)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.linear(x) * torch.sigmoid(self.gate(cond)) + self.shift(cond)

    def jvp(self, x: Tensor, cond: Tensor, dxs: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        gate = torch.sigmoid(self.gate(cond))
        y = self.linear(x) * gate + self.shift(cond)
        return y, [F.linear(dx, self.linear.weight) * gate for dx in dxs]


class GatedLinear(nn.Module):
    """``ConcatLinear(x, c) * sigmoid(ConcatLinear'(x, c))``: a gated linear unit with conditioning."""

    def __init__(self, in_features: int, out_features: int, cond_features: int):
        super().__init__()
        self.value = ConcatLinear(in_features, out_features, cond_features)
        self.gate = ConcatLinear(in_features, out_features, cond_features)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.value(x, cond) * torch.sigmoid(self.gate(x, cond))

    def jvp(self, x: Tensor, cond: Tensor, dxs: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        value, dvalues = self.value.jvp(x, cond, dxs)
        gate, dgates = self.gate.jvp(x, cond, dxs)
        s = torch.sigmoid(gate)
        ds = value * s * (1.0 - s)  # d(value * sigmoid(gate)) / d gate
        return value * s, [dv * s + ds * dg for dv, dg in zip(dvalues, dgates, strict=True)]


class _InputOnlyLinear(nn.Module):
    """Linear layer that ignores the conditioning (used after the first layer in ``"input"`` mode)."""

    def __init__(self, in_features: int, out_features: int, cond_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.linear(x)

    def jvp(self, x: Tensor, cond: Tensor, dxs: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        return self.linear(x), [F.linear(dx, self.linear.weight) for dx in dxs]


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
        choice(layer, "layer", LAYER_TYPES)
        choice(time_embedding, "time_embedding", ("linear", "fourier"))
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

    def _tangent_maps(self) -> list[TangentMap | None]:
        return [activation_jvp(a) for a in self.activations]

    @property
    def supports_jvp(self) -> bool:
        """Whether :meth:`jvp` applies: every layer has a ``jvp`` and every activation a known JVP."""
        return all(hasattr(layer, "jvp") for layer in self.layers) and all(
            m is not None for m in self._tangent_maps()
        )

    def jvp(
        self, t: Tensor, z: Tensor, tangents: Sequence[Tensor], context: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """``f(z, t, context)`` and the Jacobian-vector products ``(df/dz) v`` for each tangent ``v``.

        Each tangent is broadcastable to ``z`` (``(batch, dim)``, or ``(dim,)`` for one shared by
        every row); each product comes back as ``(batch, dim)``. One pass pushes all the tangents
        through the layers alongside the values.
        """
        cond = self.condition(t, context, z)
        maps = self._tangent_maps()
        h, dh = z, list(tangents)
        for i, layer in enumerate(self.layers):
            h, dh = layer.jvp(h, cond, dh)
            if i < len(self.activations):
                pre, h = h, self.activations[i](h)
                tangent_map = maps[i]
                if tangent_map is None:
                    raise RuntimeError(f"no Jacobian-vector product for activation {self.activations[i]}")
                dh = [tangent_map(pre, h, v) for v in dh]
        return h, [v.expand_as(h) for v in dh]


class _Dynamics(nn.Module):
    """Augmented dynamics in rescaled time: ``(z, logdet[, kinetic, jacobian])``."""

    def __init__(self, cnf: CNF):
        super().__init__()
        self.__dict__["cnf"] = cnf  # not a submodule: the CNF owns this module, not the reverse
        self.context: Tensor | None = None
        self.noise: Tensor | None = None
        self.reg_noise: Tensor | None = None
        self.regularise = False
        self.forward_mode = False
        self.basis: Tensor | None = None  # (dim, dim) identity: the tangents of the exact trace
        self.time_scale: float | None = None  # T when it is fixed; None reads the learned T
        self.batched_vjp = True  # reverse-mode exact trace: one batched product (vs one per dim)

    def forward(self, s: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        T = self.cnf.end_time if self.time_scale is None else self.time_scale
        if self.forward_mode:
            out = self._forward_mode(s * T, state[0])
        else:
            out = self._reverse_mode(s * T, state[0])
        if isinstance(T, float) and T == 1.0:
            return tuple(out)
        return tuple(T * o for o in out)

    def _forward_mode(self, t: Tensor, z: Tensor) -> list[Tensor]:
        exact = self.cnf.trace == "exact"
        # Exact: the basis vectors e_i, whose products (df/dz) e_i are the Jacobian's columns.
        tangents = list(self.basis) if exact else [self.noise]
        if self.regularise:
            tangents.append(self.reg_noise)
        f, jvp = self.cnf.field.jvp(t, z, tangents, self.context)
        if exact:
            trace = jvp[0][:, 0]
            for i in range(1, z.shape[1]):
                trace = trace + jvp[i][:, i]
        else:
            trace = (jvp[0] * self.noise).sum(1)
        out = [f, trace]
        if self.regularise:
            out.append(f.square().sum(1))
            out.append(jvp[-1].square().sum(1))  # |(df/dz) e|^2, unbiased for |df/dz|_F^2
        return out

    def _reverse_mode(self, t: Tensor, z: Tensor) -> list[Tensor]:
        cnf, field = self.cnf, self.cnf.field
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not (create_graph and z.requires_grad):
                # Without an outer graph (no_grad solves, the adjoint's forward pass) the state may
                # still carry requires_grad from its inputs: start a fresh leaf to differentiate.
                z = z.detach().requires_grad_(True)
            if cnf.trace == "bottleneck":
                cond = field.condition(t, self.context, z)
                h = field.encode(z, cond)
                f = field.decode(h, cond)
                e = self.noise
                a = torch.autograd.grad(h, z, e, create_graph=create_graph, retain_graph=True)[0]
                b = torch.autograd.grad(f, h, a, create_graph=create_graph, retain_graph=True)[0]
                trace = (b * e).sum(1)
            else:
                f = field(t, z, self.context)
                if cnf.trace == "exact":
                    trace = self._exact_trace_reverse(f, z, create_graph)
                else:
                    e = self.noise
                    vjp = torch.autograd.grad(f, z, e, create_graph=create_graph, retain_graph=True)[0]
                    trace = (vjp * e).sum(1)
            out = [f, trace]
            if self.regularise:
                out.append(f.square().sum(1))
                e = self.reg_noise
                vjp = torch.autograd.grad(f, z, e, create_graph=create_graph, retain_graph=True)[0]
                out.append(vjp.square().sum(1))
        if not create_graph:
            out = [o.detach() for o in out]
        return out

    def _exact_trace_reverse(self, f: Tensor, z: Tensor, create_graph: bool) -> Tensor:
        """``tr(df/dz)`` from all the Jacobian's rows in one batched vector-Jacobian product.

        A field whose operations cannot be batched that way (e.g. an autograd function without a
        vmap rule) gets one product per dimension instead, from then on.
        """
        d = f.shape[1]
        if self.batched_vjp:
            basis = torch.eye(d, dtype=f.dtype, device=f.device).unsqueeze(1).expand(d, f.shape[0], d)
            try:
                rows = torch.autograd.grad(
                    f, z, basis, create_graph=create_graph, retain_graph=True, is_grads_batched=True
                )[0]
                return rows.diagonal(dim1=0, dim2=2).sum(-1)
            except RuntimeError:
                self.batched_vjp = False
        trace = f.new_zeros(f.shape[0])
        for i in range(d):
            row = torch.autograd.grad(f[:, i].sum(), z, create_graph=create_graph, retain_graph=True)[0]
            trace = trace + row[:, i]
        return trace


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
        jacobian_products: how the exact and Hutchinson traces get their Jacobian products:
            ``"forward"`` pushes tangents through a :class:`VectorField` with the values (the
            cheapest; needs a field whose activations :func:`activation_jvp` knows), ``"reverse"`` uses
            autograd vector-Jacobian products (any field), ``"auto"`` (default) takes forward mode
            whenever it applies. Both give the same values up to rounding; the bottleneck
            estimator always uses reverse mode. With the Jacobian regulariser, forward mode
            estimates ``|df/dz|_F^2`` by ``|(df/dz) e|^2`` and reverse mode by ``|e^T (df/dz)|^2``.
        end_time: integration time ``T``; ``learn_end_time`` makes it a parameter (kept positive).
        solver: :class:`~ctflow.ode.SolverOptions` or a dict of its fields. The state is
            ``(z, log-det[, regularisers])``; ``SolverOptions.aux_atol`` sets the log-determinant's
            own absolute tolerance (it rarely needs the state's).
        kinetic, jacobian: weights of the kinetic-energy and Jacobian-Frobenius regularisers
            (Finlay et al. 2020); when non-zero and training, :meth:`regularization` returns the
            weighted, batch-averaged integrals of the last forward solve.

    >>> import torch
    >>> from ctflow.flows import CNF, Flow
    >>> cnf = CNF(2, hidden=(16,), solver={"method": "rk4", "step_size": 0.25})
    >>> flow = Flow(cnf, dim=2)
    >>> flow.log_prob(torch.zeros(4, 2)).shape, flow.sample(3).shape
    (torch.Size([4]), torch.Size([3, 2]))
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
        jacobian_products: str = "auto",
        end_time: float = 1.0,
        learn_end_time: bool = False,
        solver: SolverOptions | dict | None = None,
        kinetic: float = 0.0,
        jacobian: float = 0.0,
    ):
        super().__init__()
        choice(trace, "trace estimator", TRACE_ESTIMATORS)
        choice(noise, "noise", ("gaussian", "rademacher"))
        choice(jacobian_products, "jacobian_products", JACOBIAN_PRODUCTS)
        end_time = real_number(end_time, "end_time", positive=True)
        kinetic = real_number(kinetic, "kinetic", positive=False)
        jacobian = real_number(jacobian, "jacobian", positive=False)
        self.dim, self.context_dim = dim, context_dim
        self.field = (
            field
            if field is not None
            else VectorField(dim, hidden, context_dim, layer, activation, time_embedding)
        )
        if trace == "bottleneck" and not hasattr(self.field, "encode"):
            raise ValueError("trace='bottleneck' needs a field with encode/decode (a VectorField)")
        self.trace, self.noise = trace, noise
        self.jacobian_products = jacobian_products
        if jacobian_products == "forward" and not self._forward_mode_applies():
            raise ValueError(
                "jacobian_products='forward' needs trace 'exact' or 'hutchinson' and a VectorField "
                "whose activations activation_jvp knows"
            )
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

    def _forward_mode_applies(self) -> bool:
        field = self.field
        return self.trace != "bottleneck" and isinstance(field, VectorField) and field.supports_jvp

    def _draw(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        if self.noise == "gaussian":
            return torch.randn(shape, dtype=like.dtype, device=like.device)
        return torch.randint(0, 2, shape, device=like.device).to(like.dtype) * 2 - 1

    def _solve(self, x: Tensor, context: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor]:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"CNF expects input of shape (batch, {self.dim}), got {tuple(x.shape)}")
        dyn: _Dynamics = self.counter.func
        dyn.context = context
        dyn.forward_mode = self.jacobian_products != "reverse" and self._forward_mode_applies()
        dyn.basis = None
        if dyn.forward_mode and self.trace == "exact":
            dyn.basis = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        dyn.time_scale = None if self.log_end_time.requires_grad else math.exp(self.log_end_time.item())
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
