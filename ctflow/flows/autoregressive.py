"""MADE and the affine autoregressive flows MAF and IAF.

Germain, Gregor, Murray & Larochelle (2015), "MADE: Masked Autoencoder for Distribution Estimation".
Papamakarios, Pavlakou & Murray (2017), "Masked Autoregressive Flow for Density Estimation".
Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), "Improved Variational Inference
with Inverse Autoregressive Flow".

A MAF step computes ``z = x * exp(s(x_<i)) + t(x_<i)`` for all dimensions in one pass (density
direction parallel); its inverse needs one pass per dimension. An IAF step is the inverse of a MAF
step: sampling is one pass, the density of an external point takes one pass per dimension. Without
autograd (e.g. under ``torch.no_grad()``, as in ``Flow.sample``) the sequential inverse evaluates
each hidden unit of the MADE once in all, as soon as the inputs it depends on are known, instead
of the whole network in every pass; the result is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import Inverse, Transform
from .nets import make_activation, soft_clamp

__all__ = ["MADE", "MaskedLinear", "MaskedAffineAutoregressive", "InverseAffineAutoregressive", "make_order"]


def make_order(
    dim: int, order: str | Sequence[int] | Tensor = "sequential", seed: int | None = None
) -> Tensor:
    """Autoregressive degrees 1..dim: ``"sequential"``, ``"reverse"``, ``"random"`` or explicit.

    An explicit order lists, for each input dimension, its position (1-based or 0-based) in the
    autoregressive chain.
    """
    if isinstance(order, str):
        if order == "sequential":
            return torch.arange(1, dim + 1)
        if order == "reverse":
            return torch.arange(dim, 0, -1)
        if order == "random":
            g = torch.Generator()
            g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
            return torch.randperm(dim, generator=g) + 1
        raise ValueError(
            f"unknown order {order!r}; valid: 'sequential', 'reverse', 'random' or a permutation"
        )
    degrees = torch.as_tensor(order, dtype=torch.long).flatten()
    if degrees.numel() != dim:
        raise ValueError(f"order must have {dim} entries, got {degrees.numel()}")
    if degrees.min() == 0:
        degrees = degrees + 1
    if not torch.equal(degrees.sort().values, torch.arange(1, dim + 1)):
        raise ValueError("order must be a permutation of 1..dim (or 0..dim-1)")
    return degrees


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 connectivity mask.

    The product is formed from the current ``weight`` at each use, so whatever is written into the
    masked entries (an optimiser step, a loaded state dict, noise) never reaches the output and gets
    no gradient. Callers that evaluate the layer many times with unchanged parameters take
    :meth:`masked_weight` once and reuse it.
    """

    def __init__(self, in_features: int, out_features: int, mask: Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def masked_weight(self) -> Tensor:
        """``weight * mask``, the weight the layer applies."""
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.masked_weight(), self.bias)


class FrozenMADE(NamedTuple):
    """A :class:`MADE` with its masks applied and its context folded in (see :meth:`MADE.freeze`).

    ``input_weight_t`` is the transposed first-layer weight on the autoregressive inputs,
    ``(dim, hidden)``; ``first_term`` is the first layer's bias plus the context's contribution
    (``(hidden,)``, ``(1, hidden)`` or ``(batch, hidden)``); ``layers`` lists the rest of the
    network: ``(weight, bias)`` pairs and activation modules.
    """

    input_weight_t: Tensor
    first_term: Tensor
    layers: tuple[tuple[Tensor, Tensor] | nn.Module, ...]


class MADE(nn.Module):
    """Masked autoencoder: output ``p * dim + i`` depends only on inputs earlier than ``i``.

    Args:
        dim: number of autoregressive inputs.
        n_params: parameters per dimension (outputs are ``(batch, n_params * dim)``, parameter
            ``p`` of dimension ``i`` at column ``p * dim + i``).
        hidden: hidden layer sizes.
        context_dim: size of a context vector fed to the first layer, seen by every output.
        order: autoregressive order (see :func:`make_order`).
        activation: hidden activation name.
        zero_init: start the output layer at zero (the flow starts as the identity).
    """

    def __init__(
        self,
        dim: int,
        n_params: int = 2,
        hidden: Sequence[int] = (64, 64),
        context_dim: int = 0,
        order: str | Sequence[int] | Tensor = "sequential",
        activation: str = "relu",
        zero_init: bool = True,
        seed: int | None = None,
    ):
        super().__init__()
        if not hidden:
            raise ValueError("MADE needs at least one hidden layer")
        self.dim, self.n_params, self.context_dim = dim, n_params, context_dim
        degrees_in = make_order(dim, order, seed)
        self.register_buffer("degrees", degrees_in)
        degrees = [degrees_in]
        layers: list[nn.Module] = []
        in_size = dim
        for i, h in enumerate(hidden):
            # Hidden degrees cycle through lowest..dim-1. Degree-0 units see only the context: with a
            # context they exist so that the first dimension's parameters depend on it too.
            lowest = 0 if (context_dim or dim == 1) else 1
            d_h = torch.arange(h) % max(dim - lowest, 1) + lowest
            mask = (d_h[:, None] >= degrees[-1][None, :]).float()
            if i == 0 and context_dim:
                mask = torch.cat([mask, torch.ones(h, context_dim)], dim=1)
            layers += [
                MaskedLinear(in_size + (context_dim if i == 0 else 0), h, mask),
                make_activation(activation),
            ]
            degrees.append(d_h)
            in_size = h
        d_out = degrees_in.repeat(n_params)
        out = MaskedLinear(in_size, n_params * dim, (d_out[:, None] > degrees[-1][None, :]).float())
        if zero_init:
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        layers.append(out)
        self.net = nn.Sequential(*layers)

    def freeze(self, context: Tensor | None = None) -> FrozenMADE:
        """The masked weights and the context's share of the first layer, computed once.

        Pass the result as ``frozen`` to evaluate the network several times on one context (the
        passes of an autoregressive inverse) without re-applying the masks or re-projecting the
        context. It holds the current parameters (and, with autograd on, their graph): use it
        within one computation, not across parameter updates.
        """
        first, *rest = self.net
        # Transposed and contiguous, so that the weight gradients of these narrow products are
        # computed as wide ones (``x^T @ grad``, not ``(grad^T @ x)^T``).
        weight_t = first.masked_weight().t()
        if self.context_dim:
            if context is None:
                raise ValueError(f"MADE needs a context of shape (batch, {self.context_dim})")
            if context.dim() == 1:
                context = context.unsqueeze(0)
            # The context columns sit after the ``dim`` input columns of the first layer.
            first_term = torch.addmm(first.bias, context, weight_t[self.dim :].contiguous())
        else:
            first_term = first.bias
        layers = tuple((m.masked_weight(), m.bias) if isinstance(m, MaskedLinear) else m for m in rest)
        return FrozenMADE(weight_t[: self.dim].contiguous(), first_term, layers)

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, frozen: FrozenMADE | None = None
    ) -> Tensor:
        """Outputs ``(batch, n_params * dim)``; with ``frozen`` (from :meth:`freeze`) ``context`` is
        not read again."""
        own = frozen is None
        if own:
            frozen = self.freeze(context)
        # ``first_term + x @ W_x^T`` equals the first layer applied to ``[x, context]``.
        term = frozen.first_term
        if own and self.context_dim and term.shape[0] == x.shape[0] and term.shape[0] > 1:
            h = term.addmm_(x, frozen.input_weight_t)  # a fresh (batch, hidden) matrix of our own
        else:
            h = torch.addmm(term, x, frozen.input_weight_t)
        for layer in frozen.layers:
            if isinstance(layer, tuple):
                h = F.linear(h, *layer)
            elif type(layer) is nn.ReLU:
                # ``h`` is always a fresh linear output here, which nothing else keeps.
                h = torch.relu_(h)
            else:
                h = layer(h)
        return h


class _DegreeByDegree:
    """Evaluates a MADE one input degree at a time, computing every hidden unit exactly once.

    A unit's value is final as soon as the inputs it depends on are, so while an autoregressive
    inverse solves for the input of degree ``k + 1`` only the units depending on degree ``k``
    are new. The units of each layer are sorted by the highest input degree they depend on (read
    off the masks), so the known ones form a prefix; :meth:`params` computes the new ones and the
    outputs for the input of degree ``k + 1``. Activations are stored transposed,
    ``(units, batch)``, so that each product has the batch as its wide side and each block of new
    units is a contiguous slab; inputs likewise, in degree order after the context rows. Used
    without autograd (buffers are filled in place).
    """

    def __init__(self, made: MADE, context: Tensor | None, batch: int, like: Tensor):
        dim = made.dim
        linears = [m for m in made.net if isinstance(m, MaskedLinear)]
        self.activations = [m for m in made.net if not isinstance(m, MaskedLinear)]
        weights = [m.masked_weight() for m in linears]
        self.in_order = torch.argsort(made.degrees)  # in_order[k] is the input of degree k + 1

        # Highest input degree each hidden unit depends on, through the masks (0: context/bias only).
        depends, unit_orders, ends = made.degrees.to(like.dtype), [], []
        for linear in linears[:-1]:
            depends = (linear.mask[:, : depends.numel()] * depends).amax(1)
            ordered, order = torch.sort(depends, stable=True)
            unit_orders.append(order)
            ranks = torch.arange(dim, dtype=ordered.dtype, device=ordered.device)
            ends.append(torch.searchsorted(ordered, ranks, right=True))
        # ends[l][k]: how many units of hidden layer l are known once the inputs of degree <= k are.
        self.ends = torch.stack(ends).tolist()

        # The context is fed like inputs known from the start: ``inputs`` holds its rows first, then
        # the solved inputs in degree order, and the first layer's columns are arranged to match.
        n_context = made.context_dim
        columns = torch.arange(dim, dim + n_context, device=self.in_order.device)
        self.inputs = like.new_empty(n_context + dim, batch)
        if n_context:
            if context is None:
                raise ValueError(f"MADE needs a context of shape (batch, {n_context})")
            self.inputs[:n_context] = context.reshape(-1, n_context).t()
        self.solved = self.inputs[n_context:]  # row k: the input of degree k + 1, once solved
        self.n_context = n_context

        # Weights with rows (units) and columns (inputs or units) in the orders above; biases as
        # columns, broadcast over the batch.
        self.weights, self.biases = [], []
        previous = torch.cat([columns, self.in_order])
        for linear, weight, order in zip(linears[:-1], weights[:-1], unit_orders, strict=True):
            self.weights.append(weight[order[:, None], previous])
            self.biases.append(linear.bias[order, None])
            previous = order
        # Output rows for the input of degree k + 1: parameter p of input i sits at row p * dim + i.
        rows = (self.in_order[:, None] + dim * torch.arange(made.n_params, device=like.device)).flatten()
        self.out_weight = weights[-1][rows[:, None], previous].unflatten(0, (dim, made.n_params))
        self.out_bias = linears[-1].bias[rows].unflatten(0, (dim, made.n_params)).unsqueeze(-1)

        self.batch = batch
        self.hidden = [like.new_empty(w.shape[0], batch) for w in self.weights]

    def params(self, k: int) -> Tensor:
        """Outputs ``(n_params, batch)`` for the input of degree ``k + 1``, once the inputs of
        degree <= k are in ``solved[:k]``."""
        known = self.inputs[: self.n_context + k]
        layers = zip(self.weights, self.biases, self.activations, self.hidden, self.ends, strict=True)
        for weight, bias, activation, hidden, ends in layers:
            start, end = ends[k - 1] if k else 0, ends[k]
            if end > start:
                new = hidden[start:end]
                if len(known):
                    torch.addmm(bias[start:end], weight[start:end, : len(known)], known, out=new)
                else:
                    new.copy_(bias[start:end].expand_as(new))
                if type(activation) is nn.ReLU:
                    new.relu_()
                else:
                    new.copy_(activation(new))
            known = hidden[:end]
        if not len(known):
            return self.out_bias[k].expand(-1, self.batch)
        return torch.addmm(self.out_bias[k], self.out_weight[k, :, : len(known)], known)


class MaskedAffineAutoregressive(Transform):
    """One MAF step: ``z_i = x_i * exp(s_i(x_<i)) + t_i(x_<i)`` with a MADE conditioner.

    Papamakarios, Pavlakou & Murray (2017), "Masked Autoregressive Flow for Density Estimation".
    The log-scale is soft-clamped to ``(-scale_bound, scale_bound)``.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int = 0,
        hidden: Sequence[int] = (64, 64),
        order: str | Sequence[int] | Tensor = "sequential",
        activation: str = "relu",
        scale_bound: float = 3.0,
        seed: int | None = None,
    ):
        super().__init__()
        self.dim = dim
        self.scale_bound = float(scale_bound)
        self.made = MADE(dim, 2, hidden, context_dim, order, activation, seed=seed)

    def _shift_logscale(
        self, x: Tensor, context: Tensor | None, frozen: FrozenMADE | None = None
    ) -> tuple[Tensor, Tensor]:
        shift, raw = self.made(x, context, frozen=frozen).chunk(2, dim=1)
        return shift, soft_clamp(raw, self.scale_bound)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shift, log_s = self._shift_logscale(x, context)
        return torch.addcmul(shift, x, log_s.exp()), log_s.sum(1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # The shortcut re-implements ``MADE.forward`` and ``_shift_logscale``: subclasses that
        # override either get the plain passes.
        if (
            not torch.is_grad_enabled()
            and type(self)._shift_logscale is MaskedAffineAutoregressive._shift_logscale
            and type(self.made).forward is MADE.forward
        ):
            return self._inverse_by_degree(z, context)
        # After pass k every dimension of degree <= k is exact; ``dim`` passes finish the job. The
        # masks and the context projection are the same in every pass, so they are done once.
        frozen = self.made.freeze(context)
        x = torch.zeros_like(z)
        for _ in range(self.dim):
            shift, log_s = self._shift_logscale(x, context, frozen)
            x = (z - shift) / log_s.exp()
        return x, -log_s.sum(1)

    def _inverse_by_degree(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        # The same ``dim`` sequential steps, but step k only evaluates the hidden units that depend
        # on the input of degree k and the outputs for degree k + 1: the rest of a full pass would
        # recompute values already known, or values not needed yet.
        solver = _DegreeByDegree(self.made, context, z.shape[0], z)
        z_t = z.t().index_select(0, solver.in_order)  # (dim, batch), in degree order
        sum_log_s = z.new_zeros(z.shape[0])
        for k in range(self.dim):
            shift, raw = solver.params(k)
            log_s = soft_clamp(raw, self.scale_bound)
            torch.div(z_t[k] - shift, log_s.exp(), out=solver.solved[k])
            sum_log_s += log_s
        x = solver.solved.index_select(0, self.made.degrees - 1).t().contiguous()
        return x, -sum_log_s


class InverseAffineAutoregressive(Inverse):
    """One IAF step: the inverse of a MAF step, so sampling takes a single MADE pass.

    Kingma et al. (2016), "Improved Variational Inference with Inverse Autoregressive Flow".
    ``inverse(z)`` (latent to data) is ``x_i = z_i * exp(s_i(z_<i)) + t_i(z_<i)``; ``forward``
    (the density of an external point) takes ``dim`` passes.
    """

    def __init__(self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (64, 64), **options):
        super().__init__(MaskedAffineAutoregressive(dim, context_dim, hidden, **options))
