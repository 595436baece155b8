"""The Flow distribution contract: log_prob, sampling, context broadcasting, normalisation, errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import perturb

from ctflow.flows import FLOW_NAMES, Flow, StandardNormal, build

# Tight solver tolerances so that CNF densities are exact to the test tolerances; a fine fixed-step
# RK4 (global error ~1e-6) for the many grid points of the normalisation test.
OPTIONS = {"cnf": {"solver": {"rtol": 1e-8, "atol": 1e-8}}}
GRID_OPTIONS = {"cnf": {"solver": {"method": "rk4", "step_size": 0.1}}}


def _grid_integral(flow: Flow, half_width: float = 12.0, n: int = 301) -> float:
    """Trapezoid-rule integral of exp(log_prob) over a square grid."""
    t = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    with torch.no_grad():
        dens = flow.log_prob(pts).exp().reshape(n, n)
    return torch.trapezoid(torch.trapezoid(dens, t, dim=1), t).item()


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_random_2d_flow_density_integrates_to_one(name):
    torch.manual_seed(0)
    flow = build(name, 2, n_layers=3, hidden=(16, 16), seed=0, **GRID_OPTIONS.get(name, {})).double()
    flow.train()
    flow.log_prob(torch.randn(256, 2, dtype=torch.float64))  # data-dependent init where any
    perturb(flow, 0.15, seed=3)
    flow.eval()
    # The perturbation must have moved the density away from the base Gaussian.
    x = torch.randn(64, 2, dtype=torch.float64)
    assert (flow.log_prob(x) - StandardNormal(2).double().log_prob(x)).abs().max() > 1e-2
    # Heavy-tailed flows put some mass beyond the grid: count it with samples (SE < 2e-3).
    with torch.no_grad():
        samples = flow.sample(20_000)
    outside = (samples.abs().max(dim=1).values > 12.0).double().mean().item()
    assert outside < 0.2
    assert _grid_integral(flow) + outside == pytest.approx(1.0, abs=0.01)


def test_trained_2d_flow_density_integrates_to_one():
    """A MAF fitted to a bimodal density is still normalised."""
    torch.manual_seed(0)
    data = torch.cat([torch.randn(500, 2) * 0.3 + 1.5, torch.randn(500, 2) * 0.3 - 1.5]).double()
    flow = build("maf", 2, n_layers=4, hidden=(32, 32)).double()
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    first = -flow.log_prob(data).mean().item()
    for _ in range(150):
        opt.zero_grad()
        loss = -flow.log_prob(data).mean()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5  # it did learn
    assert _grid_integral(flow, half_width=8.0) == pytest.approx(1.0, abs=0.01)


def test_one_dimensional_density_integrates_to_one():
    flow = perturb(build("realnvp", 1, n_layers=3, hidden=(8,)).double(), 0.3)
    t = torch.linspace(-30, 30, 20001, dtype=torch.float64)
    with torch.no_grad():
        dens = flow.log_prob(t[:, None]).exp()
    assert torch.trapezoid(dens, t).item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_rsample_log_prob_agrees_with_log_prob(name):
    flow = build(name, 3, context_dim=2, n_layers=2, hidden=(16,), **OPTIONS.get(name, {}))
    flow = perturb(flow.double(), 0.2)
    ctx = torch.randn(5, 2, dtype=torch.float64)
    x, lp = flow.rsample_and_log_prob(context=ctx)
    assert x.shape == (5, 3) and lp.shape == (5,)
    torch.testing.assert_close(lp, flow.log_prob(x, ctx), rtol=1e-6, atol=1e-8)
    # Reparametrised: gradients reach the parameters through the samples.
    x.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())


def test_context_broadcasting_shapes():
    flow = build("maf", 4, context_dim=3, n_layers=2, hidden=(8,))
    c = torch.randn(3)
    assert flow.sample(7, context=c).shape == (7, 4)
    assert flow.sample(7, context=c[None]).shape == (7, 4)
    rows = torch.randn(6, 3)
    assert flow.sample(context=rows).shape == (6, 4)
    assert flow.sample(6, context=rows).shape == (6, 4)
    x = torch.randn(9, 4)
    lp_shared = flow.log_prob(x, c)
    torch.testing.assert_close(lp_shared, flow.log_prob(x, c.expand(9, 3)))
    assert lp_shared.shape == (9,)


def test_per_row_context_gives_per_row_samples():
    """Row i of the samples is drawn with context row i."""
    flow = perturb(build("realnvp", 2, context_dim=1, n_layers=2, hidden=(8,)), 0.5)
    ctx = torch.tensor([[-3.0], [3.0]]).repeat_interleave(2000, 0)
    torch.manual_seed(0)
    x = flow.sample(context=ctx)
    torch.manual_seed(0)
    x_lo = flow.sample(4000, context=torch.tensor([-3.0]))
    torch.testing.assert_close(x[:2000], x_lo[:2000])
    assert not torch.allclose(x[2000:], x_lo[2000:])


def test_standard_normal_log_prob():
    base = StandardNormal(3)
    z = torch.randn(10, 3)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(base.log_prob(z), expected)
    assert base.sample(4).shape == (4, 3)


def test_sampling_matches_density():
    """Samples follow the flow's density: their mean log_prob equals -entropy estimated from log_prob."""
    torch.manual_seed(0)
    flow = perturb(build("realnvp", 2, n_layers=3, hidden=(16,)).double(), 0.3)
    x = flow.sample(20000)
    # For samples from p, E[log p(x)] is the negative entropy; a mismatched sampler would not
    # reproduce the change-of-variables identity E_p[log p] = E_base[log p_base] - E[log|det dx/dz|].
    z = flow.base.sample(20000)
    x2, ladj = flow.transform.inverse(z)
    lhs = flow.log_prob(x2).mean()
    rhs = (flow.base.log_prob(z) - ladj).mean()
    torch.testing.assert_close(lhs, rhs, rtol=1e-6, atol=1e-6)
    assert x.mean(0).abs().max() < 5  # finite, sensible samples
    # Distribution check on one marginal: KS distance between two independent sample sets is small.
    a, b = x[:, 0].sort().values, flow.sample(20000)[:, 0].sort().values
    grid = torch.linspace(min(a[0], b[0]), max(a[-1], b[-1]), 200, dtype=torch.float64)
    cdf_a = torch.searchsorted(a, grid).double() / a.numel()
    cdf_b = torch.searchsorted(b, grid).double() / b.numel()
    assert (cdf_a - cdf_b).abs().max() < 0.03


class TestErrors:
    def test_wrong_dim(self):
        flow = build("maf", 3)
        with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
            flow.log_prob(torch.randn(4, 2))

    def test_integer_input(self):
        with pytest.raises(TypeError, match="floating-point"):
            build("maf", 2).log_prob(torch.ones(3, 2, dtype=torch.long))

    def test_non_tensor_input(self):
        with pytest.raises(TypeError, match=r"torch\.Tensor"):
            build("maf", 2).log_prob([[0.0, 1.0]])

    def test_missing_context(self):
        with pytest.raises(ValueError, match="conditional"):
            build("maf", 2, context_dim=2).log_prob(torch.randn(3, 2))

    def test_unexpected_context(self):
        with pytest.raises(ValueError, match="unconditional"):
            build("maf", 2).log_prob(torch.randn(3, 2), torch.randn(3, 1))

    def test_context_rows_mismatch(self):
        with pytest.raises(ValueError, match="rows"):
            build("maf", 2, context_dim=1).log_prob(torch.randn(3, 2), torch.randn(4, 1))

    def test_context_columns_mismatch(self):
        with pytest.raises(ValueError, match="2 columns"):
            build("maf", 2, context_dim=2).log_prob(torch.randn(3, 2), torch.randn(3, 5))

    def test_nan_input(self):
        x = torch.randn(4, 2)
        x[2, 1] = math.nan
        with pytest.raises(ValueError, match="not finite"):
            build("realnvp", 2).log_prob(x)

    def test_bad_sample_count(self):
        for n in (0, -3, 2.5, True):
            with pytest.raises(ValueError, match="n must be a positive int"):
                build("maf", 2).sample(n)
