"""Glow building blocks: ActNorm, the LU-parametrised invertible linear map (1x1 convolution), a step.

Kingma & Dhariwal (2018), "Glow: Generative Flow with Invertible 1x1 Convolutions".

Both layers act on dimension 1 of the input: features of ``(B, D)`` vectors or channels of
``(B, C, H, W)`` images (every spatial position is transformed alike, so the log-determinant is
multiplied by ``H * W``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import Compose, Transform
from .coupling import AffineCoupling, half_mask

__all__ = ["ActNorm", "InvertibleLinear", "InvConv1x1", "GlowStep"]


def _per_channel(p: Tensor, x: Tensor) -> Tensor:
    """View a ``(C,)`` parameter so it broadcasts over ``x`` of shape ``(B, C, ...)``."""
    return p.view(1, -1, *([1] * (x.dim() - 2)))


def _n_positions(x: Tensor) -> int:
    return x[0, 0].numel()


def _check_features(x: Tensor, n: int, name: str) -> None:
    if x.dim() < 2 or x.shape[1] != n:
        raise ValueError(f"{name} expects input of shape (batch, {n}, ...), got {tuple(x.shape)}")


class ActNorm(Transform):
    """Per-feature affine ``z = (x + b) * exp(s)`` with data-dependent initialisation.

    On the first forward call in training mode, ``b`` and ``s`` are set so that the batch comes out
    with zero mean and unit variance per feature (Kingma & Dhariwal 2018, "Glow"). If the layer is
    used in the sampling direction first, it keeps its current parameters (so densities of the
    samples drawn stay consistent) and is no longer initialised from data.
    """

    def __init__(self, num_features: int, eps: float = 1e-6):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))
        self._is_initialized = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._is_initialized = bool(self.initialized)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set bias and scale from a batch ``x`` (called automatically on the first forward)."""
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dim=dims)
        std = x.std(dim=dims, unbiased=False) if x[:, 0].numel() > 1 else torch.ones_like(mean)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)
        self._is_initialized = True

    def _ladj(self, x: Tensor) -> Tensor:
        return (self.log_scale.sum() * _n_positions(x)).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_features(x, self.num_features, "ActNorm")
        if not self._is_initialized and self.training:
            self.initialize(x)
        z = (x + _per_channel(self.bias, x)) * _per_channel(self.log_scale, x).exp()
        return z, self._ladj(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_features(z, self.num_features, "ActNorm")
        if not self._is_initialized:
            self.initialized.fill_(True)
            self._is_initialized = True
        x = z * _per_channel(-self.log_scale, z).exp() - _per_channel(self.bias, z)
        return x, -self._ladj(z)


class InvertibleLinear(Transform):
    """Invertible linear map ``z = W x`` with ``W = P L (U + diag(sign * exp(log_s)))``.

    The LU parametrisation makes ``log|det W| = sum(log_s)`` cost O(D) (Kingma & Dhariwal 2018,
    "Glow"). On images it is the invertible 1x1 convolution over channels. ``W`` starts as a
    random rotation.
    """

    def __init__(self, num_features: int, seed: int | None = None):
        super().__init__()
        self.num_features = n = num_features
        g = torch.Generator()
        g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        dtype = torch.get_default_dtype()
        self.register_buffer("perm", p.to(dtype))
        self.register_buffer("sign_s", torch.sign(s).to(dtype))
        self.register_buffer("lower_mask", torch.tril(torch.ones(n, n, dtype=dtype), -1))
        self.register_buffer("eye", torch.eye(n, dtype=dtype))
        self.lower = nn.Parameter(lower.to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).to(dtype))

    def _factors(self) -> tuple[Tensor, Tensor]:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return lower, upper

    def weight(self) -> Tensor:
        """The matrix ``W`` (``z = W x``)."""
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def inverse_weight(self) -> Tensor:
        """``W^{-1}`` by two triangular solves (no general matrix inverse)."""
        lower, upper = self._factors()
        l_inv_pt = torch.linalg.solve_triangular(lower, self.perm.T, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, l_inv_pt, upper=True)

    @staticmethod
    def _multiply(w: Tensor, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return x @ w.T
        return torch.einsum("oc,bc...->bo...", w, x)

    def _ladj(self, x: Tensor) -> Tensor:
        return (self.log_s.sum() * _n_positions(x)).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_features(x, self.num_features, "InvertibleLinear")
        return self._multiply(self.weight(), x), self._ladj(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_features(z, self.num_features, "InvertibleLinear")
        return self._multiply(self.inverse_weight(), z), -self._ladj(z)


InvConv1x1 = InvertibleLinear
"""Alias: on ``(B, C, H, W)`` inputs the invertible linear map is Glow's 1x1 convolution."""


class GlowStep(Compose):
    """One Glow step: ActNorm, invertible linear map, affine coupling.

    For vectors the coupling uses an MLP on half of the features; for images pass ``coupling``
    (e.g. an :class:`AffineCoupling` with a convolutional conditioner).
    """

    def __init__(
        self,
        dim: int,
        context_dim: int = 0,
        hidden: Sequence[int] = (64, 64),
        coupling: Transform | None = None,
        seed: int | None = None,
        **coupling_options,
    ):
        if coupling is None:
            coupling = AffineCoupling(half_mask(dim), context_dim, hidden, **coupling_options)
        super().__init__([ActNorm(dim), InvertibleLinear(dim, seed=seed), coupling])
