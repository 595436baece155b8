"""Bits/dim bookkeeping, pixel-level conversion, dequantization and temperature sampling."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import brute_force_logabsdet, perturb

from ctflow.flows.base import Compose
from ctflow.image import ImageFlow, VariationalDequantizer, bits_per_dim, build_image_flow, to_levels

D64 = torch.float64


class UniformDensity(ImageFlow):
    """p(y) = 1 on [0, 1]^D."""

    def log_prob_continuous(self, y):
        return y.new_zeros(y.shape[0])


class PowerDensity(ImageFlow):
    """p(y) = prod 2 y_i on [0, 1]^D (its bin masses are known exactly)."""

    def log_prob_continuous(self, y):
        return (math.log(2.0) + torch.log(y)).flatten(1).sum(1)


def _uniform_model(levels=256, **kwargs):
    return UniformDensity(Compose([]), (1, 4, 4), levels, **kwargs).double()


def test_uniform_density_scores_exactly_n_bits():
    x = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    bpd = bits_per_dim(_uniform_model(), x, n_bits=8)
    assert torch.allclose(bpd, torch.full((5,), 8.0, dtype=D64), atol=1e-12, rtol=0)
    x5 = torch.randint(0, 32, (3, 1, 4, 4))
    assert torch.allclose(bits_per_dim(_uniform_model(32), x5, n_bits=5), torch.full((3,), 5.0, dtype=D64))
    digits = torch.randint(0, 17, (3, 1, 4, 4))
    bpd17 = bits_per_dim(_uniform_model(17), digits)
    assert torch.allclose(bpd17, torch.full((3,), math.log2(17), dtype=D64))


def test_bound_matches_exact_bin_masses_for_a_known_density():
    # P(k) = ((k+1)^2 - k^2) / L^2 per pixel; uniform dequantization gives E[log p] - D log L <= log P.
    levels = 4
    model = PowerDensity(Compose([]), (1, 2, 2), levels).double()
    k = torch.tensor([[[[0, 1], [2, 3]]]])
    exact = torch.log(((k + 1) ** 2 - k**2) / levels**2).sum().double()
    est = torch.stack([model.log_prob(k) for _ in range(4000)]).mean()
    jensen_gap = 0.0
    for v in range(levels):  # E[log(2y)] over the bin minus log of the bin's mean density
        u = torch.linspace(0, 1, 200_001, dtype=D64)[1:-1]
        y = (v + u) / levels
        jensen_gap += float(torch.log(2 * y).mean() - math.log(((v + 1) ** 2 - v**2) / levels))
    assert est.item() == pytest.approx(exact.item() + jensen_gap, abs=0.03)
    assert est.item() < exact.item()


def test_to_levels_accepts_ints_and_unit_floats_and_rejects_the_rest():
    assert torch.equal(to_levels(torch.tensor([0.0, 1.0, 0.5]), 3), torch.tensor([0.0, 2.0, 1.0]))
    k = torch.tensor([0, 16])
    assert to_levels(k, 17) is k
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        to_levels(torch.tensor([17]), 17)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_levels(torch.tensor([1.5]), 17)
    with pytest.raises(TypeError):
        to_levels([1, 2], 17)
    model = _uniform_model()
    with pytest.raises(ValueError, match="shape"):
        model.log_prob(torch.zeros(2, 1, 3, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="n_bits"):
        bits_per_dim(model, torch.zeros(1, 1, 4, 4, dtype=torch.uint8), n_bits=0)


def _vardeq():
    torch.manual_seed(0)
    deq = VariationalDequantizer((1, 2, 2), hidden=4, n_steps=2, n_components=2, context_channels=2)
    return perturb(deq.double(), 0.1).eval()


def test_variational_dequantizer_log_q_is_a_normalised_density():
    deq = _vardeq()
    x = torch.tensor([[[[0.0, 0.25], [0.5, 1.0]]]], dtype=D64)
    eps = torch.randn(3, 1, 2, 2, dtype=D64)
    u, log_q = deq.transform_noise(x.expand(3, -1, -1, -1), eps)
    assert ((u > 0) & (u < 1)).all()
    # log q(u) = log N(eps) - log|du/deps|.
    ladj = brute_force_logabsdet(lambda e: deq.transform_noise(x.expand(3, -1, -1, -1), e)[0], eps)
    log_normal = (-0.5 * eps.square() - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    assert torch.allclose(log_q, log_normal - ladj, atol=1e-8)


def test_variational_dequantizer_density_integrates_to_one():
    torch.manual_seed(0)
    deq = VariationalDequantizer((1, 1, 1), hidden=4, n_steps=2, n_components=3, context_channels=2)
    deq = perturb(deq.double(), 0.3).eval()
    u = torch.linspace(0, 1, 20_001, dtype=D64)[1:-1].view(-1, 1, 1, 1)
    x = torch.full_like(u, 0.5)
    with torch.no_grad():
        context = deq.embed(2.0 * x - 1.0)
        eps, _ = deq.flow.inverse(torch.logit(u), context)
        u_back, log_q = deq.transform_noise(x, eps)
    assert torch.allclose(u_back, u, atol=1e-9)
    mass = torch.trapezoid(log_q.exp(), u.flatten()).item()
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_variational_bound_is_never_below_the_true_bits_per_dim():
    # Under p(y) = 1 the true value is exactly 8 bits/dim; any q(u|x) can only add KL(q || U) >= 0.
    model = UniformDensity(Compose([]), (1, 2, 2), 256, dequantizer=_vardeq()).double()
    x = torch.randint(0, 256, (4000, 1, 2, 2), dtype=torch.uint8)
    with torch.no_grad():
        bpd = bits_per_dim(model, x, n_bits=8)
    assert bpd.mean().item() > 8.0
    assert bpd.mean().item() < 8.5


def test_model_log_prob_with_variational_dequantization_trains_q():
    model = build_image_flow(
        "realnvp", (1, 4, 4), 17, hidden=4, n_blocks=1, steps=1, dequantization="variational"
    )
    x = torch.randint(0, 17, (8, 1, 4, 4))
    loss = bits_per_dim(model, x).mean()
    loss.backward()
    grads = [p.grad for p in model.dequantizer.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ["realnvp", "glow", "flowpp", "mintnet"])
def test_temperature_sampling(name):
    model = build_image_flow(name, (1, 4, 4), 17, steps=1, hidden=4).eval()
    s = model.sample(3, temperature=0.5)
    assert s.shape == (3, 1, 4, 4) and s.min() >= 0 and s.max() <= 1
    cold = model.sample(2, temperature=0.0)
    assert torch.allclose(cold[0], cold[1], atol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, temperature=-1.0)
