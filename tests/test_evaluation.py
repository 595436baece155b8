"""Backtesting on frames: cross_validation, metrics.evaluate and the series splitter."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

from ctflow import Forecaster, SeriesSplit, cross_validation
from ctflow.baselines import LastValueBaseline
from ctflow.data import load_double_ou, simulate_pk
from ctflow.metrics import crps_samples, evaluate

TINY = {"max_steps": 5, "val_fraction": 0.0, "random_state": 0, "n_samples": 64}


@pytest.fixture(scope="module")
def ou():
    return load_double_ou(16, seed=1)


@pytest.fixture(scope="module")
def model(ou):
    return Forecaster(**TINY).fit(ou)


def test_every_observation_within_the_horizon_is_forecast_from_the_rows_before_it(ou, model):
    cv = cross_validation(model, ou, horizon=1.0, n_windows=2, seed=0)
    assert list(cv.columns[:7]) == ["unique_id", "cutoff", "ds", "horizon", "variable", "actual", "mean"]
    ends = ou.groupby("unique_id")["ds"].max()
    cut = cv["unique_id"].map(ends).to_numpy() - cv["cutoff"].to_numpy()
    np.testing.assert_allclose(np.unique(cut.round(9)), [1.0, 2.0])  # each series' own end, 1 apart
    assert ((cv["horizon"] > 0) & (cv["horizon"] <= 1.0 + 1e-12)).all()
    # every observed value in each window is a row, and nothing else is
    long = ou.melt(["unique_id", "ds"], var_name="variable", value_name="actual").dropna()
    expected = 0
    for k in (1.0, 2.0):
        at = long["unique_id"].map(ends) - k
        expected += int(((long["ds"] > at) & (long["ds"] <= at + 1.0)).sum())
    assert len(cv) == expected
    quantiles = cv[["q5", "q10", "q25", "q50", "q75", "q90", "q95"]].to_numpy()
    assert (np.diff(quantiles, axis=1) >= 0).all()


def test_forecasts_never_see_the_rows_after_their_cutoff(ou, model):
    cv = cross_validation(model, ou, horizon=1.0, seed=4)
    changed = ou.copy()
    last = changed.groupby("unique_id")["ds"].transform("max")
    after = changed["ds"] > last - 1.0
    changed.loc[after, ["y1", "y2"]] = changed.loc[after, ["y1", "y2"]] + 100.0
    again = cross_validation(model, changed, horizon=1.0, seed=4)
    pd.testing.assert_frame_equal(cv.drop(columns=["actual", "crps"]), again.drop(columns=["actual", "crps"]))
    np.testing.assert_allclose(again["actual"] - cv["actual"], 100.0)


def test_the_crps_column_is_that_of_the_forecast_draws(ou, model):
    cv = cross_validation(model, ou, horizon=1.0, seed=2, n_samples=32)
    cutoff = ou["unique_id"].map(cv.groupby("unique_id")["cutoff"].first())
    context = ou[ou["ds"] <= cutoff]
    target = ou[(ou["ds"] > cutoff) & (ou["ds"] <= cutoff + 1.0)]
    fc = model.forecast(context, times=target[["unique_id", "ds"]], n_samples=32, seed=2)
    y = torch.tensor(target[["y1", "y2"]].to_numpy())
    crps = crps_samples(torch.tensor(fc.samples), torch.nan_to_num(y), reduce=False).numpy().reshape(-1)
    np.testing.assert_allclose(cv["crps"].to_numpy(), crps[~np.isnan(y.numpy().reshape(-1))])


def test_shared_cutoffs_refit_on_the_rows_before_them_and_baselines_share_the_table(ou):
    est = Forecaster(max_steps=3, val_fraction=0.0, random_state=0)
    cv = cross_validation(est, ou, horizon=1.0, cutoffs=[7.0, 8.0], refit=True, n_samples=16)
    assert sorted(cv["cutoff"].unique()) == [7.0, 8.0]
    changed = ou.assign(y1=np.where(ou["ds"] > 8.0, ou["y1"] + 50, ou["y1"]))
    again = cross_validation(est, changed, horizon=1.0, cutoffs=[7.0, 8.0], refit=True, n_samples=16)
    early = cv["ds"] <= 8.0  # the refit at each cutoff saw nothing after it
    pd.testing.assert_series_equal(cv.loc[early, "mean"], again.loc[early, "mean"])
    naive = cross_validation(LastValueBaseline(random_state=0).fit(ou), ou, horizon=1.0, cutoffs=[7.0, 8.0])
    table = pd.concat(
        [evaluate(cv, by=()).assign(model="ctflow"), evaluate(naive, by=()).assign(model="persistence")]
    )
    assert list(table["model"]) == ["ctflow", "persistence"] and (table["crps"] > 0).all()
    with pytest.raises(ValueError, match="refit=True needs cutoffs shared by every series"):
        cross_validation(est, ou, horizon=1.0, refit=True)
    with pytest.raises(ValueError, match="the forecaster is not fitted"):
        cross_validation(est, ou, horizon=1.0)


def test_planned_inputs_of_the_frame_reach_each_window():
    pk = simulate_pk(8, seed=2)
    est = Forecaster(max_steps=3, val_fraction=0.0, random_state=0)
    est.fit(pk.df, id_col="id", time_col="ds", value_cols=["conc"], exog_cols=["dose"])
    cv = cross_validation(est, pk.df, horizon=24.0, n_samples=16, seed=0)
    sid = cv["id"].iloc[0]
    cut = cv["cutoff"].iloc[0]
    series = pk.df[pk.df["id"] == sid]
    future = series[(series["ds"] > cut) & series["dose"].notna()][["id", "ds", "dose"]]
    times = cv[cv["id"] == sid][["id", "ds"]]
    direct = est.predict(series[series["ds"] <= cut], times=times, future_df=future)
    np.testing.assert_allclose(cv[cv["id"] == sid]["mean"], direct["conc"], rtol=1e-6)


def test_evaluate_scores_by_variable_and_horizon():
    frame = pd.DataFrame(
        {
            "variable": ["a", "a", "b", "b"],
            "horizon": [1.0, 2.0, 1.0, 2.0],
            "actual": [0.0, 1.0, 2.0, np.nan],
            "mean": [1.0, 1.0, 0.0, 5.0],
            "q10": [-1.0, 2.0, -1.0, 0.0],
            "q50": [0.0, 2.5, 0.0, 0.0],
            "q90": [1.0, 3.0, 1.0, 0.0],
        }
    )
    out = evaluate(frame, by=("variable",))
    assert out.to_dict("list")["n"] == [2, 1]  # the missing actual is not scored
    np.testing.assert_allclose(out["mae"], [0.5, 2.0])
    np.testing.assert_allclose(out["mse"], [0.5, 4.0])
    np.testing.assert_allclose(out["coverage_80"], [0.5, 0.0])
    # without a crps column: twice the mean quantile loss over the levels
    y, q = 2.0, {0.1: -1.0, 0.5: 0.0, 0.9: 1.0}
    expected = 2 * np.mean([max(t * (y - v), (t - 1) * (y - v)) for t, v in q.items()])
    assert out.loc[1, "crps"] == pytest.approx(expected)
    by_h = evaluate(frame, by=("horizon",), horizon_bins=2)
    assert by_h["n"].sum() == 3 and len(by_h) == 2
    with pytest.raises(ValueError, match=r"unknown metrics \['rmse'\]"):
        evaluate(frame, metrics=("rmse",))


def test_quantile_crps_approaches_the_exact_crps_of_a_normal():
    levels = np.linspace(0.005, 0.995, 199)
    normal = torch.distributions.Normal(0.0, 1.0)
    quantiles = {f"q{100 * q:g}": [float(normal.icdf(torch.tensor(q)))] for q in levels}
    frame = pd.DataFrame({"actual": [0.7], "mean": [0.0], **quantiles})
    z = 0.7
    exact = (
        z * (2 * normal.cdf(torch.tensor(z)) - 1)
        + 2 * normal.log_prob(torch.tensor(z)).exp()
        - 1 / math.sqrt(math.pi)
    )
    assert evaluate(frame, metrics=("crps",), by=()).loc[0, "crps"] == pytest.approx(float(exact), rel=0.02)


def test_series_split_keeps_series_whole_and_row_splits_are_refused(ou):
    folds = list(SeriesSplit(4).split(ou))
    assert len(folds) == 4
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(len(ou)))
    for train, test in folds:
        assert not set(ou["unique_id"].iloc[train]) & set(ou["unique_id"].iloc[test])
    est = Forecaster(max_steps=2, val_fraction=0.0, random_state=0)
    scores = cross_val_score(est, ou, cv=SeriesSplit(3))
    assert np.isfinite(scores).all()
    search = GridSearchCV(est, {"model__hidden_size": [4, 8]}, cv=SeriesSplit(2)).fit(ou)
    assert search.best_params_["model__hidden_size"] in (4, 8)
    with pytest.raises(
        ValueError, match=r"rows of one series were split between fitting and scoring .*ctflow.SeriesSplit"
    ):
        cross_val_score(est, ou, cv=KFold(3, shuffle=True, random_state=0), error_score="raise")
    fitted = Forecaster(**TINY).fit(ou)
    assert np.isfinite(fitted.score(ou))  # the training rows themselves
    later = ou.assign(ds=ou["ds"] + 100.0)
    assert np.isfinite(fitted.score(pd.concat([ou, later])))  # with rows after them
    with pytest.raises(ValueError, match="between 2 and the number of series"):
        list(SeriesSplit(40).split(ou))
