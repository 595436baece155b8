"""Convolutional conditioners for image couplings.

Every conditioner is called as ``net(x, context)``: ``x`` is the ``(B, C, H, W)`` input of the
coupling (its transformed part already zeroed by the mask) and ``context`` an optional feature map
``(B, C_ctx, H, W)`` concatenated along the channels (used by the variational dequantizer, whose
flow is conditioned on the image). The last layer starts at zero, so every coupling starts as the
identity (or, for Glow's sigmoid form, as a fixed scaling).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "ZeroConv2d",
    "ResNetConditioner",
    "GlowConditioner",
    "GatedAttentionConditioner",
    "concat_elu",
]


class ZeroConv2d(nn.Module):
    """3x3 convolution starting at zero, with a learned per-channel output gain ``exp(3 * g)`` (Glow)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.log_gain = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(3.0 * self.log_gain)


def _with_context(x: Tensor, context: Tensor | None, context_channels: int) -> Tensor:
    if context_channels == 0:
        return x
    if context is None or context.dim() != 4 or context.shape[1] != context_channels:
        got = None if context is None else tuple(context.shape)
        raise ValueError(f"this conditioner needs a (batch, {context_channels}, H, W) context, got {got}")
    return torch.cat([x, context], dim=1)


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ResNetConditioner(nn.Module):
    """Residual CNN (RealNVP's conditioner): conv, ``n_blocks`` residual blocks, zero-init conv.

    Batch normalisation of the original is left out so that forward and inverse agree in every mode.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        n_blocks: int = 2,
        context_channels: int = 0,
    ):
        super().__init__()
        self.context_channels = context_channels
        self.conv_in = nn.Conv2d(in_channels + context_channels, hidden, 3, padding=1)
        self.blocks = nn.Sequential(*[_ResBlock(hidden) for _ in range(n_blocks)])
        self.conv_out = ZeroConv2d(hidden, out_channels)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.conv_in(_with_context(x, context, self.context_channels))
        return self.conv_out(F.relu(self.blocks(h)))


class GlowConditioner(nn.Module):
    """Glow's coupling network: 3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialised 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, context_channels: int = 0):
        super().__init__()
        self.context_channels = context_channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + context_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            ZeroConv2d(hidden, out_channels),
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(_with_context(x, context, self.context_channels))


def concat_elu(x: Tensor) -> Tensor:
    """``elu([x, -x])`` along channels (PixelCNN++ / Flow++)."""
    return F.elu(torch.cat([x, -x], dim=1))


class _GatedConv(nn.Module):
    """``x + a * sigmoid(b)`` with ``[a, b] = conv(concat_elu(conv(concat_elu(x))))``."""

    def __init__(self, channels: int, dropout: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.gate = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.dropout(self.conv(concat_elu(x)))
        a, b = self.gate(concat_elu(h)).chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


class _ChannelNorm(nn.Module):
    """Layer normalisation over the channels of each pixel."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class _GatedAttention(nn.Module):
    """Multi-head self-attention over all pixels with a gated residual connection."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.gate = nn.Conv2d(channels, 2 * channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        out = out.transpose(1, 2).reshape(b, c, h, w)
        a, g = self.gate(out).chunk(2, dim=1)
        return x + a * torch.sigmoid(g)


class GatedAttentionConditioner(nn.Module):
    """Flow++'s conditioner: gated residual convolutions, each followed by gated multi-head attention.

    Ho et al. (2019), "Flow++: Improving Flow-Based Generative Models with Variational
    Dequantization and Architecture Design".
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        n_blocks: int = 2,
        heads: int = 4,
        context_channels: int = 0,
        attention: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if attention and hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.context_channels = context_channels
        self.conv_in = nn.Conv2d(in_channels + context_channels, hidden, 3, padding=1)
        layers: list[nn.Module] = []
        for _ in range(n_blocks):
            layers += [_GatedConv(hidden, dropout), _ChannelNorm(hidden)]
            if attention:
                layers += [_GatedAttention(hidden, heads), _ChannelNorm(hidden)]
        self.blocks = nn.Sequential(*layers)
        self.conv_out = ZeroConv2d(hidden, out_channels)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.conv_in(_with_context(x, context, self.context_channels))
        return self.conv_out(self.blocks(h))
