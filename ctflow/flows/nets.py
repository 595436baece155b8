"""Small networks used as conditioners inside flows."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP", "ACTIVATIONS", "soft_clamp"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    """Instantiate an activation by name (``relu``, ``elu``, ``tanh``, ``gelu``, ``silu``)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}") from None


def soft_clamp(x: Tensor, bound: float) -> Tensor:
    """Smoothly squash ``x`` into ``(-bound, bound)``; the identity near zero."""
    y = torch.tanh(x / bound)
    if y.requires_grad:
        return y * bound  # tanh's backward reads its output, which must stay unscaled
    return y.mul_(bound)


class MLP(nn.Module):
    """Multi-layer perceptron ``in -> hidden... -> out`` with an optional context input.

    The context (if any) is concatenated to the input. The last layer starts at zero when
    ``zero_init`` so that a flow built from these conditioners starts as the identity map.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        activation: str = "relu",
        zero_init: bool = True,
    ):
        super().__init__()
        sizes = [in_features + context_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), make_activation(activation)]
        last = nn.Linear(sizes[-1], out_features)
        if zero_init:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)
        self.context_features = context_features

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_features:
            if context is None:
                raise ValueError(
                    f"this conditioner needs a context of shape (batch, {self.context_features})"
                )
            x = torch.cat([x, context.expand(x.shape[0], -1)], dim=-1)
        return self.net(x)
