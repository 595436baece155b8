"""The Flow distribution contract: log_prob, sampling, context broadcasting, normalisation, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import perturb
from torch import Tensor

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


def _trained_maf() -> Flow:
    """A 2-D MAF after 60 Adam steps on a bimodal sample (Adam written out to keep this cheap)."""
    g = torch.Generator().manual_seed(0)
    modes = torch.tensor([[1.5, 1.5], [-1.5, -1.5]], dtype=torch.float64).repeat_interleave(250, 0)
    data = modes + 0.4 * torch.randn(500, 2, generator=g, dtype=torch.float64)
    flow = build("maf", 2, n_layers=3, hidden=(16, 16), seed=0).double()
    params = list(flow.parameters())
    first = -flow.log_prob(data).mean().item()
    m1, m2 = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    for step in range(1, 61):
        flow.zero_grad()
        loss = -flow.log_prob(data).mean()
        loss.backward()
        with torch.no_grad():
            for p, a, b in zip(params, m1, m2, strict=True):
                a.lerp_(p.grad, 0.1)
                b.lerp_(p.grad.square(), 0.001)
                p -= 1e-2 * (a / (1 - 0.9**step)) / ((b / (1 - 0.999**step)).sqrt() + 1e-8)
    assert loss.item() < first - 1.0  # it learned the two modes, at least roughly
    return flow.eval()


def _perturbed(name: str, dim: int) -> Flow:
    """A float64 flow, initialised on data (where a layer needs it), with random parameters."""
    flow = build(name, dim, n_layers=3, hidden=(16, 16), seed=0).double()
    flow.train()
    flow.log_prob(torch.randn(256, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    return perturb(flow, 0.3, seed=1).eval()


def _cell_masses(flow: Flow, edges: list[Tensor], n_nodes: int = 6) -> Tensor:
    """Probability of every cell of the grid ``edges`` (one edge vector per dimension): the
    integral of ``exp(log_prob)`` over the cell by ``n_nodes``-point Gauss-Legendre per dimension."""
    t, w = np.polynomial.legendre.leggauss(n_nodes)
    t, w = torch.from_numpy(t), torch.from_numpy(w)
    nodes, weights = [], []
    for e in edges:
        half = (e[1:] - e[:-1])[:, None] / 2  # (cells, 1)
        nodes.append((e[:-1, None] + half + half * t).flatten())
        weights.append(half * w)  # (cells, nodes)
    points = torch.stack([g.flatten() for g in torch.meshgrid(*nodes, indexing="ij")], dim=1)
    with torch.no_grad():
        dens = flow.log_prob(points).exp()
    shape = [s for wk in weights for s in wk.shape]  # (cells_0, nodes, cells_1, nodes, ...)
    full = torch.ones((), dtype=torch.float64)
    for wk in weights:
        full = full[..., None, None] * wk
    return (dens.reshape(shape) * full).sum(dim=tuple(range(1, 2 * len(edges), 2)))


def _chi_square(
    x: Tensor, edges: list[Tensor], masses: Tensor, min_expected: float = 5.0
) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom of the counts of ``x`` in the grid cells (plus
    one cell for everything outside the grid) against the expected ``len(x) * masses``; cells
    expecting fewer than ``min_expected`` samples are pooled into one."""
    n = x.shape[0]
    observed = torch.histogramdd(x, bins=edges).hist.flatten()
    expected = n * masses.flatten()
    observed = torch.cat([observed, (n - observed.sum())[None]])
    expected = torch.cat([expected, (n - expected.sum())[None]])
    small = expected < min_expected
    if small.any():
        observed = torch.cat([observed[~small], observed[small].sum()[None]])
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
    stat = ((observed - expected).square() / expected).sum().item()
    return stat, expected.numel() - 1


def _chi_square_sf(stat: float, dof: int) -> float:
    """Upper tail probability of the chi-square distribution with ``dof`` degrees of freedom."""
    return torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2)).item()


SAMPLING_CASES = {
    "realnvp-1d": lambda: _perturbed("realnvp", 1),
    "planar-1d": lambda: _perturbed("planar", 1),
    "realnvp-2d": lambda: _perturbed("realnvp", 2),
    "nice-2d": lambda: _perturbed("nice", 2),
    "iaf-2d": lambda: _perturbed("iaf", 2),
    "maf-2d-trained": _trained_maf,
}


@pytest.mark.parametrize("case", SAMPLING_CASES)
def test_sampling_matches_density(case):
    """Histogram counts of ``sample`` and ``rsample_and_log_prob`` draws (for MAF: the no-grad
    and the autograd inverse) agree with the cell probabilities from integrating
    ``exp(log_prob)``; wrong samplers fail the same criterion."""
    torch.manual_seed(0)
    flow = SAMPLING_CASES[case]()
    n, cells = 20_000, 40 if flow.dim == 1 else 12
    # The grid spans the central 99% of each coordinate of a pilot sample (any fixed grid would do).
    with torch.no_grad():
        pilot = flow.sample(4000)
    q = torch.quantile(pilot, torch.tensor([0.005, 0.995], dtype=torch.float64), dim=0)
    edges = [
        torch.linspace(q[0, k].item(), q[1, k].item(), cells + 1, dtype=torch.float64)
        for k in range(flow.dim)
    ]
    masses = _cell_masses(flow, edges)
    inside = masses.sum().item()
    assert (masses >= 0).all() and 0.95 < inside < 1.0, f"the grid holds {inside:.4f} of the density's mass"

    torch.manual_seed(1)
    x = flow.sample(n)
    x_r, _ = flow.rsample_and_log_prob(n)
    for draws in (x, x_r.detach()):
        stat, dof = _chi_square(draws, edges, masses)
        assert dof >= 30, "too few populated cells for a meaningful comparison"
        assert _chi_square_sf(stat, dof) > 1e-4, f"chi-square {stat:.1f} on {dof} degrees of freedom"

    # The criterion has power: each of these samplers is rejected overwhelmingly.
    with torch.no_grad():
        z = flow.base.sample(n)
        wrong = {
            "shifted by 0.5": x + 0.5,
            "scaled by 1.1": x * 1.1,
            "forward used as inverse": flow.transform(z)[0],
            "base samples": z,
        }
    for what, draws in wrong.items():
        stat, dof = _chi_square(draws, edges, masses)
        assert _chi_square_sf(stat, dof) < 1e-12, f"{what}: chi-square {stat:.1f} on {dof} degrees of freedom"


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
