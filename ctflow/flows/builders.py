"""Build common flow stacks by name: ``build("maf", dim=2, context_dim=0, n_layers=5)``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..checks import non_negative_int, positive_int
from .autoregressive import InverseAffineAutoregressive, MaskedAffineAutoregressive
from .base import Compose, Flow, Inverse, Transform
from .continuous import CNF
from .coupling import (
    AdditiveCoupling,
    AffineCoupling,
    RandomPermutation,
    Scaling,
    alternating_mask,
    half_mask,
    random_mask,
)
from .gaussianization import GaussianizationBlock
from .glow import ActNorm, GlowStep
from .mixture_cdf import MixtureCDFCoupling
from .residual import Planar, Radial, Sylvester

__all__ = ["build", "flow_names", "register", "coupling_masks"]


def coupling_masks(
    dim: int, n_layers: int, kind: str = "half", seed: int | None = None
) -> list[torch.Tensor]:
    """Masks for ``n_layers`` coupling layers that alternate which part is transformed."""
    if kind == "half":
        return [half_mask(dim, flip=bool(i % 2)) for i in range(n_layers)]
    if kind == "alternating":
        return [alternating_mask(dim, parity=i % 2) for i in range(n_layers)]
    if kind == "random":
        g = torch.Generator()
        g.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        return [random_mask(dim, g) for _ in range(n_layers)]
    raise ValueError(f"unknown mask kind {kind!r}; valid: 'half', 'alternating', 'random'")


def _nice(dim, context_dim, n_layers, hidden, mask="alternating", activation="relu", seed=None):
    layers: list[Transform] = [
        AdditiveCoupling(m, context_dim, hidden, activation=activation)
        for m in coupling_masks(dim, n_layers, mask, seed)
    ]
    return [*layers, Scaling(dim)]


def _realnvp(
    dim,
    context_dim,
    n_layers,
    hidden,
    mask="alternating",
    activation="relu",
    scale_bound=3.0,
    permute=False,
    seed=None,
):
    layers: list[Transform] = []
    for i, m in enumerate(coupling_masks(dim, n_layers, mask, seed)):
        layers.append(AffineCoupling(m, context_dim, hidden, activation=activation, scale_bound=scale_bound))
        if permute and i < n_layers - 1:
            layers.append(RandomPermutation(dim, seed=None if seed is None else seed + i))
    return layers


def _glow(dim, context_dim, n_layers, hidden, activation="relu", scale_bound=3.0, seed=None):
    return [
        GlowStep(
            dim,
            context_dim,
            hidden,
            seed=None if seed is None else seed + i,
            activation=activation,
            scale_bound=scale_bound,
        )
        for i in range(n_layers)
    ]


def _orders(n_layers: int, order: str) -> list[str]:
    if order == "alternate":
        return ["sequential" if i % 2 == 0 else "reverse" for i in range(n_layers)]
    return [order] * n_layers


def _maf(
    dim, context_dim, n_layers, hidden, order="alternate", activation="relu", scale_bound=3.0, seed=None
):
    return [
        MaskedAffineAutoregressive(
            dim,
            context_dim,
            hidden,
            order=o,
            activation=activation,
            scale_bound=scale_bound,
            seed=None if seed is None else seed + i,
        )
        for i, o in enumerate(_orders(n_layers, order))
    ]


def _iaf(
    dim, context_dim, n_layers, hidden, order="alternate", activation="relu", scale_bound=3.0, seed=None
):
    return [
        InverseAffineAutoregressive(
            dim,
            context_dim,
            hidden,
            order=o,
            activation=activation,
            scale_bound=scale_bound,
            seed=None if seed is None else seed + i,
        )
        for i, o in enumerate(_orders(n_layers, order))
    ]


def _planar(dim, context_dim, n_layers, hidden, seed=None):
    return [Inverse(Planar(dim, context_dim)) for _ in range(n_layers)]


def _radial(dim, context_dim, n_layers, hidden, seed=None):
    return [Inverse(Radial(dim, context_dim)) for _ in range(n_layers)]


def _sylvester(
    dim, context_dim, n_layers, hidden, variant="orthogonal", n_vectors=None, n_householder=None, seed=None
):
    return [
        Inverse(
            Sylvester(
                dim,
                context_dim,
                variant=variant,
                n_vectors=n_vectors,
                n_householder=n_householder,
                flip=bool(i % 2),
            )
        )
        for i in range(n_layers)
    ]


def _mixlogcdf(
    dim,
    context_dim,
    n_layers,
    hidden,
    mask="alternating",
    n_components=4,
    activation="relu",
    actnorm=True,
    seed=None,
):
    layers: list[Transform] = []
    for m in coupling_masks(dim, n_layers, mask, seed):
        if actnorm:
            layers.append(ActNorm(dim))
        layers.append(
            MixtureCDFCoupling(m, context_dim, hidden, n_components=n_components, activation=activation)
        )
    return layers


def _gaussianization(dim, context_dim, n_layers, hidden, n_components=8, kind="kde", seed=None):
    return [GaussianizationBlock(dim, n_components, context_dim, kind) for _ in range(n_layers)]


def _cnf(dim, context_dim, n_layers, hidden, seed=None, **cnf_options):
    return [CNF(dim, context_dim, hidden, **cnf_options) for _ in range(n_layers)]


_BUILDERS: dict[str, Callable[..., list[Transform]]] = {
    "nice": _nice,
    "realnvp": _realnvp,
    "glow": _glow,
    "maf": _maf,
    "iaf": _iaf,
    "planar": _planar,
    "radial": _radial,
    "sylvester": _sylvester,
    "mixlogcdf": _mixlogcdf,
    "gaussianization": _gaussianization,
    "cnf": _cnf,
}


def flow_names() -> tuple[str, ...]:
    """Every name :func:`build` accepts (including those added with :func:`register`)."""
    return tuple(_BUILDERS)


def __getattr__(name: str):
    if name == "FLOW_NAMES":  # computed on access so that registered names are included
        return flow_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(name: str, builder: Callable[..., list[Transform]]) -> None:
    """Make ``build(name, ...)`` available for a builder ``(dim, context_dim, n_layers, hidden, **opts)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    _BUILDERS[name.lower()] = builder


def build(
    name: str,
    dim: int,
    context_dim: int = 0,
    n_layers: int = 5,
    hidden: Sequence[int] = (64, 64),
    **options,
) -> Flow:
    """A :class:`Flow` (standard normal base) made of ``n_layers`` transforms of kind ``name``.

    Names: ``nice``, ``realnvp``, ``glow``, ``maf``, ``iaf``, ``planar``, ``radial``,
    ``sylvester``. ``planar``/``radial``/``sylvester`` and ``iaf`` sample in closed form in one
    pass (the posterior use); their ``log_prob`` of an external point is solved numerically.
    ``options`` go to the layers: e.g. ``mask="random"`` (coupling flows), ``order="random"``
    (MAF/IAF), ``variant="householder"`` (Sylvester), ``activation``, ``scale_bound``, ``seed``.

    >>> import torch
    >>> from ctflow.flows import build
    >>> flow = build("realnvp", dim=2, n_layers=2, hidden=(16,), seed=0)
    >>> flow.log_prob(torch.zeros(5, 2)).shape, flow.sample(3).shape
    (torch.Size([5]), torch.Size([3, 2]))
    >>> conditional = build("maf", dim=3, context_dim=2, n_layers=2, hidden=(8,), seed=0)
    >>> conditional.sample(context=torch.zeros(4, 2)).shape  # one sample per context row
    torch.Size([4, 3])
    """
    if not isinstance(name, str) or name.lower() not in _BUILDERS:
        raise ValueError(f"unknown flow {name!r}; valid names: {', '.join(sorted(_BUILDERS))}")
    dim, n_layers = positive_int(dim, "dim"), positive_int(n_layers, "n_layers")
    context_dim = non_negative_int(context_dim, "context_dim")
    hidden = tuple(hidden)
    if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"hidden must be a sequence of positive ints, got {hidden!r}")
    builder = _BUILDERS[name.lower()]
    try:
        seed = options.get("seed")
        if seed is None:
            layers = builder(dim, context_dim, n_layers, hidden, **options)
        else:
            # A seed makes the whole construction repeatable (masks, orders and weight init).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                layers = builder(dim, context_dim, n_layers, hidden, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise TypeError(f"build({name!r}): {err}") from None
        raise
    return Flow(Compose(layers), dim, context_dim)
