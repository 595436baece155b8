"""Glow for images: L levels of squeeze, K x (ActNorm, 1x1 convolution, affine coupling), split."""

from __future__ import annotations

from ctflow.flows.base import Transform
from ctflow.flows.glow import ActNorm, InvConv1x1

from .layers import ShiftTransform, SigmoidAffineCoupling, Squeeze, channel_mask
from .model import ImageFlow
from .multiscale import multiscale
from .nets import GlowConditioner
from .realnvp import make_dequantizer

__all__ = ["Glow"]


class Glow(ImageFlow):
    """Glow (Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1x1 Convolutions").

    Every level squeezes, then applies ``steps`` flow steps (ActNorm with data-dependent
    initialisation, LU-parametrised invertible 1x1 convolution, affine coupling with the sigmoid
    scale and a zero-initialised last convolution); every level but the last factors out half of
    its channels under a learned conditional prior. Pixels are centred (``y - 0.5``).

    Args:
        shape: image shape ``(C, H, W)``; ``H`` and ``W`` must halve ``n_levels`` times.
        levels: pixel values (256 for 8-bit data).
        n_levels, steps, hidden: L, K and the conditioner width.
        dequantization: ``"uniform"`` or ``"variational"``.
        seed: seed of the random rotations that initialise the 1x1 convolutions.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        levels: int = 256,
        n_levels: int = 2,
        steps: int = 4,
        hidden: int = 64,
        dequantization: str = "uniform",
        seed: int | None = 0,
    ):
        def make_level(level: int, s: tuple[int, int, int], last: bool) -> list[Transform]:
            c = 4 * s[0]
            out: list[Transform] = [Squeeze()]
            for k in range(steps):
                conv_seed = None if seed is None else seed + 1000 * level + k
                out += [
                    ActNorm(c),
                    InvConv1x1(c, seed=conv_seed),
                    SigmoidAffineCoupling(channel_mask(c), conditioner=GlowConditioner(c, 2 * c, hidden)),
                ]
            return out

        super().__init__(
            multiscale(shape, n_levels, make_level),
            shape,
            levels,
            preprocess=ShiftTransform(),
            dequantizer=make_dequantizer(dequantization, shape),
        )
