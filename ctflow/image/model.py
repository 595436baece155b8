"""``ImageFlow``: a multi-scale flow over ``(C, H, W)`` images of discrete pixels, and bits/dim.

Likelihood bookkeeping. Pixels ``k`` take ``levels`` values ``0 .. levels-1`` (``levels = 2**n_bits``
for n-bit data). Dequantization gives ``y = (k + u) / levels`` in ``[0, 1]^D`` with ``u ~ q(u | k)``
(uniform, or a learned flow). For a density ``p`` on ``[0, 1]^D``,

    log P(k) >= E_q[ log p(y) - log q(u | k) ] - D log(levels),

the ``- D log(levels)`` being the Jacobian of ``u -> y``. So
``bits/dim = (NLL of y on [0, 1]^D + D log(levels)) / (D ln 2)``; a uniform density on
``[0, 1]^D`` scores exactly ``n_bits``. ``p(y)`` includes the Jacobian of the preprocessing
(logit or shift) that takes ``y`` to the flow's input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ctflow.checks import positive_int, real_number
from ctflow.flows.base import Compose, StandardNormal, Transform

from .dequant import UniformDequantizer
from .layers import Squeeze

__all__ = ["ImageFlow", "bits_per_dim", "latent_shape", "to_levels"]


def latent_shape(transform: Transform, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of ``transform``'s output for an input of ``shape`` (only squeezes change shapes)."""
    if isinstance(transform, Squeeze):
        return transform.out_shape(shape)
    if isinstance(transform, Compose):
        for t in transform.transforms:
            shape = latent_shape(t, shape)
    return tuple(shape)


def to_levels(x: Tensor, levels: int) -> Tensor:
    """Integer pixel levels ``0 .. levels-1`` from integer pixels or floats ``k / (levels - 1)`` in [0, 1]."""
    if not isinstance(x, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point():
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                "float images must lie in [0, 1] (k / (levels - 1)); pass integer tensors for raw levels"
            )
        return torch.round(x * (levels - 1))
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"images must be integer or floating point, got {x.dtype}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= levels):
        raise ValueError(f"integer images must lie in [0, {levels - 1}] for {levels} levels")
    return x


class ImageFlow(nn.Module):
    """A normalizing flow over images with dequantization and a standard normal latent.

    Args:
        flow: the data-to-latent transform on preprocessed images (e.g. a multi-scale stack).
        shape: image shape ``(C, H, W)``.
        levels: number of pixel values (256 for 8-bit data; 17 for scikit-learn's digits).
        preprocess: map from dequantized ``[0, 1]`` pixels to the flow's input (with its log-det).
        dequantizer: ``UniformDequantizer`` (default) or ``VariationalDequantizer``.
    """

    def __init__(
        self,
        flow: Transform,
        shape: tuple[int, int, int],
        levels: int = 256,
        preprocess: Transform | None = None,
        dequantizer: nn.Module | None = None,
    ):
        super().__init__()
        if len(shape) != 3:
            raise ValueError(f"shape must be (C, H, W), got {shape}")
        self.shape = tuple(int(s) for s in shape)
        self.levels = positive_int(levels, "levels", minimum=2)
        self.flow = flow
        from .layers import ShiftTransform

        self.preprocess = preprocess if preprocess is not None else ShiftTransform()
        self.dequantizer = dequantizer if dequantizer is not None else UniformDequantizer()
        self.latent_shape = latent_shape(flow, self.shape)
        self.base = StandardNormal(self.latent_shape)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # dtype and device

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.shape or x.dim() != 4:
            raise ValueError(
                f"images must have shape (batch, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}"
            )

    def transform(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Dequantized images ``y`` in ``[0, 1]`` to the latent, with ``log|det|`` (preprocess included)."""
        x0, ladj0 = self.preprocess(y)
        z, ladj = self.flow(x0)
        return z, ladj0 + ladj

    def log_prob_continuous(self, y: Tensor) -> Tensor:
        """Log-density of dequantized images ``y`` in ``[0, 1]^D``: shape ``(batch,)``."""
        z, ladj = self.transform(y)
        return self.base.log_prob(z) + ladj

    def dequantization_noise(self, n: int) -> Tensor:
        """The dequantizer's random input for ``n`` images (what :meth:`log_prob` draws by itself)."""
        sample = getattr(self.dequantizer, "sample_noise", None)
        if sample is None:
            raise TypeError(f"{type(self.dequantizer).__name__} has no sample_noise method")
        return sample((n, *self.shape), device=self._anchor.device, dtype=self._anchor.dtype)

    def dequantize(
        self, k: Tensor, levels: int | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``y = (k + u) / levels`` and ``log q(u | k)`` for integer levels ``k``.

        ``noise`` fixes the dequantizer's random input (see :meth:`log_prob`).
        """
        levels = self.levels if levels is None else levels
        k = k.to(device=self._anchor.device, dtype=self._anchor.dtype)
        if noise is None:
            u, log_q = self.dequantizer(k / (levels - 1))
        else:
            u, log_q = self.dequantizer(k / (levels - 1), noise=noise)
        return (k + u) / levels, log_q

    def log_prob(self, x: Tensor, levels: int | None = None, noise: Tensor | None = None) -> Tensor:
        """Dequantization lower bound on ``log P(x)`` of discrete images, in nats: shape ``(batch,)``.

        ``x`` holds integer levels ``0 .. levels-1`` or floats ``k / (levels - 1)`` in ``[0, 1]``.
        ``noise`` (from :meth:`dequantization_noise`, same shape as ``x``) fixes the dequantization
        draw; by default it is drawn here.
        """
        self._check(x)
        levels = self.levels if levels is None else levels
        y, log_q = self.dequantize(to_levels(x, levels), levels, noise)
        return self.log_prob_continuous(y) - log_q - self.dim * math.log(levels)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """``n`` images in ``[0, 1]`` drawn with the latent's standard deviation scaled by ``temperature``."""
        n = positive_int(n, "n")
        temperature = real_number(temperature, "temperature", positive=False)
        eps = self.base.sample(n) * temperature
        x0, _ = self.flow.inverse(eps)
        y, _ = self.preprocess.inverse(x0)
        return y.clamp(0.0, 1.0)


def bits_per_dim(
    model: ImageFlow,
    x: Tensor,
    n_bits: int | None = None,
    levels: int | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Bits per dimension of discrete images under ``model``: shape ``(batch,)``.

    ``(-log p(y) - (-log q(u | x)) + D log(levels)) / (D ln 2)`` with ``levels = 2**n_bits`` (or
    ``levels`` given directly, e.g. 17 for digits, or the model's own when neither is given).
    ``noise`` fixes the dequantization draw (see :meth:`ImageFlow.log_prob`).
    """
    if n_bits is not None and levels is not None:
        raise ValueError("give n_bits or levels, not both")
    if n_bits is not None:
        levels = 2 ** positive_int(n_bits, "n_bits")
    log_p = (
        model.log_prob(x, levels=levels) if noise is None else model.log_prob(x, levels=levels, noise=noise)
    )
    return -log_p / (model.dim * math.log(2.0))
