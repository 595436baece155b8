"""Flow++ for images: mixture-of-logistics CDF couplings with gated-convolution/attention conditioners."""

from __future__ import annotations

from ctflow.flows.base import Transform
from ctflow.flows.glow import ActNorm, InvConv1x1
from ctflow.flows.mixture_cdf import MixtureCDFCoupling

from .layers import LogitTransform, Squeeze, channel_mask, checkerboard_mask
from .model import ImageFlow
from .multiscale import multiscale
from .nets import GatedAttentionConditioner
from .realnvp import make_dequantizer

__all__ = ["FlowPlusPlus"]


class FlowPlusPlus(ImageFlow):
    """Flow++ (Ho, Chen, Srinivas, Duan & Abbeel 2019, "Flow++: Improving Flow-Based Generative
    Models with Variational Dequantization and Architecture Design").

    Each step is ActNorm, an invertible 1x1 convolution (when there is more than one channel) and
    a mixture-of-logistics CDF coupling (:class:`ctflow.flows.MixtureCDFCoupling`) whose
    conditioner stacks gated residual convolutions and multi-head self-attention. Levels follow
    Real NVP's pattern (checkerboard steps, squeeze, channel steps, split); the default
    dequantization is variational, with its own conditional flow ``q(u | x)``.

    Args:
        shape: image shape ``(C, H, W)``.
        levels: pixel values (256 for 8-bit data).
        n_levels, steps, hidden, n_blocks, heads, n_components: architecture sizes.
        dequantization: ``"variational"`` (default) or ``"uniform"``.
        inverse_tol: tolerance of the couplings' bisection inverse.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        levels: int = 256,
        n_levels: int = 2,
        steps: int = 2,
        hidden: int = 32,
        n_blocks: int = 1,
        heads: int = 4,
        n_components: int = 4,
        dequantization: str = "variational",
        attention: bool = True,
        inverse_tol: float = 1e-6,
        seed: int | None = 0,
        alpha: float = 0.05,
    ):
        n_params = 3 * n_components + 2

        def step(mask, c: int, tag: int) -> list[Transform]:
            net = GatedAttentionConditioner(c, n_params * c, hidden, n_blocks, heads, attention=attention)
            out: list[Transform] = [ActNorm(c)]
            if c > 1:
                out.append(InvConv1x1(c, seed=None if seed is None else seed + tag))
            out.append(
                MixtureCDFCoupling(mask, conditioner=net, n_components=n_components, inverse_tol=inverse_tol)
            )
            return out

        def make_level(level: int, s: tuple[int, int, int], last: bool) -> list[Transform]:
            c, h, w = s
            out: list[Transform] = []
            for i in range(steps + int(last)):
                out += step(checkerboard_mask(h, w, parity=i % 2), c, 1000 * level + i)
            if not last:
                out.append(Squeeze())
                for i in range(steps):
                    out += step(channel_mask(4 * c, parity=i % 2), 4 * c, 1000 * level + 100 + i)
            return out

        super().__init__(
            multiscale(shape, n_levels, make_level),
            shape,
            levels,
            preprocess=LogitTransform(alpha),
            dequantizer=make_dequantizer(dequantization, shape),
        )
