"""Normalizing flows: transforms, flows as distributions, and builders by name.

``ctflow.flows`` knows nothing of time series; sequence models use these flows as emission
densities ``p(y | h(t))`` and posterior densities ``q(z | x)``.
"""

from .autoregressive import (
    MADE,
    InverseAffineAutoregressive,
    MaskedAffineAutoregressive,
    MaskedLinear,
    make_order,
)
from .base import (
    Compose,
    Flow,
    Inverse,
    StandardNormal,
    Transform,
    broadcast_context,
    set_validation,
    validation_enabled,
)
from .builders import FLOW_NAMES, build, coupling_masks, register
from .coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Permutation,
    RandomPermutation,
    ReversePermutation,
    Scaling,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    half_mask,
    random_mask,
)
from .glow import ActNorm, GlowStep, InvConv1x1, InvertibleLinear
from .nets import MLP
from .residual import Planar, Radial, Sylvester

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "Compose",
    "FLOW_NAMES",
    "Flow",
    "GlowStep",
    "InvConv1x1",
    "Inverse",
    "InverseAffineAutoregressive",
    "InvertibleLinear",
    "MADE",
    "MLP",
    "MaskedAffineAutoregressive",
    "MaskedLinear",
    "Permutation",
    "Planar",
    "Radial",
    "RandomPermutation",
    "ReversePermutation",
    "Scaling",
    "StandardNormal",
    "Sylvester",
    "Transform",
    "alternating_mask",
    "broadcast_context",
    "build",
    "channel_mask",
    "checkerboard_mask",
    "coupling_masks",
    "half_mask",
    "make_order",
    "random_mask",
    "register",
    "set_validation",
    "validation_enabled",
]
