"""Coupling layers (NICE, RealNVP), the NICE scaling layer, masks and permutations.

A coupling layer splits the input with a binary ``mask`` (1 = transformed, 0 = passed through and
used to condition). The conditioner sees ``x * (1 - mask)`` (and the context), so the same code
serves vectors ``(B, D)`` with an MLP and images ``(B, C, H, W)`` with a convolutional network
that returns ``2 * C`` channels.

References:
    Dinh, Krueger & Bengio (2015), "NICE: Non-linear Independent Components Estimation".
    Dinh, Sohl-Dickstein & Bengio (2017), "Density estimation using Real NVP".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..checks import positive_int, real_number
from .base import Transform
from .nets import MLP, soft_clamp

__all__ = [
    "half_mask",
    "alternating_mask",
    "random_mask",
    "checkerboard_mask",
    "channel_mask",
    "AdditiveCoupling",
    "AffineCoupling",
    "Scaling",
    "Permutation",
    "ReversePermutation",
    "RandomPermutation",
]


def half_mask(dim: int, flip: bool = False) -> Tensor:
    """Transform the second half of the dimensions (the first half if ``flip``).

    With ``dim == 1`` the single dimension is always transformed (conditioned on the context only).
    """
    dim = positive_int(dim, "dim")
    mask = (torch.arange(dim) >= dim // 2).float()
    if flip and dim > 1:
        mask = 1.0 - mask
    return mask


def alternating_mask(dim: int, parity: int = 0) -> Tensor:
    """Transform every other dimension, starting at index ``parity`` (0 or 1)."""
    dim = positive_int(dim, "dim")
    if dim == 1:
        return torch.ones(1)
    return ((torch.arange(dim) + parity) % 2 == 0).float()


def random_mask(dim: int, generator: torch.Generator | None = None) -> Tensor:
    """Transform a random half (rounded up) of the dimensions."""
    dim = positive_int(dim, "dim")
    mask = torch.zeros(dim)
    mask[torch.randperm(dim, generator=generator)[: (dim + 1) // 2]] = 1.0
    return mask


def checkerboard_mask(height: int, width: int, parity: int = 0) -> Tensor:
    """Spatial checkerboard mask of shape ``(1, height, width)`` for ``(B, C, H, W)`` images."""
    height = positive_int(height, "height")
    width = positive_int(width, "width")
    i = torch.arange(height).view(-1, 1)
    j = torch.arange(width).view(1, -1)
    return ((i + j + parity) % 2 == 0).float().unsqueeze(0)


def channel_mask(channels: int, parity: int = 0) -> Tensor:
    """Channel-wise mask of shape ``(channels, 1, 1)``: transform half of the channels."""
    channels = positive_int(channels, "channels")
    return half_mask(channels, flip=bool(parity)).view(-1, 1, 1)


def _validate_mask(mask: Tensor) -> Tensor:
    mask = torch.as_tensor(mask, dtype=torch.get_default_dtype())
    if not torch.all((mask == 0) | (mask == 1)):
        raise ValueError("mask must contain only 0 and 1")
    if mask.sum() == 0:
        raise ValueError("mask transforms no dimension: it needs at least one 1")
    return mask


class _Coupling(Transform):
    """Shared plumbing: mask, conditioner and the event-dimension sum."""

    n_params: int = 1

    def __init__(
        self,
        mask: Tensor,
        context_dim: int = 0,
        hidden: Sequence[int] = (64, 64),
        conditioner: nn.Module | None = None,
        activation: str = "relu",
    ):
        super().__init__()
        mask = _validate_mask(mask)
        self.register_buffer("mask", mask)
        if conditioner is None:
            if mask.dim() != 1:
                raise ValueError(
                    "a conditioner network is required for non-vector masks (e.g. a CNN for images)"
                )
            dim = mask.numel()
            conditioner = MLP(dim, self.n_params * dim, hidden, context_dim, activation)
        self.conditioner = conditioner
        self.context_dim = context_dim

    def _params(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, ...]:
        out = self.conditioner(x * (1.0 - self.mask), context)
        return out.chunk(self.n_params, dim=1)

    @staticmethod
    def _sum_event(t: Tensor) -> Tensor:
        return t.flatten(1).sum(1)


class AdditiveCoupling(_Coupling):
    """NICE additive coupling: ``z = x + mask * t(x_masked, context)`` (log-det 0).

    Dinh, Krueger & Bengio (2015), "NICE: Non-linear Independent Components Estimation".
    """

    n_params = 1

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        (shift,) = self._params(x, context)
        return x + self.mask * shift, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        (shift,) = self._params(z, context)
        return z - self.mask * shift, z.new_zeros(z.shape[0])


class AffineCoupling(_Coupling):
    """RealNVP affine coupling: ``z = x * exp(s) + t`` on the masked part.

    The log-scale is soft-clamped to ``(-scale_bound, scale_bound)`` so one layer can never scale
    by more than ``exp(scale_bound)``: large inputs stay finite and training cannot blow up.

    Dinh, Sohl-Dickstein & Bengio (2017), "Density estimation using Real NVP".
    """

    n_params = 2

    def __init__(self, mask: Tensor, *args, scale_bound: float = 3.0, **kwargs):
        super().__init__(mask, *args, **kwargs)
        self.scale_bound = real_number(scale_bound, "scale_bound", positive=True)

    def _shift_logscale(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        shift, raw = self._params(x, context)
        return shift * self.mask, soft_clamp(raw, self.scale_bound) * self.mask

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shift, log_s = self._shift_logscale(x, context)
        return x * log_s.exp() + shift, self._sum_event(log_s)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shift, log_s = self._shift_logscale(z, context)
        return (z - shift) * (-log_s).exp(), -self._sum_event(log_s)


class Scaling(Transform):
    """NICE's diagonal scaling layer ``z = x * exp(s)`` with a learned ``s`` (context ignored).

    ``shape`` is the event shape, or ``(C, 1, 1)`` for a per-channel scale on images.
    """

    def __init__(self, shape: int | tuple[int, ...]):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.log_scale = nn.Parameter(torch.zeros(shape))

    def _ladj(self, x: Tensor) -> Tensor:
        n_broadcast = x[0].numel() // self.log_scale.numel()
        return (self.log_scale.sum() * n_broadcast).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x * self.log_scale.exp(), self._ladj(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z * (-self.log_scale).exp(), -self._ladj(z)


class Permutation(Transform):
    """Fixed permutation of dimension 1 (features of vectors, channels of images)."""

    def __init__(self, permutation: Tensor | Sequence[int]):
        super().__init__()
        perm = torch.as_tensor(permutation, dtype=torch.long)
        if perm.dim() != 1 or not torch.equal(perm.sort().values, torch.arange(perm.numel())):
            raise ValueError("permutation must be a 1-D rearrangement of 0..n-1")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z[:, self.inv_perm], z.new_zeros(z.shape[0])


class ReversePermutation(Permutation):
    """Reverse the order of dimension 1."""

    def __init__(self, dim: int):
        super().__init__(torch.arange(positive_int(dim, "dim") - 1, -1, -1))


class RandomPermutation(Permutation):
    """A random permutation, fixed at construction (``seed`` makes it reproducible)."""

    def __init__(self, dim: int, seed: int | None = None):
        g = torch.Generator()
        g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        super().__init__(torch.randperm(positive_int(dim, "dim"), generator=g))
