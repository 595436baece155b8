"""MintNet: masked invertible convolutions with triangular Jacobians and an iterative inverse.

A :class:`MintLayer` is ``z = x + W3 * elu(W2 * elu(W1 * x + b1) + b2) + b3`` where every ``W`` is
a 3x3 convolution masked to respect one total order of the entries ``(pixel in raster order,
channel)``: an output may read the inputs at earlier pixels, and at its own pixel only the
channels up to its own. Compositions of such maps have triangular Jacobians whose diagonal
involves only the centre taps that connect a channel to itself; those weights are kept positive
(``exp``) and ELU is increasing, so every diagonal entry is ``1 + (positive) > 0`` and
``log|det| = sum log diag``. Alternate layers reverse the order so that information flows both
ways. The inverse has no closed form; it is found by a diagonal (Jacobi-)Newton iteration
``x <- x - (f(x) - z) / diag J(x)`` until ``max |f(x) - z| <= inverse_tol``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ctflow.flows.base import Transform
from ctflow.flows.glow import ActNorm

from .layers import LogitTransform, Squeeze
from .model import ImageFlow
from .multiscale import multiscale
from .realnvp import make_dequantizer

__all__ = ["MaskedConv2d", "MintLayer", "MintNet", "triangular_masks"]


def triangular_masks(
    out_groups: Tensor, in_groups: Tensor, kernel_size: int, reverse: bool = False
) -> tuple[Tensor, Tensor]:
    """``(allowed, diagonal)`` masks ``(out, in, k, k)`` of a convolution respecting the raster order.

    ``out_groups`` / ``in_groups`` give the image channel each output / input channel belongs to.
    ``allowed``: the tap reads an earlier pixel, or the same pixel at a channel group not after the
    output's. ``diagonal``: the centre tap connecting a group to itself (kept positive).
    """
    k = kernel_size
    r = torch.arange(k) - k // 2
    di, dj = r.view(k, 1), r.view(1, k)
    if reverse:
        di, dj = -di, -dj
    before = (di < 0) | ((di == 0) & (dj < 0))
    centre = (di == 0) & (dj == 0)
    go = out_groups.view(-1, 1, 1, 1)
    gi = in_groups.view(1, -1, 1, 1)
    order_ok = (gi >= go) if reverse else (gi <= go)
    allowed = before | (centre & order_ok)
    diagonal = centre & (gi == go)
    return allowed, diagonal


class MaskedConv2d(nn.Module):
    """3x3 convolution with a triangular mask and positive self-connections (see :func:`triangular_masks`)."""

    def __init__(
        self,
        out_groups: Tensor,
        in_groups: Tensor,
        reverse: bool = False,
        diag_init: float = 0.1,
        scale: float = 0.1,
    ):
        super().__init__()
        allowed, diagonal = triangular_masks(out_groups, in_groups, 3, reverse)
        self.register_buffer("allowed", allowed.to(torch.get_default_dtype()))
        self.register_buffer("diagonal", diagonal)
        self.register_buffer("out_groups", out_groups)
        weight = scale * torch.randn(allowed.shape) / allowed.sum((1, 2, 3), keepdim=True).clamp(min=1).sqrt()
        weight = torch.where(
            diagonal, torch.full_like(weight, float(torch.log(torch.tensor(diag_init)))), weight
        )
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(allowed.shape[0]))

    def effective_weight(self) -> Tensor:
        return torch.where(self.diagonal, self.weight.exp(), self.weight) * self.allowed

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.effective_weight(), self.bias, padding=1)


def _elu_grad(a: Tensor) -> Tensor:
    return torch.where(a > 0, torch.ones_like(a), a.clamp(max=0).exp())


class MintLayer(Transform):
    """One MintNet block (Song, Meng & Ermon 2019): ``x + W3 elu(W2 elu(W1 x))`` with masked convolutions.

    Args:
        channels: image channels ``C``.
        multiplier: hidden channels per image channel.
        reverse: use the reversed raster/channel order.
        inverse_tol, max_iter: stopping rule of the iterative inverse.
    """

    analytic_inverse = False

    def __init__(
        self,
        channels: int,
        multiplier: int = 4,
        reverse: bool = False,
        inverse_tol: float = 1e-6,
        max_iter: int = 200,
    ):
        super().__init__()
        self.channels, self.multiplier = channels, multiplier
        groups = torch.arange(channels)
        hidden_groups = groups.repeat_interleave(multiplier)
        self.conv1 = MaskedConv2d(hidden_groups, groups, reverse, diag_init=0.5, scale=1.0)
        self.conv2 = MaskedConv2d(
            hidden_groups, hidden_groups, reverse, diag_init=0.5 / multiplier, scale=1.0
        )
        self.conv3 = MaskedConv2d(groups, hidden_groups, reverse, diag_init=0.05 / multiplier, scale=0.1)
        self.inverse_tol = float(inverse_tol)
        self.max_iter = int(max_iter)

    def _map_and_diag(self, x: Tensor) -> tuple[Tensor, Tensor]:
        c, m = self.channels, self.multiplier
        w1, w2, w3 = (conv.effective_weight() for conv in (self.conv1, self.conv2, self.conv3))
        a1 = F.conv2d(x, w1, self.conv1.bias, padding=1)
        a2 = F.conv2d(F.elu(a1), w2, self.conv2.bias, padding=1)
        z = x + F.conv2d(F.elu(a2), w3, self.conv3.bias, padding=1)
        # Centre-tap self-connections: W1 (C*m,) , W2 blocks (C, m, m), W3 (C, m).
        idx = torch.arange(c * m, device=x.device)
        grp = idx // m
        w1c = w1[idx, grp, 1, 1].view(c, m)
        w2c = w2[:, :, 1, 1].view(c, m, c, m)[torch.arange(c), :, torch.arange(c), :]  # (C, m, m)
        w3c = w3[grp, idx, 1, 1].view(c, m)
        b, _, h, w = x.shape
        d1 = _elu_grad(a1).view(b, c, m, h, w) * w1c.view(1, c, m, 1, 1)
        d2 = _elu_grad(a2).view(b, c, m, h, w) * torch.einsum("gij,bgjhw->bgihw", w2c, d1)
        diag = 1.0 + torch.einsum("gi,bgihw->bghw", w3c, d2)
        return z, diag

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, diag = self._map_and_diag(x)
        return z, diag.log().flatten(1).sum(1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            x = z.clone()
            err = float("inf")
            for _ in range(self.max_iter):
                fx, diag = self._map_and_diag(x)
                residual = fx - z
                err = float(residual.abs().max()) if residual.numel() else 0.0
                if err <= self.inverse_tol:
                    break
                x = x - residual / diag
            else:
                warnings.warn(
                    f"MintLayer inverse stopped after {self.max_iter} iterations at max residual {err:.3g} "
                    f"(tolerance {self.inverse_tol:g})",
                    RuntimeWarning,
                    stacklevel=2,
                )
        _, diag = self._map_and_diag(x)
        return x, -diag.log().flatten(1).sum(1)


class MintNet(ImageFlow):
    """MintNet (Song, Meng & Ermon 2019, "MintNet: Building Invertible Neural Networks with Masked
    Convolutions").

    Each level applies ``steps`` pairs of :class:`MintLayer` (forward and reversed order), each
    followed by ActNorm; every level but the last then squeezes and factors out half of the
    channels. Pixels are logit-preprocessed. The inverse (sampling) is iterative, to ``inverse_tol``.

    Args:
        shape: image shape ``(C, H, W)``.
        levels: pixel values (256 for 8-bit data).
        n_levels, steps, hidden: levels, layer pairs per level, hidden channels per image channel.
        dequantization: ``"uniform"`` or ``"variational"``.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        levels: int = 256,
        n_levels: int = 2,
        steps: int = 2,
        hidden: int = 4,
        dequantization: str = "uniform",
        inverse_tol: float = 1e-6,
        max_iter: int = 200,
        alpha: float = 0.05,
    ):
        def make_level(level: int, s: tuple[int, int, int], last: bool) -> list[Transform]:
            c = s[0]
            out: list[Transform] = []
            for i in range(2 * steps):
                layer = MintLayer(c, hidden, reverse=bool(i % 2), inverse_tol=inverse_tol, max_iter=max_iter)
                out += [layer, ActNorm(c)]
            if not last:
                out.append(Squeeze())
            return out

        super().__init__(
            multiscale(shape, n_levels, make_level),
            shape,
            levels,
            preprocess=LogitTransform(alpha),
            dequantizer=make_dequantizer(dequantization, shape),
        )
