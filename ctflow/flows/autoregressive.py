"""MADE and the affine autoregressive flows MAF and IAF.

Germain, Gregor, Murray & Larochelle (2015), "MADE: Masked Autoencoder for Distribution Estimation".
Papamakarios, Pavlakou & Murray (2017), "Masked Autoregressive Flow for Density Estimation".
Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling (2016), "Improved Variational Inference
with Inverse Autoregressive Flow".

A MAF step computes ``z = x * exp(s(x_<i)) + t(x_<i)`` for all dimensions in one pass (density
direction parallel); its inverse needs one pass per dimension. An IAF step is the inverse of a MAF
step: sampling is one pass, the density of an external point takes one pass per dimension.
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
            g.manual_seed(seed if seed is not None else torch.seed())
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

    ``input_weight`` acts on the autoregressive inputs, ``first_term`` is the first layer's bias
    plus the context's contribution (``(hidden,)``, ``(1, hidden)`` or ``(batch, hidden)``), and
    ``layers`` lists the rest of the network: ``(weight, bias)`` pairs and activation modules.
    """

    input_weight: Tensor
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
        weight = first.masked_weight()
        if self.context_dim:
            if context is None:
                raise ValueError(f"MADE needs a context of shape (batch, {self.context_dim})")
            if context.dim() == 1:
                context = context.unsqueeze(0)
            # The context columns sit after the ``dim`` input columns of the first layer.
            first_term = torch.addmm(first.bias, context, weight[:, self.dim :].t())
            weight = weight[:, : self.dim]
        else:
            first_term = first.bias
        layers = tuple((m.masked_weight(), m.bias) if isinstance(m, MaskedLinear) else m for m in rest)
        return FrozenMADE(weight, first_term, layers)

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, frozen: FrozenMADE | None = None
    ) -> Tensor:
        """Outputs ``(batch, n_params * dim)``; with ``frozen`` (from :meth:`freeze`) ``context`` is
        not read again."""
        if frozen is None:
            frozen = self.freeze(context)
        # ``first_term + x @ W_x^T`` equals the first layer applied to ``[x, context]``.
        h = torch.addmm(frozen.first_term, x, frozen.input_weight.t())
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
    are new. Here the units of each layer are sorted by the highest input degree they depend on
    (read off the masks), so those already known form a prefix of a buffer; :meth:`params` adds
    the new ones and returns the outputs for the next input. Inputs are kept in degree order.
    Used without autograd (the buffers are filled in place).
    """

    def __init__(self, made: MADE, frozen: FrozenMADE, batch: int, like: Tensor):
        dim, n_params = made.dim, made.n_params
        self.in_order = torch.argsort(made.degrees)  # in_order[k] is the input of degree k + 1
        linears = [m for m in made.net if isinstance(m, MaskedLinear)]
        weights = [frozen.input_weight] + [layer[0] for layer in frozen.layers if isinstance(layer, tuple)]
        self.activations = [layer for layer in frozen.layers if not isinstance(layer, tuple)]
        biases = [frozen.first_term] + [layer[1] for layer in frozen.layers if isinstance(layer, tuple)]

        # Highest input degree each hidden unit depends on, through the masks (0: context/bias only).
        depends, unit_order, ends = made.degrees.to(like.dtype), [], []
        for linear in linears[:-1]:
            depends = (linear.mask[:, : depends.numel()] * depends).amax(1)
            ordered, order = torch.sort(depends, stable=True)
            unit_order.append(order)
            ends.append(torch.searchsorted(ordered, torch.arange(dim, dtype=ordered.dtype), right=True))
        # ends[l][k]: how many units of hidden layer l are known once the inputs of degree <= k are.
        self.ends = torch.stack(ends).tolist()

        # Weights with rows (units) and columns (inputs or units) in the orders above.
        self.weights, self.biases = [], []
        previous = self.in_order
        for w, b, order in zip(weights[:-1], biases[:-1], unit_order, strict=True):
            self.weights.append(w[order][:, previous])
            self.biases.append(b[..., order])
            previous = order
        # Output rows for the input of degree k + 1: parameter p of input i sits at row p * dim + i.
        rows = (self.in_order[:, None] + dim * torch.arange(n_params, device=like.device)).flatten()
        self.out_weight = weights[-1][rows][:, previous].unflatten(0, (dim, n_params))
        self.out_bias = biases[-1][rows].unflatten(0, (dim, n_params))

        self.batch = batch
        self.inputs = like.new_empty(batch, dim)
        self.hidden = [like.new_empty(batch, w.shape[0]) for w in self.weights]

    def params(self, k: int) -> Tensor:
        """Outputs ``(batch, n_params)`` for the input of degree ``k + 1``; inputs of degree <= k set."""
        known = self.inputs[:, :k]
        layers = zip(self.weights, self.biases, self.activations, self.hidden, self.ends, strict=True)
        for w, b, act, h, ends in layers:
            start, end = ends[k - 1] if k else 0, ends[k]
            if end > start:
                pre = b[..., start:end]
                if known.shape[1]:
                    pre = torch.addmm(pre, known, w[start:end, : known.shape[1]].t())
                h[:, start:end] = act(pre)
            known = h[:, :end]
        if not known.shape[1]:
            return self.out_bias[k].expand(self.batch, -1)
        return torch.addmm(self.out_bias[k], known, self.out_weight[k, :, : known.shape[1]].t())

    def set_input(self, k: int, value: Tensor) -> None:
        """Record the solved input of degree ``k + 1``."""
        self.inputs[:, k] = value

    def solution(self) -> Tensor:
        """The inputs in their original order."""
        return self.inputs[:, torch.argsort(self.in_order)]


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
        # The masks and the context projection are the same in every pass, so they are done once.
        frozen = self.made.freeze(context)
        if not torch.is_grad_enabled():
            return self._inverse_by_degree(z, frozen)
        # After pass k every dimension of degree <= k is exact; ``dim`` passes finish the job.
        x = torch.zeros_like(z)
        for _ in range(self.dim):
            shift, log_s = self._shift_logscale(x, context, frozen)
            x = (z - shift) / log_s.exp()
        return x, -log_s.sum(1)

    def _inverse_by_degree(self, z: Tensor, frozen: FrozenMADE) -> tuple[Tensor, Tensor]:
        # The same ``dim`` sequential steps, but step k only evaluates the hidden units that depend
        # on the input of degree k and the outputs of degree k + 1 (the rest of each full pass
        # would recompute values already known, or values not needed yet).
        solver = _DegreeByDegree(self.made, frozen, z.shape[0], z)
        z = z[:, solver.in_order]
        sum_log_s = z.new_zeros(z.shape[0])
        for k in range(self.dim):
            shift, raw = solver.params(k).unbind(1)
            log_s = soft_clamp(raw, self.scale_bound)
            solver.set_input(k, (z[:, k] - shift) / log_s.exp())
            sum_log_s += log_s
        return solver.solution(), -sum_log_s


class InverseAffineAutoregressive(Inverse):
    """One IAF step: the inverse of a MAF step, so sampling takes a single MADE pass.

    Kingma et al. (2016), "Improved Variational Inference with Inverse Autoregressive Flow".
    ``inverse(z)`` (latent to data) is ``x_i = z_i * exp(s_i(z_<i)) + t_i(z_<i)``; ``forward``
    (the density of an external point) takes ``dim`` passes.
    """

    def __init__(self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (64, 64), **options):
        super().__init__(MaskedAffineAutoregressive(dim, context_dim, hidden, **options))
