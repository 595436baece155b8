"""Amortised variational posteriors ``q(z | c)``: a diagonal Gaussian, optionally refined by a flow.

With ``flow=None`` this is the usual reparametrised Gaussian of a VAE (Kingma & Welling 2014,
"Auto-Encoding Variational Bayes"). With a flow name, the Gaussian sample is pushed through a
conditional normalizing flow built by :func:`ctflow.flows.build` in its sampling direction, so
that samples and their exact log-density come in one pass: ``iaf`` (Kingma et al. 2016),
``planar``/``radial`` (Rezende & Mohamed 2015), ``sylvester`` (van den Berg et al. 2018),
``realnvp`` (Dinh et al. 2017), or any other name ``build`` knows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..flows.builders import build

__all__ = ["POSTERIORS", "Posterior"]

POSTERIORS = ("gaussian", "iaf", "planar", "radial", "sylvester", "realnvp", "maf", "nice")
_LOG_2PI = math.log(2 * math.pi)


class Posterior(nn.Module):
    """``q(z | c)`` over ``latent_dim`` given a context vector of ``context_dim``.

    Args:
        flow: ``"gaussian"`` (no flow) or a flow name for :func:`ctflow.flows.build`.
        n_layers, hidden: size of the flow (its layers also see the context).
        min_log_scale: floor of the Gaussian's log standard deviation.
    """

    def __init__(
        self,
        latent_dim: int,
        context_dim: int,
        flow: str = "gaussian",
        n_layers: int = 4,
        hidden: Sequence[int] = (64,),
        min_log_scale: float = -7.0,
    ):
        super().__init__()
        if not isinstance(flow, str):
            raise TypeError(f"posterior must be a name, got {type(flow).__name__}")
        self.latent_dim, self.context_dim, self.kind = latent_dim, context_dim, flow
        self.net = nn.Linear(context_dim, 2 * latent_dim)
        self.min_log_scale = min_log_scale
        self.flow = None
        if flow != "gaussian":
            self.flow = build(
                flow, latent_dim, context_dim=context_dim, n_layers=n_layers, hidden=hidden
            ).transform

    def gaussian(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log standard deviation of the Gaussian stage, each ``(B, latent_dim)``."""
        mean, log_scale = self.net(context).chunk(2, dim=-1)
        return mean, log_scale.clamp_min(self.min_log_scale)

    def rsample_and_log_prob(self, context: Tensor, n: int = 1) -> tuple[Tensor, Tensor]:
        """``n`` reparametrised draws per row: ``z (n, B, latent_dim)`` and ``log q(z | c) (n, B)``."""
        mean, log_scale = self.gaussian(context)
        eps = torch.randn(n, *mean.shape, dtype=mean.dtype, device=mean.device)
        z = mean + log_scale.exp() * eps
        log_q = -0.5 * (eps.square() + _LOG_2PI).sum(-1) - log_scale.sum(-1)
        if self.flow is not None:
            b = context.shape[0]
            flat, ladj = self.flow.inverse(z.reshape(n * b, -1), context.repeat(n, 1))
            z, log_q = flat.view(n, b, -1), log_q - ladj.view(n, b)
        return z, log_q

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, kind={self.kind!r}"
