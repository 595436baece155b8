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
from .builders import build, coupling_masks, flow_names, register
from .continuous import CNF, ConcatLinear, ConcatSquashLinear, GatedLinear, VectorField
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
from .distill import distill, reverse_kl_estimate
from .gaussianization import GaussianizationBlock, HouseholderRotation, MarginalGaussianization
from .glow import ActNorm, GlowStep, InvConv1x1, InvertibleLinear
from .mixture_cdf import MixtureCDFCoupling
from .nets import MLP
from .residual import Planar, Radial, Sylvester
from .wavenet import (
    CausalConv1d,
    WaveNet,
    WaveNetAffineAutoregressive,
    WaveNetIAF,
    layers_to_cover,
    wavenet_receptive_field,
)

__all__ = [
    "CNF",
    "ConcatLinear",
    "ConcatSquashLinear",
    "GatedLinear",
    "VectorField",
    "GaussianizationBlock",
    "HouseholderRotation",
    "MarginalGaussianization",
    "MixtureCDFCoupling",
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "Compose",
    "FLOW_NAMES",
    "flow_names",
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
    "CausalConv1d",
    "WaveNet",
    "WaveNetAffineAutoregressive",
    "WaveNetIAF",
    "distill",
    "layers_to_cover",
    "reverse_kl_estimate",
    "wavenet_receptive_field",
]


def __getattr__(name: str):
    if name == "FLOW_NAMES":  # computed on access so that registered names are included
        return flow_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
