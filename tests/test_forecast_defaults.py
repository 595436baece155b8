"""What the default Forecaster rests on: held-out last rows, step budgets, features that start
from persistence, the validation report, and a default fit that beats persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ctflow import Forecaster
from ctflow.baselines import LastValueBaseline
from ctflow.data import IrregularBatch, from_dataframe, holdout_last
from ctflow.metrics import crps_samples
from ctflow.models import GRUODEBayes
from ctflow.models.emissions import GaussianEmission
from ctflow.models.settings import GRUODEBayesSettings, LatentODESettings, LatentSDESettings
from ctflow.ode import SolverOptions, fixed_step_plan, integrate, integrate_intervals
from ctflow.trainer import data_order
from ctflow.training import evaluate_forecast_nll, fit_model


def ragged_batch(lengths: list[int], n_variables: int = 1, seed: int = 0) -> IrregularBatch:
    rng = np.random.default_rng(seed)
    rows = []
    for b, n in enumerate(lengths):
        times = np.cumsum(rng.uniform(0.5, 1.5, n))
        for t in times:
            rows.append({"unique_id": b, "ds": t, **{f"y{d}": rng.normal() for d in range(n_variables)}})
    return from_dataframe(pd.DataFrame(rows))


def growth_curves(n_series: int, seed: int) -> pd.DataFrame:
    """Logistic growth with a rate and an asymptote per series, 8-12 visits at irregular times."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_series):
        rate, top = rng.uniform(0.3, 0.6), rng.uniform(8.0, 12.0)
        times = np.sort(rng.uniform(0.0, 12.0, rng.integers(8, 13)))
        size = top / (1.0 + np.exp(-rate * (times - 5.0))) + rng.normal(0.0, 0.1, len(times))
        rows += [{"unique_id": f"s{i}", "ds": t, "size": y} for t, y in zip(times, size, strict=True)]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- held-out last rows


def test_holdout_last_keeps_prefixes_and_holds_out_tails():
    batch = ragged_batch([10, 5, 2, 3])
    context, target, has_target = holdout_last(batch, 0.2)
    assert context.lengths.tolist() == [8, 4, 2, 2]
    assert target.lengths.tolist() == [2, 1, 0, 1]
    assert has_target.tolist() == [True, True, False, True]
    for b, n in enumerate(batch.lengths.tolist()):
        k = int(context.lengths[b])
        torch.testing.assert_close(context.times[b, :k], batch.times[b, :k])
        m = int(target.lengths[b])
        torch.testing.assert_close(target.values[b, :m], batch.values[b, k:n])
        torch.testing.assert_close(target.times[b, :m], batch.times[b, k:n])
        assert target.mask[b, m:].sum() == 0


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, "0.2"])
def test_holdout_last_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError, match="fraction"):
        holdout_last(ragged_batch([4]), fraction)


# ---------------------------------------------------------------- training by steps


def test_data_order_never_repeats_a_series_within_a_batch():
    generator = torch.Generator().manual_seed(0)
    order = data_order(5, 3, 8, generator)  # 5 series, batches of 4: two batches per pass
    assert len(order) == 24
    for i in range(0, len(order), 4):
        batch = order[i : i + 4]
        batch = batch[batch >= 0]
        assert len(set(batch.tolist())) == len(batch)
    for p in range(3):
        part = order[8 * p : 8 * (p + 1)]
        assert sorted(part[part >= 0].tolist()) == list(range(5))


def test_eval_every_sets_the_rounds_whatever_the_data_size():
    torch.manual_seed(0)
    batch = ragged_batch([6, 7, 5])
    model = GRUODEBayes(1, hidden_size=4, p_hidden=4, prep_hidden=4)
    calls = []

    def validate() -> float:
        calls.append(1)
        return float(len(calls))  # never improves after the first round

    hist = fit_model(
        model, batch, epochs=100, max_steps=25, eval_every=10, batch_size=2, validate=validate, seed=0
    )
    assert hist["n_steps"] == 25 and hist["stop_reason"] == "max_steps"
    assert len(hist["val_loss"]) == len(calls) == 3  # rounds of 10, 10 and 5 steps
    assert hist["best_epoch"] == 0
    with pytest.raises(ValueError, match="either val or validate"):
        fit_model(model, batch, batch, validate=validate, max_steps=2)


def test_forecast_nll_is_the_marginal_predictive_density_of_the_targets():
    torch.manual_seed(1)
    batch = ragged_batch([6, 4, 5], n_variables=2)
    context, target, has_target = holdout_last(batch, 0.4)
    context, target = context.select(has_target.numpy()), target.select(has_target.numpy())
    model = GRUODEBayes(2, hidden_size=6, p_hidden=6, prep_hidden=4, carry_forward=True, trend=True).eval()
    with torch.no_grad():
        log_prob = model.predict(model.filter(context), target.times).log_prob(target.values, target.mask)
    expected = -float(log_prob.sum()) / float(target.mask.sum())
    assert evaluate_forecast_nll(model, context, target) == pytest.approx(expected, rel=1e-6)
    # In chunks the lockstep solver's step grid differs slightly.
    assert evaluate_forecast_nll(model, context, target, batch_size=2) == pytest.approx(expected, rel=1e-3)


# ---------------------------------------------------------------- what the model starts from


def test_trend_features_are_the_running_mean_and_least_squares_line():
    frame = pd.DataFrame({"unique_id": 0, "ds": [0.0, 1.0, 3.0], "y": [1.0, 3.0, 7.0]})  # y = 2t + 1
    batch = from_dataframe(frame)
    model = GRUODEBayes(1, hidden_size=3, p_hidden=3, prep_hidden=2, carry_forward=True, trend=True)
    with torch.no_grad():
        state = model.filter(batch)
        sums = state.sums[0, 0]
        torch.testing.assert_close(sums, torch.tensor([3.0, 4.0, 11.0, 10.0, 24.0]))
        h = state.h.unsqueeze(1)
        context = model.context(h, state, torch.tensor([[5.0]]))[0, 0]
    to_mean, to_line, log_count = context[3:6]  # after h (3 columns)
    assert to_mean.item() == pytest.approx(11 / 3 - 7)
    assert to_line.item() == pytest.approx(11.0 - 7.0)  # the line at t = 5, minus the last value
    assert log_count.item() == pytest.approx(np.log(4.0))
    last, seen, elapsed = context[6:]
    assert (last.item(), seen.item(), elapsed.item()) == (7.0, 1.0, pytest.approx(np.log(3.0)))


def test_trend_needs_carry_forward():
    with pytest.raises(ValueError, match="carry_forward"):
        GRUODEBayes(1, carry_forward=False, trend=True)


def test_linear_skip_emission_starts_as_persistence_with_unit_spread():
    torch.manual_seed(0)
    batch = ragged_batch([5, 3], n_variables=2)
    model = GRUODEBayes(
        2, hidden_size=5, carry_forward=True, trend=True, emission_options={"linear_skip": True}
    )
    assert isinstance(model.emission.inner, GaussianEmission)
    with torch.no_grad():
        state = model.filter(batch)
        pred = model.predict(state, state.time.unsqueeze(1) + torch.tensor([[0.5, 2.0]]))
        torch.testing.assert_close(pred.mean(), state.last.unsqueeze(1).expand(2, 2, 2))
        spread = pred.quantile(0.8413447) - pred.mean()
    torch.testing.assert_close(spread, torch.ones_like(spread), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- the estimator


def test_validation_report_compares_the_model_with_persistence():
    df = growth_curves(12, seed=3)
    model = GRUODEBayesSettings(hidden_size=8, p_hidden=8, prep_hidden=4)
    est = Forecaster(model=model, max_steps=40, eval_every=20, random_state=0)
    est.fit(df)
    report = est.validation_report_
    for key in ("model_crps", "model_nll", "model_coverage_80", "persistence_crps", "persistence_nll"):
        assert np.isfinite(report[key])
    assert report["crps_ratio"] == pytest.approx(report["model_crps"] / report["persistence_crps"])
    assert report["n_series"] == round(0.3 * 12)
    # The refit saw every row: its steps are those chosen on the held-out rows.
    selection = est.history_["selection"]
    assert est.history_["n_steps"] == (selection["best_epoch"] + 1) * 20


def test_validation_schemes_and_bad_values():
    df = growth_curves(8, seed=4)
    common = {"model": {"name": "gru_ode_bayes", "hidden_size": 4, "p_hidden": 4, "prep_hidden": 2}}
    common.update(max_steps=6, eval_every=3)
    series = Forecaster(validation="series", random_state=0, **common).fit(df)
    assert series.validation_report_ is None and len(series.history_["val_loss"]) == 2
    plain = Forecaster(val_fraction=0.0, random_state=0, **common).fit(df)
    assert plain.validation_report_ is None and plain.history_["n_steps"] == 6
    with pytest.raises(ValueError, match="validation must be one of"):
        Forecaster(validation="tail").fit(df)
    with pytest.raises(ValueError, match="max_steps or max_epochs"):
        Forecaster(max_steps=None, max_epochs=None).fit(df)
    with pytest.raises(ValueError, match="eval_every"):
        Forecaster(eval_every=0).fit(df)
    with pytest.raises(ValueError, match=r"weight_decay must be 'auto' or a finite number >= 0, got -0\.1"):
        Forecaster(weight_decay=-0.1).fit(df)
    with pytest.raises(ValueError, match="weight_decay must be 'auto' or a finite number >= 0, got 'l2'"):
        Forecaster(weight_decay="l2").fit(df)


def test_fit_runs_on_n_threads_and_restores_torch_setting(monkeypatch):
    seen = []
    real = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    df = growth_curves(6, seed=6)
    model = {"name": "gru_ode_bayes", "hidden_size": 4, "p_hidden": 4}
    common = {"model": model, "max_steps": 3, "val_fraction": 0.0, "random_state": 0}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        Forecaster(**common).fit(df)
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        Forecaster(n_threads=None, **common).fit(df)
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="n_threads must be a positive int, got 0"):
        Forecaster(n_threads=0).fit(df)


def test_automatic_weight_decay_is_a_prior_that_fades_with_the_data():
    small, large = ragged_batch([10] * 12), ragged_batch([50] * 400, n_variables=2)
    est = Forecaster()
    assert est.weight_decay == "auto"
    assert est._weight_decay(small) == pytest.approx(1 / 120)
    assert est._weight_decay(large) == pytest.approx(1e-4)  # 40,000 values: the floor
    assert Forecaster(weight_decay=0.0)._weight_decay(small) == 0.0
    # A fit on few values ends nearer its start (zero-initialised emission maps) than without it.
    df = growth_curves(8, seed=5)
    model = {"name": "gru_ode_bayes", "hidden_size": 8, "p_hidden": 8}
    common = {"model": model, "max_steps": 60, "val_fraction": 0.0, "random_state": 0}
    norms = [
        torch.cat(
            [p.flatten() for p in Forecaster(weight_decay=wd, **common).fit(df).model_.emission.parameters()]
        )
        .norm()
        .item()
        for wd in ("auto", 0.0)
    ]
    assert norms[0] < norms[1]


def test_default_forecaster_beats_persistence_on_growth_curves():
    train, test = growth_curves(40, seed=0), growth_curves(20, seed=1)
    rank = test.groupby("unique_id").cumcount()
    size = test.groupby("unique_id")["ds"].transform("size")
    context, target = test[rank < size - 2], test[rank >= size - 2]
    queries = target[["unique_id", "ds"]]
    y = torch.tensor(target["size"].to_numpy())

    model = Forecaster(random_state=0).fit(train)
    ours = model.forecast(context, times=queries, n_samples=400)
    naive = LastValueBaseline(random_state=0).fit(train).forecast(context, times=queries, n_samples=400)
    crps = float(crps_samples(torch.as_tensor(ours.samples[..., 0]), y))
    crps_naive = float(crps_samples(torch.as_tensor(naive.samples[..., 0]), y))
    assert crps < 0.8 * crps_naive
    lo, hi = np.quantile(ours.samples[..., 0], [0.1, 0.9], axis=0)
    coverage = float(((y.numpy() >= lo) & (y.numpy() <= hi)).mean())
    assert 0.6 <= coverage <= 0.97
    assert model.validation_report_["crps_ratio"] < 1.0


# ---------------------------------------------------------------- stable steps over long gaps


class _Relaxation(torch.nn.Module):
    """``dh/dt = rate * (target - h)`` with constant coefficients: ``h(t)`` is known exactly."""

    def __init__(self, rate: float, target: float):
        super().__init__()
        self.rate, self.target = rate, target

    def rate_and_target(self, h):
        return torch.full_like(h, self.rate), torch.full_like(h, self.target)

    def forward(self, h):
        rate, target = self.rate_and_target(h)
        return rate * (target - h)


def test_exp_euler_is_exact_for_frozen_coefficients_and_stable_for_long_steps():
    field = _Relaxation(rate=3.0, target=0.5)
    h0 = torch.tensor([[2.0], [-1.0]], dtype=torch.float64)
    dt = torch.tensor([0.7, 40.0], dtype=torch.float64)
    options = SolverOptions(method="exp_euler", step_size=0.1, max_steps=2)
    assert fixed_step_plan(dt.unsqueeze(1), options) == [2]  # capped from 400 steps
    out = integrate_intervals(field, h0, dt, options)
    exact = 0.5 + (h0 - 0.5) * torch.exp(-3.0 * dt).unsqueeze(1)
    torch.testing.assert_close(out, exact)
    euler = integrate_intervals(field, h0, dt, SolverOptions(method="euler", step_size=0.1, max_steps=2))
    assert euler.abs().max() > 1e3  # plain Euler overshoots by orders of magnitude there


def test_exp_euler_is_for_intervals_only_and_max_steps_is_checked():
    with pytest.raises(ValueError, match="between observations only"):
        integrate(lambda t, h: -h, torch.ones(1, 1), torch.tensor([0.0, 1.0]), SolverOptions("exp_euler"))
    with pytest.raises(ValueError, match="max_steps"):
        SolverOptions(method="euler", step_size=0.1, max_steps=0)


def test_gaussian_draws_stay_finite_for_contexts_far_outside_the_data():
    emission = GaussianEmission(1, 2, hidden=(4,), linear_skip=True)
    with torch.no_grad():
        emission.skip.weight.fill_(1.0)
        draws = emission.sample(torch.tensor([[1e19, 1e19]]), 16)
    assert torch.isfinite(draws).all()


@pytest.mark.parametrize(
    "model",
    [
        GRUODEBayesSettings(emission="mixlogistic", hidden_size=4, p_hidden=4, prep_hidden=2),
        GRUODEBayesSettings(emission="maf", hidden_size=4, p_hidden=4, prep_hidden=2),
        LatentODESettings(hidden_size=4, p_hidden=4, latent_dim=2),
        LatentSDESettings(hidden_size=4, p_hidden=4, latent_dim=2),
    ],
    ids=["mixlogistic", "maf", "latent_ode", "latent_sde"],
)
def test_every_model_and_emission_validates_on_held_out_last_rows(model):
    df = growth_curves(8, seed=5)
    est = Forecaster(model=model, max_steps=4, eval_every=2, random_state=0).fit(df)
    assert len(est.history_["selection"]["val_loss"]) == 2
    assert np.isfinite(est.validation_report_["model_crps"])
    assert est.predict(df, horizon=[1.0]).shape == (8, 3)
