"""GRU-ODE-Bayes: masked emissions, lockstep integration, filtering/prediction, learning."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from conftest import perturb

from ctflow import Forecaster
from ctflow.data import (
    IrregularBatch,
    from_dataframe,
    iterate_batches,
    load_double_ou,
    split_series,
    to_dataframe,
    truncate,
)
from ctflow.dynamics import GRUODECell
from ctflow.models import GRUODEBayes
from ctflow.models.emissions import EMISSIONS, GaussianEmission, LastValueEmission, make_emission
from ctflow.models.settings import GRUODEBayesSettings
from ctflow.ode import SolverOptions, integrate_intervals

# ---------------------------------------------------------------- emissions over observed subsets


@pytest.mark.parametrize("name", list(EMISSIONS))
@pytest.mark.parametrize("observed", [0, 1])
def test_single_observed_variable_density_integrates_to_one(name, observed):
    torch.manual_seed(0)
    em = perturb(make_emission(name, 2, 3).double(), 0.2)
    ctx = torch.randn(1, 3, dtype=torch.float64)
    t = torch.linspace(-40, 40, 16001, dtype=torch.float64)
    y = torch.zeros(t.numel(), 2, dtype=torch.float64)
    y[:, observed] = t
    y[:, 1 - observed] = 123.0  # the unobserved value must not matter
    mask = torch.zeros_like(y)
    mask[:, observed] = 1
    with torch.no_grad():
        dens = em.log_prob(y, mask, ctx.expand(t.numel(), 3)).exp()
    assert torch.trapezoid(dens, t).item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("name", list(EMISSIONS))
def test_joint_density_integrates_to_one(name):
    torch.manual_seed(1)
    em = perturb(make_emission(name, 2, 3).double(), 0.1)
    ctx = torch.randn(1, 3, dtype=torch.float64)
    g = torch.linspace(-15, 15, 401, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    y = torch.stack([xx.flatten(), yy.flatten()], 1)
    with torch.no_grad():
        dens = em.log_prob(y, torch.ones_like(y), ctx.expand(y.shape[0], 3)).exp().view(401, 401)
        outside = (em.sample(ctx, 20_000).abs().amax(-1) > 15).double().mean().item()
    assert torch.trapezoid(torch.trapezoid(dens, g, dim=1), g).item() + outside == pytest.approx(
        1.0, abs=0.01
    )


def test_gaussian_observed_subset_is_the_marginal_of_the_joint():
    em = perturb(GaussianEmission(3, 4).double(), 0.3)
    ctx = torch.randn(5, 4, dtype=torch.float64)
    y = torch.randn(5, 3, dtype=torch.float64)
    mu, log_var = em.params(ctx)
    mask = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64).expand(5, 3)
    joint = torch.distributions.MultivariateNormal(mu, torch.diag_embed(log_var.exp()))
    idx = torch.tensor([0, 2])
    marginal = torch.distributions.MultivariateNormal(mu[:, idx], torch.diag_embed(log_var.exp()[:, idx]))
    torch.testing.assert_close(em.log_prob(y, mask, ctx), marginal.log_prob(y[:, idx]))
    torch.testing.assert_close(em.log_prob(y, torch.ones_like(y), ctx), joint.log_prob(y))


@pytest.mark.parametrize("name", list(EMISSIONS))
def test_emission_samples_match_density(name):
    """Joint samples have the mean and variance of the joint density (computed on a grid)."""
    torch.manual_seed(2)
    em = perturb(make_emission(name, 2, 3).double(), 0.1)
    ctx = torch.randn(1, 3, dtype=torch.float64)
    g = torch.linspace(-12, 12, 481, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    y = torch.stack([xx.flatten(), yy.flatten()], 1)
    with torch.no_grad():
        s = em.sample(ctx, 40_000)[:, 0, 0]
        dens = em.log_prob(y, torch.ones_like(y), ctx.expand(y.shape[0], 3)).exp().view(481, 481)
    marginal = torch.trapezoid(dens, g, dim=1)
    marginal = marginal / torch.trapezoid(marginal, g)
    mean = torch.trapezoid(marginal * g, g)
    var = torch.trapezoid(marginal * (g - mean) ** 2, g)
    assert abs(s.mean() - mean) < 4 * math.sqrt(var / s.numel()) + 2e-3
    assert s.var().item() == pytest.approx(var.item(), rel=0.05)


def test_unknown_emission():
    with pytest.raises(ValueError, match="gaussian"):
        make_emission("poisson", 2, 3)


# ---------------------------------------------------------------- lockstep integration


@pytest.mark.parametrize(
    "options",
    [
        SolverOptions(method="euler", step_size=0.01),
        SolverOptions(method="rk4", step_size=0.1),
        SolverOptions(method="dopri5", rtol=1e-8, atol=1e-8),
    ],
)
def test_lockstep_equals_integrating_each_series_alone(options):
    torch.manual_seed(0)
    cell = perturb(GRUODECell(8).double(), 0.5)
    h = torch.randn(6, 8, dtype=torch.float64).tanh()
    dt = torch.tensor([0.0, 0.3, 1.7, 0.05, 2.5, 1.0], dtype=torch.float64)
    together = integrate_intervals(cell, h, dt, options)
    reference = SolverOptions(method="dopri5", rtol=1e-10, atol=1e-10)
    n_steps = None if options.method == "dopri5" else math.ceil(2.5 / options.step_size)
    for b in range(6):
        # Same discretisation, one series at a time: rows do not interact (adaptive steps are
        # chosen for the whole batch, so there the two agree to the solver tolerance).
        alone = integrate_intervals(cell, h[b : b + 1], dt[b : b + 1], options, n_steps=n_steps)
        torch.testing.assert_close(together[b], alone[0], atol=1e-9 if n_steps else 1e-6, rtol=0)
        # Each row is a faithful solution over that series' own interval (Euler: first order).
        exact = integrate_intervals(cell, h[b : b + 1], dt[b : b + 1], reference)
        tol = 2e-3 if options.method == "euler" else 1e-5
        torch.testing.assert_close(together[b], exact[0], atol=tol, rtol=0)
    torch.testing.assert_close(together[0], h[0])  # zero interval: unchanged


def _toy_batch(n_series: int = 40, seed: int = 0) -> IrregularBatch:
    return from_dataframe(load_double_ou(n_series, seed=seed), dtype=torch.float64)


def test_filter_matches_a_model_run_series_by_series():
    torch.manual_seed(0)
    batch = _toy_batch(12)
    model = perturb(GRUODEBayes(2, 16, 8, 8, solver={"method": "rk4", "step_size": 0.25}).double(), 0.1)
    together = model.filter(batch)
    for b in range(len(batch)):
        alone = model.filter(batch.select([b], trim=True))
        torch.testing.assert_close(together.h[b], alone.h[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(together.time[b], alone.time[0])


def test_prediction_is_the_pre_jump_density_of_the_loss():
    """Filtering a prefix and predicting the next time gives the density the loss scores."""
    torch.manual_seed(0)
    batch = _toy_batch(8)
    solver = {"method": "rk4", "step_size": 0.1}  # batch-independent to ~1e-6
    model = perturb(GRUODEBayes(2, 16, 8, 8, post_jump_weight=0.0, solver=solver).double(), 0.1)
    context, target = truncate(batch, 4.0)
    pred = model.predict(model.filter(context), target.times[:, :1])
    lp = pred.log_prob(target.values[:, :1], target.mask[:, :1])
    # The same quantity through the loss: NLL of a batch made of context + the first target row.
    joined = from_dataframe(pd.concat([to_dataframe(context), to_dataframe(target)]), dtype=torch.float64)
    nll_all, _ = model.nll_terms(joined)
    nll_context, _ = model.nll_terms(context)
    torch.testing.assert_close(-lp.sum(), nll_all - nll_context, atol=1e-5, rtol=0)


def test_predict_and_sample_paths_shapes_and_errors():
    torch.manual_seed(0)
    batch = _toy_batch(5)
    model = GRUODEBayes(2, 16, 8, 8, emission="mixlogistic")
    state = model.filter(batch)
    times = state.time.unsqueeze(1) + torch.tensor([[0.5, 1.0, 2.0]], dtype=torch.float64)
    pred = model.predict(state, times)
    assert pred.mean(64).shape == (5, 3, 2)
    assert pred.quantile(0.9, 200).shape == (5, 3, 2)
    paths = model.sample_paths(state, times, 7)
    assert paths.shape == (7, 5, 3, 2) and torch.isfinite(paths).all()
    with pytest.raises(ValueError, match="precede"):
        model.predict(state, state.time.unsqueeze(1) - 1.0)
    with pytest.raises(ValueError, match="shape"):
        model.predict(state, times[:2])


def test_sample_paths_are_joint():
    """Paths are conditioned on their own past: consecutive values correlate across paths."""
    torch.manual_seed(0)
    batch = _toy_batch(1)
    model = perturb(GRUODEBayes(2, 16, 8, 8), 0.4)
    state = model.filter(batch)
    times = state.time.unsqueeze(1) + torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    with torch.no_grad():
        paths = model.sample_paths(state, times, 4000)[:, 0]  # (n, Q, D)
    marginal = model.predict(state, times).sample(4000)[:, 0]
    corr_paths = torch.corrcoef(torch.stack([paths[:, 0, 0], paths[:, 1, 0]]))[0, 1]
    corr_marginal = torch.corrcoef(torch.stack([marginal[:, 0, 0], marginal[:, 1, 0]]))[0, 1]
    assert abs(corr_marginal) < 0.1
    assert abs(corr_paths) > abs(corr_marginal) + 0.05


# ---------------------------------------------------------------- learning


@pytest.mark.parametrize("emission", ["gaussian", "mixlogistic"])
def test_fitted_model_beats_constant_mean_baseline(emission):
    torch.manual_seed(0)
    data = from_dataframe(load_double_ou(600, seed=3))
    train, val = split_series(data, 0.25, seed=0)
    model = GRUODEBayes(2, 32, 16, 16, emission=emission, solver={"method": "euler", "step_size": 0.5})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        for b in iterate_batches(train, 50, shuffle=True, generator=gen):
            opt.zero_grad()
            model.loss(b).backward()
            opt.step()
    context, target = truncate(val, 4.0)
    y, m = target.values[:, 0], target.mask[:, 0]
    with torch.no_grad():
        nll_model = (
            -model.predict(model.filter(context), target.times[:, :1]).log_prob(y[:, None], m[:, None]).sum()
        )
    # Constant-mean baseline: per-variable Gaussian fitted on all training values.
    tv, tm = train.values.flatten(0, 1), train.mask.flatten(0, 1)
    mu = (tv * tm).sum(0) / tm.sum(0)
    sd = (((tv - mu) ** 2 * tm).sum(0) / tm.sum(0)).sqrt()
    nll_base = -(torch.distributions.Normal(mu, sd).log_prob(y) * m).sum()
    assert nll_model / m.sum() < nll_base / m.sum() - 0.5


# ---------------------------------------------------------------- carrying last values forward


def _carry_context(h: torch.Tensor, last: torch.Tensor, seen: torch.Tensor, elapsed: torch.Tensor):
    return torch.cat([h, last * seen, seen, torch.log1p(elapsed) * seen], dim=-1)


@pytest.mark.parametrize("name", list(EMISSIONS))
def test_last_value_emission_is_the_inner_density_of_the_change(name):
    torch.manual_seed(0)
    inner = perturb(make_emission(name, 2, 3 + 6).double(), 0.2)
    em = LastValueEmission(inner)
    last = torch.tensor([[1.5, -3.0]], dtype=torch.float64)
    seen = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    ctx = _carry_context(torch.randn(1, 3, dtype=torch.float64), last, seen, torch.ones(1, 2))
    y = torch.randn(7, 2, dtype=torch.float64) + 1.5
    mask = torch.ones_like(y)
    ctx7 = ctx.expand(7, -1)
    torch.testing.assert_close(em.log_prob(y, mask, ctx7), inner.log_prob(y - last * seen, mask, ctx7))
    # A shift: the density of the observed variable still integrates to one, around the last value.
    t = torch.linspace(-38.5, 41.5, 16001, dtype=torch.float64)
    grid = torch.stack([t, torch.zeros_like(t)], 1)
    one = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand_as(grid)
    with torch.no_grad():
        dens = em.log_prob(grid, one, ctx.expand(t.numel(), -1)).exp()
        assert torch.trapezoid(dens, t).item() == pytest.approx(1.0, abs=1e-3)
        # Draws and means are the inner emission's, moved by the carried value.
        torch.manual_seed(5)
        draws = em.sample(ctx, 100)
        torch.manual_seed(5)
        torch.testing.assert_close(draws, inner.sample(ctx, 100) + last * seen)
        torch.manual_seed(6)
        mean = em.mean(ctx, 100)
        torch.manual_seed(6)
        torch.testing.assert_close(mean, inner.mean(ctx, 100) + last * seen)


def test_last_value_emission_gaussian_quantiles_are_shifted():
    inner = perturb(GaussianEmission(2, 8).double(), 0.3)
    em = LastValueEmission(inner)
    ctx = _carry_context(
        torch.randn(4, 2, dtype=torch.float64),
        torch.randn(4, 2, dtype=torch.float64),
        torch.ones(4, 2, dtype=torch.float64),
        torch.rand(4, 2, dtype=torch.float64),
    )
    shift = ctx[:, 2:4]
    torch.testing.assert_close(em.quantile(ctx, 0.3), inner.quantile(ctx, 0.3) + shift)
    with pytest.raises(ValueError, match="context_dim"):
        LastValueEmission(GaussianEmission(2, 6))


def _zero_change_model() -> GRUODEBayes:
    """A carry-forward model whose emission predicts no change: its mean is the last value."""
    model = GRUODEBayes(2, 8, 8, 8, carry_forward=True, solver={"method": "euler", "step_size": 0.1}).double()
    perturb(model, 0.2)
    with torch.no_grad():
        out = model.emission.inner.net.net[-1]
        out.weight.zero_()
        out.bias.zero_()
        out.bias[2:].fill_(-8.0)  # log-variances: changes of sd 0.02
    return model


def test_carry_forward_state_holds_each_variables_last_observation():
    torch.manual_seed(0)
    batch = _toy_batch(6)
    mask = batch.mask.clone()
    mask[:, -3:, 1] = 0  # the second variable goes unmeasured at the end of each series
    batch = IrregularBatch(batch.times, batch.values * mask, mask, batch.lengths, batch.ids, batch.variables)
    state = _zero_change_model().filter(batch)
    for b in range(len(batch)):
        n = int(batch.lengths[b])
        for d in range(2):
            rows = torch.nonzero(batch.mask[b, :n, d]).flatten()
            assert state.seen[b, d] == 1
            assert state.last[b, d] == batch.values[b, rows[-1], d]
            assert state.last_time[b, d] == batch.times[b, rows[-1]]


def test_carry_forward_with_no_change_forecasts_the_last_value():
    torch.manual_seed(0)
    batch = _toy_batch(4)
    model = _zero_change_model()
    state = model.filter(batch)
    times = state.time.unsqueeze(1) + torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    with torch.no_grad():
        pred = model.predict(state, times)
        paths = model.sample_paths(state, times, 50)
    torch.testing.assert_close(pred.mean(), state.last.unsqueeze(1).expand(4, 2, 2))
    torch.testing.assert_close(pred.quantile(0.5), state.last.unsqueeze(1).expand(4, 2, 2))
    # Paths carry their own draws forward: the second value stays within a few sd of the first.
    assert (paths[:, :, 1] - paths[:, :, 0]).abs().max() < 0.2
    assert (paths[:, :, 0] - state.last).abs().max() < 0.2


def test_carry_forward_fits_and_round_trips_in_the_forecaster(tmp_path):
    df = load_double_ou(60, seed=0)
    settings = GRUODEBayesSettings(hidden_size=8, p_hidden=8, prep_hidden=8, carry_forward=True)
    model = Forecaster(model=settings, max_epochs=2, random_state=0).fit(df)
    assert model.model_.carry_forward
    model.save(tmp_path / "m")
    loaded = Forecaster.load(tmp_path / "m")
    pd.testing.assert_frame_equal(model.predict(df, horizon=[1.0]), loaded.predict(df, horizon=[1.0]))


# ---------------------------------------------------------------- training for forecasts from a context


def test_training_cuts_leave_at_least_one_observation_of_each_series():
    model = GRUODEBayes(2, 8, forecast_cut=1.0)
    lengths = torch.tensor([0, 1, 2, 5, 9] * 200)
    cuts = model._training_cuts(lengths)
    long = lengths > 1
    assert ((cuts[long] >= 1) & (cuts[long] < lengths[long])).all()
    assert (cuts[~long] == lengths[~long]).all()
    assert set(cuts[lengths == 9].tolist()) == set(range(1, 9))
    assert GRUODEBayes(2, 8)._training_cuts(lengths) is None
    with pytest.raises(ValueError, match="forecast_cut"):
        GRUODEBayes(2, 8, forecast_cut=1.5)


@pytest.mark.parametrize("carry_forward", [False, True])
def test_cut_training_scores_the_forecast_from_the_context(carry_forward, monkeypatch):
    """After the cut, the training loss scores the predictive density of the context's state."""
    torch.manual_seed(0)
    batch = _toy_batch(5)
    solver = {"method": "rk4", "step_size": 0.1}
    model = GRUODEBayes(
        2, 16, 8, 8, post_jump_weight=0.0, solver=solver, forecast_cut=1.0, carry_forward=carry_forward
    ).double()
    perturb(model, 0.1)
    cut = 6
    monkeypatch.setattr(model, "_training_cuts", lambda lengths: torch.full_like(lengths, cut))
    model.train()
    nll_cut, _ = model.nll_terms(batch)
    model.eval()
    context = IrregularBatch(
        batch.times[:, :cut],
        batch.values[:, :cut],
        batch.mask[:, :cut],
        batch.lengths.clamp_max(cut),
        batch.ids,
        batch.variables,
    )
    nll_context, _ = model.nll_terms(context)
    rest = slice(cut, None)
    pred = model.predict(model.filter(context), batch.times[:, rest])
    lp = pred.log_prob(batch.values[:, rest], batch.mask[:, rest])
    torch.testing.assert_close(nll_cut, nll_context - lp.sum(), atol=1e-5, rtol=0)
