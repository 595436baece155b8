"""Multi-scale normalizing flows for images: Real NVP, Glow, Flow++ and MintNet.

``model.log_prob(x)`` gives the dequantization bound on the log-likelihood of discrete images,
:func:`bits_per_dim` the usual score, ``model.sample(n, temperature=...)`` images in ``[0, 1]``.
:func:`build_image_flow` makes a model by name; :mod:`ctflow.image.data` loads digits, MNIST, IDX
files, PNG folders and ``.npy`` arrays; ``python -m ctflow.image train ...`` trains one.
"""

from __future__ import annotations

from typing import Any

from .dequant import UniformDequantizer, VariationalDequantizer
from .flowpp import FlowPlusPlus
from .glow import Glow
from .layers import (
    LogitTransform,
    ShiftTransform,
    SigmoidAffineCoupling,
    Split,
    Squeeze,
    Unsqueeze,
    channel_mask,
    checkerboard_mask,
    squeeze,
    unsqueeze,
)
from .mintnet import MaskedConv2d, MintLayer, MintNet
from .model import ImageFlow, bits_per_dim, to_levels
from .multiscale import multiscale
from .realnvp import RealNVP

__all__ = [
    "MODELS",
    "FlowPlusPlus",
    "Glow",
    "ImageFlow",
    "LogitTransform",
    "MaskedConv2d",
    "MintLayer",
    "MintNet",
    "RealNVP",
    "ShiftTransform",
    "SigmoidAffineCoupling",
    "Split",
    "Squeeze",
    "UniformDequantizer",
    "Unsqueeze",
    "VariationalDequantizer",
    "bits_per_dim",
    "build_image_flow",
    "channel_mask",
    "checkerboard_mask",
    "multiscale",
    "squeeze",
    "to_levels",
    "unsqueeze",
]

MODELS: dict[str, type[ImageFlow]] = {
    "realnvp": RealNVP,
    "glow": Glow,
    "flowpp": FlowPlusPlus,
    "mintnet": MintNet,
}


def build_image_flow(name: str, shape: tuple[int, int, int], levels: int = 256, **options: Any) -> ImageFlow:
    """Make an image flow by name (realnvp, glow, flowpp, mintnet); options reach its class.

    >>> import torch
    >>> from ctflow.image import bits_per_dim, build_image_flow
    >>> model = build_image_flow("realnvp", (1, 4, 4), levels=4, n_levels=1, steps=1, hidden=8, n_blocks=1)
    >>> images = torch.randint(0, 4, (2, 1, 4, 4))  # integer levels 0 .. 3
    >>> bits_per_dim(model, images).shape, model.sample(3).shape
    (torch.Size([2]), torch.Size([3, 1, 4, 4]))
    """
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown image model {name!r}; valid: {', '.join(MODELS)}") from None
    return cls(tuple(shape), levels, **options)
