"""Dequantization: uniform noise, or variational noise from a conditional flow ``q(u | x)``.

Both are called as ``dequantizer(x_scaled, noise=None) -> (u, log q(u | x))`` with ``x_scaled`` the
image in ``[0, 1]`` and ``u`` in ``[0, 1)^D`` of the same shape; see :mod:`ctflow.image.model` for how
the noise enters the bound. ``noise`` (from :meth:`sample_noise`, drawn when not given) is the
random input, so that a batch can be split without changing the draws of its images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ctflow.flows.base import Compose, Transform
from ctflow.flows.glow import ActNorm
from ctflow.flows.mixture_cdf import MixtureCDFCoupling

from .layers import channel_mask, checkerboard_mask
from .nets import GatedAttentionConditioner

__all__ = ["UniformDequantizer", "VariationalDequantizer"]


class UniformDequantizer(nn.Module):
    """``u ~ U[0, 1)^D`` with ``log q = 0`` (Theis, van den Oord & Bethge 2016)."""

    def sample_noise(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
        """The random input of a batch of ``shape``: ``U[0, 1)``."""
        return torch.rand(shape, device=device, dtype=dtype)

    def forward(self, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u = torch.rand_like(x) if noise is None else noise
        return u, x.new_zeros(x.shape[0])


class VariationalDequantizer(nn.Module):
    """Variational dequantization with a conditional flow ``q(u | x)`` (Flow++).

    ``u = sigmoid(f(eps; x))`` with ``eps ~ N(0, I)`` and ``f`` a stack of ActNorm and
    mixture-of-logistics CDF couplings whose conditioners see a feature map of ``x``, so
    ``log q(u | x) = log N(eps) - log|det df/deps| - sum log sigmoid'(f)``.

    Ho, Chen, Srinivas, Duan & Abbeel (2019), "Flow++: Improving Flow-Based Generative Models with
    Variational Dequantization and Architecture Design".
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        hidden: int = 32,
        n_steps: int = 2,
        n_components: int = 4,
        context_channels: int = 8,
        attention: bool = False,
    ):
        super().__init__()
        c, h, w = shape
        self.embed = GatedAttentionConditioner(c, context_channels, hidden, n_blocks=1, attention=attention)
        n_params = 3 * n_components + 2
        steps: list[Transform] = []
        for i in range(n_steps):
            mask = checkerboard_mask(h, w, parity=i % 2) if h * w > 1 else channel_mask(c, parity=i % 2)
            net = GatedAttentionConditioner(
                c, n_params * c, hidden, n_blocks=1, context_channels=context_channels, attention=attention
            )
            steps += [ActNorm(c), MixtureCDFCoupling(mask, conditioner=net, n_components=n_components)]
        self.flow = Compose(steps)

    def sample_noise(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
        """The random input of a batch of ``shape``: ``eps ~ N(0, I)``."""
        return torch.randn(shape, device=device, dtype=dtype)

    def forward(self, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform_noise(x, torch.randn_like(x) if noise is None else noise)

    def transform_noise(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """``u`` in ``(0, 1)`` and ``log q(u | x)`` for given standard normal noise ``eps``."""
        context = self.embed(2.0 * x - 1.0)
        v, ladj = self.flow(eps, context)
        log_normal = -0.5 * (eps.square() + math.log(2 * math.pi))
        log_sig = F.logsigmoid(v) + F.logsigmoid(-v)
        log_q = log_normal.flatten(1).sum(1) - ladj - log_sig.flatten(1).sum(1)
        return torch.sigmoid(v), log_q
