"""Every transform, dims 1, 2 and 5, with and without context, in float64:
inverse(forward(x)) == x and logabsdet == log|det J| from autograd."""

from __future__ import annotations

import pytest
import torch
from conftest import brute_force_logabsdet, perturb

from ctflow.flows import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    Compose,
    GaussianizationBlock,
    GlowStep,
    HouseholderRotation,
    Inverse,
    InverseAffineAutoregressive,
    InvertibleLinear,
    MarginalGaussianization,
    MaskedAffineAutoregressive,
    MixtureCDFCoupling,
    Planar,
    Radial,
    RandomPermutation,
    ReversePermutation,
    Scaling,
    Sylvester,
    alternating_mask,
    half_mask,
    random_mask,
)

HIDDEN = (16, 16)

# name -> factory(dim, context_dim) building a transform (parameters are perturbed afterwards).
FACTORIES = {
    "nice_additive": lambda d, c: AdditiveCoupling(half_mask(d), c, HIDDEN),
    "nice_scaling": lambda d, c: Scaling(d),
    "realnvp_half": lambda d, c: AffineCoupling(half_mask(d, flip=True), c, HIDDEN),
    "realnvp_alternating": lambda d, c: AffineCoupling(alternating_mask(d, 1), c, HIDDEN, activation="tanh"),
    "realnvp_random": lambda d, c: AffineCoupling(
        random_mask(d, torch.Generator().manual_seed(3)), c, HIDDEN
    ),
    "reverse_permutation": lambda d, c: ReversePermutation(d),
    "random_permutation": lambda d, c: RandomPermutation(d, seed=7),
    "actnorm": lambda d, c: ActNorm(d),
    "invertible_linear": lambda d, c: InvertibleLinear(d, seed=1),
    "glow_step": lambda d, c: GlowStep(d, c, HIDDEN, seed=2),
    "maf_sequential": lambda d, c: MaskedAffineAutoregressive(d, c, HIDDEN),
    "maf_random_order": lambda d, c: MaskedAffineAutoregressive(d, c, (12, 9), order="random", seed=5),
    "iaf": lambda d, c: InverseAffineAutoregressive(d, c, HIDDEN, order="reverse"),
    "planar": lambda d, c: Planar(d, c),
    "planar_inverted": lambda d, c: Inverse(Planar(d, c)),
    "radial": lambda d, c: Radial(d, c),
    "sylvester_orthogonal": lambda d, c: Sylvester(d, c, "orthogonal", n_vectors=max(1, d - 1)),
    "sylvester_householder": lambda d, c: Sylvester(d, c, "householder", n_householder=3),
    "sylvester_triangular": lambda d, c: Sylvester(d, c, "triangular", flip=True),
    "mixture_cdf_coupling": lambda d, c: MixtureCDFCoupling(half_mask(d), c, HIDDEN, n_components=3),
    "marginal_gaussianization_kde": lambda d, c: MarginalGaussianization(d, 5, c),
    "marginal_gaussianization_mixture": lambda d, c: MarginalGaussianization(d, 4, c, kind="mixture"),
    "householder_rotation": lambda d, c: HouseholderRotation(d),
    "gaussianization_block": lambda d, c: GaussianizationBlock(d, 4, c),
    "composed": lambda d, c: Compose(
        [ActNorm(d), MaskedAffineAutoregressive(d, c, HIDDEN), Inverse(Radial(d, c)), ReversePermutation(d)]
    ),
}
DIMS = (1, 2, 5)
CONTEXTS = (0, 3)
BATCH = 6


def make(name: str, dim: int, context_dim: int, seed: int = 0):
    torch.manual_seed(seed)
    t = FACTORIES[name](dim, context_dim).double()
    perturb(t, 0.3, seed)
    x = torch.randn(BATCH, dim, dtype=torch.float64)
    ctx = torch.randn(BATCH, context_dim, dtype=torch.float64) if context_dim else None
    t.train()
    t(x, ctx)  # triggers ActNorm's data-dependent initialisation
    perturb(t, 0.1, seed + 1)
    t.eval()
    return t, 1.5 * torch.randn(BATCH, dim, dtype=torch.float64), ctx


CASES = [(n, d, c) for n in FACTORIES for d in DIMS for c in CONTEXTS]


@pytest.mark.parametrize(("name", "dim", "context_dim"), CASES)
def test_inverse_of_forward_is_identity(name, dim, context_dim):
    t, x, ctx = make(name, dim, context_dim)
    z, ladj = t(x, ctx)
    x_back, ladj_inv = t.inverse(z, ctx)
    assert z.shape == x.shape and ladj.shape == (BATCH,)
    torch.testing.assert_close(x_back, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ladj_inv, -ladj, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize(("name", "dim", "context_dim"), CASES)
def test_logabsdet_matches_autograd_jacobian(name, dim, context_dim):
    t, x, ctx = make(name, dim, context_dim)
    _, ladj = t(x, ctx)
    expected = brute_force_logabsdet(lambda v: t(v, ctx)[0], x)
    torch.testing.assert_close(ladj, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("name", "dim", "context_dim"), CASES)
def test_inverse_logabsdet_matches_autograd_jacobian(name, dim, context_dim):
    t, x, ctx = make(name, dim, context_dim)
    _, ladj = t.inverse(x, ctx)
    expected = brute_force_logabsdet(lambda v: t.inverse(v, ctx)[0], x)
    torch.testing.assert_close(ladj, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "name", ["realnvp_half", "maf_sequential", "planar", "sylvester_orthogonal", "radial"]
)
def test_context_changes_the_map(name):
    """A conditional transform must actually use its context."""
    t, x, ctx = make(name, 2, 3)
    z1, _ = t(x, ctx)
    z2, _ = t(x, ctx + 1.0)
    assert (z1 - z2).abs().max() > 1e-3


def test_identity_at_initialisation():
    """Zero-initialised conditioners make coupling and autoregressive layers start as the identity."""
    x = torch.randn(10, 4)
    for t in (AffineCoupling(half_mask(4)), AdditiveCoupling(half_mask(4)), MaskedAffineAutoregressive(4)):
        z, ladj = t(x)
        torch.testing.assert_close(z, x)
        torch.testing.assert_close(ladj, torch.zeros(10))
