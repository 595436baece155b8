"""Marginal predictive quantities of the emissions: exact means, variances, CDFs, quantiles and
samples, checked against Monte Carlo, brute-force CDF inversion and the densities themselves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import linear_growth_panel

from ctflow import Forecaster
from ctflow.flows.mixture_cdf import logistic_mixture_log_cdfs
from ctflow.flows.numerics import solve_increasing
from ctflow.models.emissions import LastValueEmission, make_emission
from ctflow.models.latent_ode import MixturePredictive
from ctflow.models.settings import GRUODEBayesSettings

EMISSIONS = ["gaussian", "mixlogistic", "maf"]
N_MC = 200_000


@pytest.fixture(autouse=True)
def _no_grad(request):
    if "forecaster" in request.node.name or "predictive_log_prob" in request.node.name:  # fits need autograd
        yield
        return
    with torch.no_grad():
        yield


def _emission(name: str, dim: int = 3, context_dim: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    em = make_emission(name, dim, context_dim).double()
    # Larger weights than at initialisation, so the densities are far from a unit Gaussian.
    with torch.no_grad():
        for p in em.parameters():
            p.mul_(2.0)
    return em


def _context(n: int = 4, dim: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", EMISSIONS)
def test_mean_and_variance_match_monte_carlo_within_standard_error(name):
    em, ctx = _emission(name), _context()
    torch.manual_seed(2)
    draws = em.marginal_sample(ctx, N_MC)
    mean, var = em.mean(ctx), em.variance(ctx)
    assert mean.shape == var.shape == (4, 3)
    se_mean = (var / N_MC).sqrt()
    assert ((draws.mean(0) - mean).abs() < 5 * se_mean).all()
    # Standard error of the sample variance: sqrt((m4 - var^2) / n).
    centred = draws - mean
    se_var = ((centred.pow(4).mean(0) - var.square()) / N_MC).sqrt()
    assert ((draws.var(0) - var).abs() < 5 * se_var).all()


@pytest.mark.parametrize("name", EMISSIONS)
@pytest.mark.parametrize("level", [0.025, 0.1, 0.5, 0.9, 0.975])
def test_quantiles_invert_the_cdf_and_match_monte_carlo(name, level):
    em, ctx = _emission(name), _context()
    q = em.quantile(ctx, level)
    torch.testing.assert_close(em.cdf(q, ctx), torch.full_like(q, level), atol=1e-10, rtol=0)
    torch.manual_seed(3)
    below = (em.marginal_sample(ctx, N_MC) <= q).double().mean(0)
    se = math.sqrt(level * (1 - level) / N_MC)
    assert ((below - level).abs() < 5 * se).all()


@pytest.mark.parametrize("name", EMISSIONS)
def test_cdf_is_the_integral_of_the_marginal_density(name):
    """The CDF's derivative is the density of the variable observed alone (one-hot mask)."""
    em, ctx = _emission(name), _context(2)
    # The mixture's narrow components need a finer grid for the trapezoid rule to reach 1e-6.
    grid = torch.linspace(-12, 12, 240_001 if name == "mixlogistic" else 24_001, dtype=torch.float64)
    for d in range(3):
        mask = torch.zeros(grid.numel(), 3, dtype=torch.float64)
        mask[:, d] = 1
        y = torch.zeros(grid.numel(), 3, dtype=torch.float64)
        y[:, d] = grid
        for row in range(2):
            density = em.log_prob(y, mask, ctx[row].expand(grid.numel(), -1)).exp()
            step = float(grid[1] - grid[0])
            integral = torch.cumulative_trapezoid(density, dx=step)
            cdf = em.cdf(y[1:], ctx[row].expand(grid.numel() - 1, -1))[:, d]
            offset = em.cdf(y[:1], ctx[row : row + 1])[0, d]
            np.testing.assert_allclose((integral + offset).numpy(), cdf.numpy(), atol=1e-6)


def test_mixture_quantiles_equal_brute_force_grid_inversion():
    """A coarse grid finds the cell holding the level, a fine grid in it interpolates."""
    em, ctx = _emission("mixlogistic", seed=4), _context(3, seed=5)
    log_w, means, log_s = em.mixture(ctx)

    def cdf(x, b, d):
        return logistic_mixture_log_cdfs(x, log_w[b, d], means[b, d], log_s[b, d])[0].exp().numpy()

    coarse = torch.linspace(-60, 60, 12_001, dtype=torch.float64)
    for level in (0.01, 0.1, 0.37, 0.5, 0.9, 0.99):
        q = em.quantile(ctx, level)
        for b in range(3):
            for d in range(3):
                i = int(np.searchsorted(cdf(coarse, b, d), level))
                fine = torch.linspace(float(coarse[i - 1]), float(coarse[i]), 10_001, dtype=torch.float64)
                brute = np.interp(level, cdf(fine, b, d), fine.numpy())
                assert abs(float(q[b, d]) - brute) < 1e-5


def test_mixture_moments_are_the_closed_form_of_the_mixture():
    em, ctx = _emission("mixlogistic"), _context()
    log_w, means, log_s = em.mixture(ctx)
    w, s = log_w.exp(), log_s.exp()
    # Numerical integration of y and y^2 against the mixture density.
    grid = torch.linspace(-80, 80, 400_001, dtype=torch.float64)
    u = (grid.view(-1, 1, 1, 1) - means) / s
    density = (w * torch.sigmoid(u) * torch.sigmoid(-u) / s).sum(-1)
    m1 = torch.trapezoid(grid.view(-1, 1, 1) * density, grid, dim=0)
    m2 = torch.trapezoid(grid.view(-1, 1, 1).square() * density, grid, dim=0)
    torch.testing.assert_close(em.mean(ctx), m1, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(em.variance(ctx), m2 - m1.square(), atol=1e-6, rtol=1e-6)


def test_mixture_sampling_needs_no_inversion_and_matches_the_cdf():
    """Samples from the component-then-inverse-CDF draw follow the mixture CDF (KS distance)."""
    em, ctx = _emission("mixlogistic"), _context(1)
    torch.manual_seed(6)
    draws = em.sample(ctx, 50_000)[:, 0]  # (n, dim)
    for d in range(3):
        x = draws[:, d].sort().values
        cdf = em.cdf(torch.stack([x] * 3, -1), ctx.expand(x.numel(), -1))[:, d]
        ecdf = torch.arange(1, x.numel() + 1, dtype=torch.float64) / x.numel()
        assert float((cdf - ecdf).abs().max()) < 1.63 / math.sqrt(x.numel())  # KS at 1%


def test_maf_marginal_is_the_density_under_the_one_hot_mask():
    em, ctx = _emission("maf"), _context(6)
    mu, log_var = em.marginal_params(ctx)
    y = torch.randn(6, 3, dtype=torch.float64)
    for d in range(3):
        mask = torch.zeros(6, 3, dtype=torch.float64)
        mask[:, d] = 1
        ref = torch.distributions.Normal(mu[:, d], (0.5 * log_var[:, d]).exp()).log_prob(y[:, d])
        torch.testing.assert_close(em.log_prob(y, mask, ctx), ref)


def test_maf_auxiliary_term_scores_one_variable_of_rows_with_several():
    em, ctx = _emission("maf"), _context(5)
    y = torch.randn(5, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [0, 1, 1], [1, 1, 0]], dtype=torch.float64)
    torch.manual_seed(0)
    aux = em.auxiliary_nll(y, mask, ctx)
    assert aux[1] == 0 and aux[2] == 0
    # Every other row's term is the NLL of exactly one of its observed variables alone.
    for row in (0, 3, 4):
        alone = []
        for d in torch.nonzero(mask[row]).flatten().tolist():
            one = torch.zeros(1, 3, dtype=torch.float64)
            one[0, d] = 1
            alone.append(float(-em.log_prob(y[row : row + 1], one, ctx[row : row + 1])))
        assert min(abs(float(aux[row]) - a) for a in alone) < 1e-10
    assert (make_emission("gaussian", 3, 5).auxiliary_nll(y.float(), mask.float(), ctx.float()) == 0).all()


@pytest.mark.parametrize("name", EMISSIONS)
def test_carry_forward_wrapper_shifts_every_marginal_quantity(name):
    inner = _emission(name, dim=2, context_dim=9)
    em = LastValueEmission(inner)
    ctx = _context(4, dim=9)
    ctx[:, -4:-2] = 1.0  # seen
    shift = em.shift(ctx)
    assert shift.abs().sum() > 0
    torch.testing.assert_close(em.mean(ctx), inner.mean(ctx) + shift)
    torch.testing.assert_close(em.variance(ctx), inner.variance(ctx))
    torch.testing.assert_close(em.quantile(ctx, 0.3), inner.quantile(ctx, 0.3) + shift)
    y = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(em.cdf(y, ctx), inner.cdf(y - shift, ctx))
    torch.manual_seed(0)
    a = em.marginal_sample(ctx, 3)
    torch.manual_seed(0)
    torch.testing.assert_close(a, inner.marginal_sample(ctx, 3) + shift)


@pytest.mark.parametrize("name", EMISSIONS)
def test_particle_mixture_quantiles_and_variance(name):
    em = _emission(name, dim=2, context_dim=4)
    h = torch.randn(16, 3, 2, 4, dtype=torch.float64)  # (particles, B, Q, L)
    pred = MixturePredictive(em, h)
    for level in (0.05, 0.5, 0.95):
        q = pred.quantile(level)
        assert q.shape == (3, 2, 2)
        torch.testing.assert_close(pred.cdf(q), torch.full_like(q, level), atol=1e-9, rtol=0)
    torch.manual_seed(1)
    draws = pred.sample(200_000)
    var = pred.variance()
    assert ((draws.mean(0) - pred.mean()).abs() < 5 * (var / 200_000).sqrt()).all()
    torch.testing.assert_close(draws.var(0), var, rtol=0.03, atol=1e-3)


def test_solver_stops_at_the_float_resolution():
    calls = []

    def g(v):
        calls.append(1)
        return v.pow(3) + v

    target = torch.linspace(-5, 5, 11)
    root = solve_increasing(
        g, lambda v: 3 * v.square() + 1, target, torch.full_like(target, -10), torch.full_like(target, 10)
    )
    torch.testing.assert_close(g(root), target, atol=1e-5, rtol=1e-5)
    # 20 wide, float32 resolution at magnitude 10: about 25 halvings (not a fixed 50).
    assert len(calls) <= 30
    calls.clear()
    root64 = solve_increasing(
        g, None, target.double(), -10 * torch.ones(11).double(), 10 * torch.ones(11).double()
    )
    torch.testing.assert_close(g(root64), target.double(), atol=1e-12, rtol=0)
    assert len(calls) <= 60


# GRU-ODE-Bayes filters deterministically; a latent model's predictive is a new particle mixture
# at every call, so its quantiles are checked against its own draws above.
@pytest.mark.parametrize("emission", ["mixlogistic", "maf"])
def test_forecaster_quantiles_are_exact_and_agree_with_samples(emission):
    df = linear_growth_panel()
    model = GRUODEBayesSettings(emission=emission, hidden_size=8, p_hidden=8)
    est = Forecaster(model=model, max_steps=20, eval_every=10, random_state=0)
    est.fit(df)
    q = est.predict_quantiles(df, horizon=[1.0, 2.0], quantiles=(0.1, 0.5, 0.9))
    assert list(q.columns[2:]) == ["a_q10", "a_q50", "a_q90", "b_q10", "b_q50", "b_q90"]
    assert (q["a_q10"] < q["a_q50"]).all() and (q["a_q50"] < q["a_q90"]).all()
    # The same quantiles from many marginal draws, within Monte Carlo error.
    fc = est.forecast(df, horizon=[1.0, 2.0], n_samples=10_000, seed=1)
    mc = fc.quantile([0.1, 0.5, 0.9])
    spread = (q["a_q90"] - q["a_q10"]).to_numpy()
    for col in ("a_q10", "a_q50", "a_q90"):
        assert np.all(np.abs(q[col].to_numpy() - mc[col].to_numpy()) < 0.05 * spread + 1e-6)
    table = est.predict_table(df, horizon=[1.0, 2.0], quantiles=(0.1, 0.9))
    assert list(table.columns) == list(fc.to_frame(quantiles=(0.1, 0.9)).columns)
    rows_a = (table["variable"] == "a").to_numpy()
    np.testing.assert_allclose(table.loc[rows_a, "q10"], q["a_q10"])
    np.testing.assert_allclose(table.loc[rows_a, "mean"], est.predict(df, horizon=[1.0, 2.0])["a"])
    iv = est.predict_interval(df, horizon=[1.0, 2.0], coverage=(0.8,))
    np.testing.assert_allclose(iv["a_lower_80"], q["a_q10"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(iv["b_upper_80"], q["b_q90"], rtol=1e-6, atol=1e-6)
    # Means are exact too: they agree with the draws' average.
    mean = est.predict(df, horizon=[1.0, 2.0])
    sd = (q["a_q90"] - q["a_q10"]).to_numpy() / 2.56
    assert np.all(
        np.abs(mean["a"].to_numpy() - fc.samples[:, :, 0].mean(0)) < 5 * sd / math.sqrt(10_000) + 1e-6
    )


@pytest.fixture(scope="module")
def fitted_mixture():
    df = linear_growth_panel(seed=3)
    model = GRUODEBayesSettings(emission="mixlogistic", hidden_size=8, p_hidden=8)
    return df, Forecaster(model=model, max_steps=30, eval_every=30, random_state=0).fit(df)


def test_predictive_log_prob_integrates_to_one_in_data_units(fitted_mixture):
    """The density of one variable at one query, over a grid of its values in the data's units."""
    df, est = fitted_mixture
    last = df.groupby("unique_id")["ds"].max()
    mean = est.predict(df, horizon=[1.0])
    centre, grid = float(mean["a"].iloc[0]), np.linspace(-40, 40, 8001)
    targets = pd.DataFrame(
        {"unique_id": last.index[0], "ds": last.iloc[0] + 1.0, "a": centre + grid, "b": np.nan}
    )
    density = np.exp(est.predictive_log_prob(df, targets))
    assert abs(np.trapezoid(density, centre + grid) - 1.0) < 1e-4


def test_predictive_log_prob_sums_over_observed_variables_and_matches_the_gaussian(fitted_mixture):
    df, _ = fitted_mixture
    model = GRUODEBayesSettings(hidden_size=8, p_hidden=8)
    est = Forecaster(model=model, max_steps=30, eval_every=30, random_state=0).fit(df)
    last = df.groupby("unique_id")["ds"].max()
    targets = pd.DataFrame({"unique_id": last.index, "ds": last.to_numpy() + 0.5})
    mean = est.predict(df, times=targets)
    q = est.predict_quantiles(df, times=targets, quantiles=(0.8413447460685429,))
    targets["a"], targets["b"] = mean["a"].to_numpy() + 0.3, np.nan
    sd = q["a_q84.1345"].to_numpy() - mean["a"].to_numpy()
    expected = -0.5 * (0.3 / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)
    np.testing.assert_allclose(est.predictive_log_prob(df, targets), expected, rtol=1e-4, atol=1e-4)
    # A second observed variable adds its own term; a row with none scores 0.
    both = targets.assign(b=mean["b"].to_numpy())
    assert (est.predictive_log_prob(df, both) != est.predictive_log_prob(df, targets)).all()
    empty = targets.assign(a=np.nan)
    np.testing.assert_array_equal(est.predictive_log_prob(df, empty), 0.0)


def test_predictive_log_prob_rejects_bad_targets(fitted_mixture):
    df, est = fitted_mixture
    last = df.groupby("unique_id")["ds"].max()
    targets = pd.DataFrame({"unique_id": last.index, "ds": last.to_numpy() + 1.0, "a": 0.0, "b": 0.0})
    with pytest.raises(ValueError, match="no column"):
        est.predictive_log_prob(df, targets.drop(columns="b"))
    with pytest.raises(TypeError, match="numeric"):
        est.predictive_log_prob(df, targets.assign(a="x"))
    with pytest.raises(ValueError, match="not after its last observation"):
        est.predictive_log_prob(df, targets.assign(ds=last.to_numpy()))
