"""Real NVP for images: checkerboard then channel affine couplings with ResNet conditioners."""

from __future__ import annotations

from ctflow.flows.base import Transform
from ctflow.flows.coupling import AffineCoupling

from .dequant import UniformDequantizer, VariationalDequantizer
from .layers import LogitTransform, Squeeze, channel_mask, checkerboard_mask
from .model import ImageFlow
from .multiscale import multiscale
from .nets import ResNetConditioner

__all__ = ["RealNVP", "make_dequantizer"]


def make_dequantizer(dequantization: str, shape: tuple[int, int, int], hidden: int = 32):
    """``"uniform"`` or ``"variational"`` dequantizer for images of ``shape``."""
    if dequantization == "uniform":
        return UniformDequantizer()
    if dequantization == "variational":
        return VariationalDequantizer(shape, hidden=hidden)
    raise ValueError(f"dequantization must be 'uniform' or 'variational', got {dequantization!r}")


class RealNVP(ImageFlow):
    """Multi-scale Real NVP (Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP").

    Each level but the last: ``steps`` checkerboard affine couplings, a squeeze, ``steps`` channel
    couplings, then half of the channels is factored out. The last level: ``steps + 1`` checkerboard
    couplings. Conditioners are residual CNNs; pixels are logit-preprocessed as in the paper.

    Args:
        shape: image shape ``(C, H, W)``; ``H`` and ``W`` must halve ``n_levels - 1`` times.
        levels: pixel values (256 for 8-bit data).
        n_levels, steps, hidden, n_blocks: architecture sizes.
        dequantization: ``"uniform"`` or ``"variational"``.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        levels: int = 256,
        n_levels: int = 2,
        steps: int = 3,
        hidden: int = 64,
        n_blocks: int = 2,
        dequantization: str = "uniform",
        alpha: float = 0.05,
    ):
        def coupling(mask, c: int) -> AffineCoupling:
            return AffineCoupling(mask, conditioner=ResNetConditioner(c, 2 * c, hidden, n_blocks))

        def make_level(level: int, s: tuple[int, int, int], last: bool) -> list[Transform]:
            c, h, w = s
            out: list[Transform] = [
                coupling(checkerboard_mask(h, w, parity=i % 2), c) for i in range(steps + int(last))
            ]
            if not last:
                out.append(Squeeze())
                out += [coupling(channel_mask(4 * c, parity=i % 2), 4 * c) for i in range(steps)]
            return out

        super().__init__(
            multiscale(shape, n_levels, make_level),
            shape,
            levels,
            preprocess=LogitTransform(alpha),
            dequantizer=make_dequantizer(dequantization, shape),
        )
