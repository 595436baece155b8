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
    """Linear layer whose weight is multiplied by a fixed 0/1 connectivity mask."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


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

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_dim:
            if context is None:
                raise ValueError(f"MADE needs a context of shape (batch, {self.context_dim})")
            x = torch.cat([x, context.expand(x.shape[0], -1)], dim=1)
        return self.net(x)


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

    def _shift_logscale(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        shift, raw = self.made(x, context).chunk(2, dim=1)
        return shift, soft_clamp(raw, self.scale_bound)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shift, log_s = self._shift_logscale(x, context)
        return x * log_s.exp() + shift, log_s.sum(1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # After pass k every dimension of degree <= k is exact; ``dim`` passes finish the job.
        x = torch.zeros_like(z)
        for _ in range(self.dim):
            shift, log_s = self._shift_logscale(x, context)
            x = (z - shift) * (-log_s).exp()
        return x, -log_s.sum(1)


class InverseAffineAutoregressive(Inverse):
    """One IAF step: the inverse of a MAF step, so sampling takes a single MADE pass.

    Kingma et al. (2016), "Improved Variational Inference with Inverse Autoregressive Flow".
    ``inverse(z)`` (latent to data) is ``x_i = z_i * exp(s_i(z_<i)) + t_i(z_<i)``; ``forward``
    (the density of an external point) takes ``dim`` passes.
    """

    def __init__(self, dim: int, context_dim: int = 0, hidden: Sequence[int] = (64, 64), **options):
        super().__init__(MaskedAffineAutoregressive(dim, context_dim, hidden, **options))
