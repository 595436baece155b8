"""Image-specific invertible layers: squeeze, multi-scale split, sigmoid-scale coupling, logit.

The masks come from :mod:`ctflow.flows.coupling` (:func:`checkerboard_mask`, :func:`channel_mask`)
and are re-exported here so that image models import them from one place.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from ctflow.checks import in_interval
from ctflow.flows.base import Transform
from ctflow.flows.coupling import _Coupling, channel_mask, checkerboard_mask
from ctflow.flows.nets import soft_clamp

from .nets import ZeroConv2d

__all__ = [
    "Squeeze",
    "Unsqueeze",
    "Split",
    "SigmoidAffineCoupling",
    "LogitTransform",
    "ShiftTransform",
    "checkerboard_mask",
    "channel_mask",
    "squeeze",
    "unsqueeze",
]


def squeeze(x: Tensor, factor: int = 2) -> Tensor:
    """Space-to-depth: ``(B, C, H, W) -> (B, C * f^2, H / f, W / f)``."""
    b, c, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(f"cannot squeeze a {h}x{w} image by {factor}: height and width must divide")
    x = x.view(b, c, h // factor, factor, w // factor, factor)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * factor * factor, h // factor, w // factor)


def unsqueeze(x: Tensor, factor: int = 2) -> Tensor:
    """Depth-to-space, the inverse of :func:`squeeze`."""
    b, c, h, w = x.shape
    if c % (factor * factor):
        raise ValueError(f"cannot unsqueeze {c} channels by {factor}: channels must divide by {factor**2}")
    x = x.view(b, c // factor**2, factor, factor, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c // factor**2, h * factor, w * factor)


class Squeeze(Transform):
    """Space-to-depth 2x2 (a permutation: log-det 0)."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = int(factor)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return squeeze(x, self.factor), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return unsqueeze(z, self.factor), z.new_zeros(z.shape[0])

    def out_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        c, h, w = shape
        f = self.factor
        if h % f or w % f:
            raise ValueError(f"cannot squeeze a {h}x{w} image by {f}: height and width must divide")
        return (c * f * f, h // f, w // f)


class Unsqueeze(Squeeze):
    """Depth-to-space 2x2, the inverse of :class:`Squeeze`."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return super().inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return super().forward(z, context)

    def out_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        c, h, w = shape
        f = self.factor
        return (c // (f * f), h * f, w * f)


class Split(Transform):
    """Multi-scale split: keep the first half of the channels, factor out the rest.

    The factored-out half ``x2`` gets a learned conditional Gaussian prior ``N(mu(x1), exp(s(x1))^2)``
    given the kept half ``x1``, from a zero-initialised convolution (so it starts as ``N(0, 1)``).
    Written as a bijection: ``x2`` is whitened to ``eps = (x2 - mu) exp(-s)`` (log-det ``-sum s``),
    and the kept half goes through ``inner`` (the rest of the multi-scale flow). The latent has the
    input's shape ``[inner(x1), eps]`` and a standard normal density, so temperature sampling is
    simply scaling the standard normal.
    """

    def __init__(self, channels: int, inner: Transform, scale_bound: float = 6.0):
        super().__init__()
        if channels < 2:
            raise ValueError(f"Split needs at least 2 channels, got {channels}")
        self.channels = channels
        self.keep = channels // 2
        self.inner = inner
        self.prior = ZeroConv2d(self.keep, 2 * (channels - self.keep))
        self.scale_bound = float(scale_bound)

    @property
    def analytic_inverse(self) -> bool:  # type: ignore[override]
        return self.inner.analytic_inverse

    def _prior(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = self.prior(x1).chunk(2, dim=1)
        return mean, soft_clamp(raw, self.scale_bound)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, : self.keep], x[:, self.keep :]
        mean, log_s = self._prior(x1)
        eps = (x2 - mean) * (-log_s).exp()
        z1, ladj = self.inner(x1, context)
        return torch.cat([z1, eps], dim=1), ladj - log_s.flatten(1).sum(1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z1, eps = z[:, : self.keep], z[:, self.keep :]
        x1, ladj = self.inner.inverse(z1, context)
        mean, log_s = self._prior(x1)
        x2 = eps * log_s.exp() + mean
        return torch.cat([x1, x2], dim=1), ladj + log_s.flatten(1).sum(1)


class SigmoidAffineCoupling(_Coupling):
    """Glow's affine coupling ``z = (x + t) * sigmoid(s + 2)`` on the masked part.

    The sigmoid bounds the scale in ``(0, 1)`` (contracting in the normalizing direction), which
    keeps deep stacks stable; with a zero-initialised last layer it starts near the identity.
    Kingma & Dhariwal (2018), "Glow: Generative Flow with Invertible 1x1 Convolutions".
    """

    n_params = 2

    def _shift_logscale(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        shift, raw = self._params(x, context)
        return shift * self.mask, F.logsigmoid(raw + 2.0) * self.mask

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shift, log_s = self._shift_logscale(x, context)
        return (x + shift) * log_s.exp(), self._sum_event(log_s)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shift, log_s = self._shift_logscale(z, context)
        return z * (-log_s).exp() - shift, -self._sum_event(log_s)


class LogitTransform(Transform):
    """``z = logit(alpha + (1 - 2 alpha) y)`` for ``y`` in ``[0, 1]`` (Dinh et al. 2017, Real NVP).

    Maps dequantized pixels to the real line; ``alpha`` keeps the boundaries finite.
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        self.alpha = in_interval(alpha, "alpha", 0, 0.5)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        z = torch.log(p) - torch.log1p(-p)
        ladj = math.log1p(-2 * self.alpha) - torch.log(p) - torch.log1p(-p)
        return z, ladj.flatten(1).sum(1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = torch.sigmoid(z)
        x = (p - self.alpha) / (1 - 2 * self.alpha)
        ladj = F.logsigmoid(z) + F.logsigmoid(-z) - math.log1p(-2 * self.alpha)
        return x, ladj.flatten(1).sum(1)


class ShiftTransform(Transform):
    """``z = y - 0.5``: centres ``[0, 1]`` pixels (Glow's preprocessing; log-det 0)."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x - 0.5, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z + 0.5, z.new_zeros(z.shape[0])
