"""Naive baselines: persistence and continuous-time exponential smoothing with empirical residuals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctflow.baselines import LastValueBaseline, SmoothedLevelBaseline
from ctflow.data import load_double_ou


def _frame() -> pd.DataFrame:
    """Two series; y is a line in each, z is never observed in series 'b'."""
    return pd.DataFrame(
        {
            "unique_id": ["a"] * 4 + ["b"] * 3,
            "ds": [0.0, 1.0, 2.0, 4.0, 0.0, 1.0, 3.0],
            "y": [0.0, 1.0, 2.0, 4.0, 10.0, 11.0, 13.0],
            "z": [5.0, np.nan, 5.0, 5.0, np.nan, np.nan, np.nan],
        }
    )


def test_last_value_residuals_are_the_training_changes_per_gap():
    df = _frame()
    model = LastValueBaseline(n_bins=2).fit(df)
    # y grows by exactly the gap in both series: every residual equals its gap. The pairs' gaps
    # are 1, 2, 4, 1, 3, 2 (a) and 1, 3, 2 (b); their median 2 splits them into {1} and {2, 3, 4}.
    fc = model.forecast(df, horizon=[0.5, 3.0], n_samples=200)
    last = df.groupby("unique_id")["y"].last()
    changes = fc.samples[:, :, 0] - last.loc[fc.queries["unique_id"]].to_numpy()
    offsets = (
        fc.queries["ds"].to_numpy()
        - df.groupby("unique_id")["ds"].max().loc[fc.queries["unique_id"]].to_numpy()
    )
    for i, offset in enumerate(offsets):
        assert set(np.unique(changes[:, i])) == ({1.0} if offset < 2 else {2.0, 3.0, 4.0})
    # z is constant where seen; never seen in 'b': drawn from its training values.
    np.testing.assert_array_equal(fc.samples[:, :, 1], 5.0)


def test_last_value_score_is_the_gaussian_of_previous_values():
    df = _frame()[["unique_id", "ds", "y"]]
    model = LastValueBaseline(n_bins=1).fit(df)
    resid = np.array([1, 2, 4, 1, 3, 2, 1, 3, 2], dtype=float)  # all pairs' changes
    sd = resid.std()
    y = df["y"].to_numpy()
    first_sd = y.std()
    terms = []
    for _, g in df.groupby("unique_id"):
        v = g["y"].to_numpy()
        terms.append(-0.5 * ((v[0] - y.mean()) / first_sd) ** 2 - np.log(first_sd))
        terms += list(-0.5 * (np.diff(v) / sd) ** 2 - np.log(sd))
    expected = np.mean(terms) - 0.5 * np.log(2 * np.pi)
    assert model.score(df) == pytest.approx(expected, rel=1e-12)


def _brute_force_level(t, y, time_scale, shrinkage, prior):
    w = np.exp(-(t[-1] - t) / time_scale)
    return (np.sum(w * y) + shrinkage * prior) / (np.sum(w) + shrinkage)


@pytest.mark.parametrize(("time_scale", "shrinkage"), [(0.5, 0.0), (2.0, 0.0), (1.0, 0.7), (50.0, 3.0)])
def test_smoothed_level_is_the_exponentially_weighted_mean(time_scale, shrinkage):
    df = load_double_ou(20, seed=0)
    model = SmoothedLevelBaseline(time_scale, shrinkage).fit(df)
    prior = df["y1"].mean()
    g = df[df["unique_id"] == df["unique_id"].iloc[0]].dropna(subset=["y1"])
    t, y = g["ds"].to_numpy(), g["y1"].to_numpy()
    levels = model._levels(t, y, 0)
    for k in range(len(t)):
        assert levels[k] == pytest.approx(
            _brute_force_level(t[: k + 1], y[: k + 1], time_scale, shrinkage, prior), rel=1e-10
        )


def test_smoothed_level_limits():
    df = load_double_ou(30, seed=1)
    # Vanishing time scale, no shrinkage: persistence, the same draws as LastValueBaseline.
    fast = SmoothedLevelBaseline(1e-9, 0.0, random_state=3).fit(df).forecast(df, horizon=[0.5, 2.0])
    last = LastValueBaseline(random_state=3).fit(df).forecast(df, horizon=[0.5, 2.0])
    np.testing.assert_allclose(fast.samples, last.samples, atol=1e-12)
    # Overwhelming shrinkage: every series forecast from the training mean.
    flat = SmoothedLevelBaseline(1.0, 1e12).fit(df)
    assert flat.score(df) < SmoothedLevelBaseline(1.0, 0.0).fit(df).score(df)
    means = flat.forecast(df, horizon=[1.0], n_samples=4000).mean[["y1", "y2"]].to_numpy()
    assert np.ptp(means, axis=0).max() < 0.15  # the same distribution for every series


def test_smoothed_level_with_datetimes_and_timedelta_scale():
    df = load_double_ou(10, seed=0)
    dated = df.assign(ds=pd.Timestamp("2020-01-01") + pd.to_timedelta(df["ds"], unit="D"))
    by_days = SmoothedLevelBaseline(pd.Timedelta(days=2), 0.5).fit(dated, time_unit="D")
    by_hours = SmoothedLevelBaseline(pd.Timedelta(days=2), 0.5).fit(dated, time_unit="h")
    as_number = SmoothedLevelBaseline(2.0, 0.5).fit(df)
    assert by_days.decay_time_ == 2.0 and by_hours.decay_time_ == 48.0
    g = df[df["unique_id"] == 0]
    t, y = g["ds"].to_numpy(), g["y1"].to_numpy()
    np.testing.assert_allclose(by_hours._levels(24 * t, y, 0), as_number._levels(t, y, 0), rtol=1e-12)
    fc = by_days.forecast(dated, horizon=[pd.Timedelta(days=1)])
    assert fc.samples.shape == (500, 10, 2) and np.isfinite(fc.samples).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"time_scale": 0.0}, ValueError, "time_scale"),
        ({"time_scale": -1.0}, ValueError, "time_scale"),
        ({"time_scale": "soon"}, TypeError, "time_scale"),
        ({"shrinkage": -0.1}, ValueError, "shrinkage"),
        ({"shrinkage": float("nan")}, ValueError, "shrinkage"),
        ({"shrinkage": "a lot"}, TypeError, "shrinkage"),
    ],
)
def test_smoothed_level_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        SmoothedLevelBaseline(**kwargs).fit(_frame())


@pytest.mark.parametrize("cls", [LastValueBaseline, SmoothedLevelBaseline])
def test_use_before_fit(cls):
    with pytest.raises(ValueError, match="not fitted"):
        cls().forecast(_frame(), horizon=[1.0])
    with pytest.raises(ValueError, match="not fitted"):
        cls().score(_frame())


@pytest.mark.parametrize(
    "make", [lambda: LastValueBaseline(n_bins=3), lambda: SmoothedLevelBaseline(2.0, 1.0)]
)
def test_baselines_are_estimators_with_the_forecaster_prediction_api(make):
    from sklearn.base import clone

    from ctflow.data import load_double_ou

    df = load_double_ou(30, seed=1)
    model = make().fit(df)
    assert clone(model).get_params() == model.get_params() and not hasattr(clone(model), "codec_")
    fc = model.forecast(df, horizon=[0.5, 1.0], n_samples=400, seed=5)
    means = model.predict(df, horizon=[0.5, 1.0])
    assert list(means.columns) == ["unique_id", "ds", "y1", "y2"] and len(means) == 60
    # Every method reads the same draws: the default seed is random_state.
    same = model.forecast(df, horizon=[0.5, 1.0])
    np.testing.assert_allclose(means[["y1", "y2"]].to_numpy(), same.mean[["y1", "y2"]].to_numpy())
    q = model.predict_quantiles(df, horizon=[0.5, 1.0], quantiles=[0.1, 0.9], n_samples=400)
    assert (q["y1_q10"] <= q["y1_q90"]).all() and (q["y1_q10"] < q["y1_q90"]).any()
    table = model.predict_table(df, horizon=[0.5], quantiles=[0.5])
    assert list(table.columns) == ["unique_id", "ds", "variable", "mean", "q50"] and len(table) == 60
    interval = model.predict_interval(df, horizon=[0.5], coverage=[0.8])
    assert (interval["y2_lower_80"] <= interval["y2_upper_80"]).all()
    draws = model.sample(df, horizon=[0.5], n_samples=7, seed=5)
    assert draws.shape == (7, 30, 2) and not np.array_equal(draws, fc.samples[:7, ::2])
    with pytest.raises(ValueError, match="draws each query independently: use paths=False"):
        model.forecast(df, horizon=[0.5], paths=True)
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        model.forecast(df, horizon=[0.5], n_samples=0)
    assert np.isfinite(model.score(df))


def test_an_unfitted_baseline_says_so():
    with pytest.raises(ValueError, match="this SmoothedLevelBaseline is not fitted yet: call fit first"):
        SmoothedLevelBaseline().predict(pd.DataFrame(), horizon=[1.0])
