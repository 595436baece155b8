"""Posterior drift correction and diffusion of a latent SDE (prior and posterior share ``g``).

Li, Wong, Chen & Duvenaud (2020), "Scalable Gradients for Stochastic Differential Equations".
Prior ``dz = h(z) dt + g dW``; posterior ``dz = (h(z) + c(z, ctx)) dt + g dW`` with a
context-dependent correction ``c`` (zero at initialisation, so the posterior starts at the prior)
and a diagonal, state-independent diffusion ``g`` shared by both, which keeps the two path
measures mutually absolutely continuous: by Girsanov, ``log dP/dQ = -int u.dW - 1/2 int |u|^2 dt``
with ``u = c / g``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..checks import real_number

__all__ = ["LatentSDEDynamics"]


class LatentSDEDynamics(nn.Module):
    """Posterior correction ``c(z, ctx)`` and diffusion ``g`` (per dimension); the prior drift
    ``h(z)`` is the model's own vector field (an :class:`~ctflow.dynamics.odernn.ODEFunc`).

    Args:
        latent_dim: size of ``z``.
        context_dim: size of the posterior's context.
        hidden: width of the drift networks.
        diffusion: initial value of every ``g_i`` (``>= 0``).
        learn_diffusion: train ``g`` (kept positive through a softplus) or keep it fixed.
    """

    def __init__(
        self,
        latent_dim: int,
        context_dim: int,
        hidden: int = 64,
        diffusion: float = 0.1,
        learn_diffusion: bool = True,
    ):
        super().__init__()
        diffusion = real_number(diffusion, "diffusion", positive=False)
        if learn_diffusion and diffusion == 0:
            raise ValueError("a learned diffusion must start positive (diffusion > 0)")
        self.correction = nn.Sequential(
            nn.Linear(latent_dim + context_dim, hidden), nn.Tanh(), nn.Linear(hidden, latent_dim)
        )
        nn.init.zeros_(self.correction[-1].weight)
        nn.init.zeros_(self.correction[-1].bias)
        self.learn_diffusion = learn_diffusion
        if learn_diffusion:
            raw = torch.log(torch.expm1(torch.tensor(float(diffusion))))
            self.raw_diffusion = nn.Parameter(raw.expand(latent_dim).clone())
        else:
            self.register_buffer("fixed_diffusion", torch.full((latent_dim,), float(diffusion)))

    @property
    def deterministic(self) -> bool:
        """True when the diffusion is fixed at zero (the model is then a latent ODE)."""
        return not self.learn_diffusion and bool((self.fixed_diffusion == 0).all())

    def diffusion(self) -> Tensor:
        """``g (latent_dim,)``."""
        return F.softplus(self.raw_diffusion) if self.learn_diffusion else self.fixed_diffusion

    def posterior_correction(self, z: Tensor, context: Tensor) -> Tensor:
        return self.correction(torch.cat([z, context], dim=-1))
