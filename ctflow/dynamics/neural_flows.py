"""Neural flows: solution curves of an ODE modelled directly, one network call instead of a solve.

Biloš, Sommer, Rangapuram, Januschowski & Günnemann (2021), "Neural Flows: Efficient Alternative
to Neural ODEs". A flow ``F(h, t)`` maps a state and an elapsed time to the state ``t`` later, with
``F(h, 0) = h`` (a time embedding ``phi(t)`` that is 0 at ``t = 0`` multiplies every change) and
``F(., t)`` invertible in ``h`` for every ``t`` (so that, as for an ODE, different states never
merge):

* :class:`ResNetFlow`: ``h + phi(t) * g(h, t)`` with ``g`` Lipschitz below 1 in ``h`` (exact spectral
  normalisation of every layer, 1-Lipschitz activations, a factor 0.9), invertible as an i-ResNet
  (Behrmann et al. 2019, "Invertible Residual Networks");
* :class:`GRUFlow`: the GRU-ODE's update written as a flow, ``h + phi(t) * z * (c - h)`` with the
  gates' Lipschitz constants bounded as in the paper (``z <= 2/5``, ``r <= 4/5``);
* :class:`CouplingFlow`: two affine couplings whose log-scales and shifts are multiplied by
  ``phi(t)``, invertible in closed form.

Every flow maps rows ``h (B, H)`` and elapsed times ``t (B,)`` to ``(B, H)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "FLOWS",
    "CouplingFlow",
    "GRUFlow",
    "NeuralFlow",
    "ResNetFlow",
    "SpectralLinear",
    "TimeEmbedding",
    "build_flow",
]


class TimeEmbedding(nn.Module):
    """``phi(t) = tanh(softplus(a) t)`` per feature: 0 at ``t = 0``, bounded by 1, learnable rates."""

    def __init__(self, dim: int):
        super().__init__()
        self.rate = nn.Parameter(torch.zeros(dim))

    def forward(self, t: Tensor) -> Tensor:
        return torch.tanh(nn.functional.softplus(self.rate) * t.unsqueeze(-1))


class SpectralLinear(nn.Linear):
    """A linear map divided by its largest singular value where that exceeds 1. The value is
    computed exactly (not by power iteration, so the bound holds whatever the optimiser did to
    the weights), once per version of the weights, and held constant in the gradient, as a
    projection."""

    def forward(self, x: Tensor) -> Tensor:
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device)
        if getattr(self, "_sigma_key", None) != key:
            with torch.no_grad():
                self._sigma = torch.linalg.matrix_norm(self.weight, ord=2).clamp_min(1.0)
            self._sigma_key = key
        return nn.functional.linear(x, self.weight / self._sigma, self.bias)


def _sn_linear(n_in: int, n_out: int) -> nn.Module:
    return SpectralLinear(n_in, n_out)


class NeuralFlow(nn.Module):
    """Base class: ``forward(h, t)`` is the state ``t`` after ``h``; ``inverse`` solves for ``h``."""

    def inverse(self, y: Tensor, t: Tensor, n_iter: int = 100) -> Tensor:
        """``h`` with ``F(h, t) = y``, by the fixed-point iteration of a residual map with a
        Lipschitz bound below 1 (overridden where the inverse is in closed form)."""
        h = y
        for _ in range(n_iter):
            h = y - (self(h, t) - h)
        return h


class ResNetFlow(NeuralFlow):
    """``F(h, t) = h + phi(t) * 0.9 g(h, t)`` with a spectrally normalised MLP ``g``."""

    def __init__(self, dim: int, hidden: int = 64, n_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = []
        size = dim + 1
        for _ in range(n_layers):
            layers += [_sn_linear(size, hidden), nn.Tanh()]
            size = hidden
        self.net = nn.Sequential(*layers, _sn_linear(size, dim))
        self.phi = TimeEmbedding(dim)

    def forward(self, h: Tensor, t: Tensor) -> Tensor:
        g = self.net(torch.cat([h, t.unsqueeze(-1)], dim=-1))
        return h + self.phi(t) * 0.9 * g


class GRUFlow(NeuralFlow):
    """``F(h, t) = h + phi(t) * z(h, t) * (c(h, t) - h)``: the GRU-ODE's relaxation as a flow, with
    ``z = 2/5 sigmoid(.)``, ``r = 4/5 sigmoid(.)``, ``c = tanh(W (r * h) + ...)`` and spectrally
    normalised maps, which keeps the residual's Lipschitz constant below 1."""

    def __init__(self, dim: int):
        super().__init__()
        self.z = _sn_linear(dim + 1, dim)
        self.r = _sn_linear(dim + 1, dim)
        self.c = _sn_linear(dim + 1, dim)
        self.phi = TimeEmbedding(dim)

    def forward(self, h: Tensor, t: Tensor) -> Tensor:
        tt = t.unsqueeze(-1)
        x = torch.cat([h, tt], dim=-1)
        z = 0.4 * torch.sigmoid(self.z(x))
        r = 0.8 * torch.sigmoid(self.r(x))
        c = torch.tanh(self.c(torch.cat([r * h, tt], dim=-1)))
        return h + self.phi(t) * z * (c - h)


class CouplingFlow(NeuralFlow):
    """Two affine couplings (first half given the second, then the reverse) whose log-scales and
    shifts are multiplied by ``phi(t)``: ``F(h, 0) = h`` and an exact inverse."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        if dim < 2:
            raise ValueError(f"a coupling flow needs at least 2 dimensions, got {dim}")
        self.split = dim // 2
        sizes = (self.split, dim - self.split)
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Linear(sizes[1 - k] + 1, hidden), nn.Tanh(), nn.Linear(hidden, 2 * sizes[k]))
            for k in range(2)
        )
        for net in self.nets:
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
        self.phi = nn.ModuleList(TimeEmbedding(size) for size in sizes)

    def _params(self, k: int, given: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        log_scale, shift = self.nets[k](torch.cat([given, t.unsqueeze(-1)], dim=-1)).chunk(2, dim=-1)
        phi = self.phi[k](t)
        return phi * torch.tanh(log_scale), phi * shift

    def forward(self, h: Tensor, t: Tensor) -> Tensor:
        a, b = h[..., : self.split], h[..., self.split :]
        s, m = self._params(0, b, t)
        a = a * torch.exp(s) + m
        s, m = self._params(1, a, t)
        b = b * torch.exp(s) + m
        return torch.cat([a, b], dim=-1)

    def inverse(self, y: Tensor, t: Tensor, n_iter: int = 0) -> Tensor:
        a, b = y[..., : self.split], y[..., self.split :]
        s, m = self._params(1, a, t)
        b = (b - m) * torch.exp(-s)
        s, m = self._params(0, b, t)
        a = (a - m) * torch.exp(-s)
        return torch.cat([a, b], dim=-1)


FLOWS = {"resnet_flow": ResNetFlow, "gru_flow": GRUFlow, "coupling_flow": CouplingFlow}


def build_flow(name: str, dim: int) -> NeuralFlow:
    """The neural flow called ``name`` (a key of :data:`FLOWS`) over ``dim`` features."""
    if name not in FLOWS:
        raise ValueError(f"unknown neural flow {name!r}; choose from {sorted(FLOWS)}")
    return FLOWS[name](dim)
