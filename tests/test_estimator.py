"""Forecaster: scikit-learn API, repeatability, datetimes, forecasts, persistence and bad input."""

from __future__ import annotations

import json
import math
import pickle

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from ctflow import Forecast, Forecaster
from ctflow.data import load_double_ou
from ctflow.models.settings import GRUODEBayesSettings

matplotlib.use("Agg")

SMALL_MODEL = {"hidden_size": 8, "p_hidden": 8, "prep_hidden": 4}
SMALL = {"max_epochs": 2, "n_samples": 64}
VALUES = ["y1", "y2"]
START = pd.Timestamp("2021-03-01")


def small(**params) -> Forecaster:
    """A small Forecaster; each call holds its own settings object (``set_params`` edits it)."""
    model = GRUODEBayesSettings(**SMALL_MODEL)
    return Forecaster(**{"model": model, **SMALL, "random_state": 0, **params})


def params_of(est: Forecaster) -> dict:
    """``get_params(deep=True)`` compared by value: the settings object becomes its class name
    (its parameters are there as ``model__<name>``)."""
    params = est.get_params(deep=True)
    params["model"] = type(params["model"]).__name__
    return params


def as_datetime(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with its float times (days) as datetimes."""
    out = df.copy()
    out["ds"] = START + pd.to_timedelta(out["ds"], unit="D")
    return out


@pytest.fixture(scope="module")
def ou() -> pd.DataFrame:
    return load_double_ou(48, seed=0)


@pytest.fixture(scope="module")
def fitted(ou) -> Forecaster:
    return small().fit(ou)


@pytest.fixture(scope="module")
def fitted_dt(ou) -> Forecaster:
    return small().fit(as_datetime(ou), time_unit="D")


def values(frame: pd.DataFrame) -> np.ndarray:
    return frame[VALUES].to_numpy()


def last_times(df: pd.DataFrame) -> pd.Series:
    return df.groupby("unique_id")["ds"].max()


# --------------------------------------------------------------------------- scikit-learn API
def test_get_set_params_and_clone(fitted):
    params = fitted.get_params()
    assert params["model__hidden_size"] == 8 and params["random_state"] == 0
    assert isinstance(params["model"], GRUODEBayesSettings)
    est = small()
    assert est.set_params(model__hidden_size=4, lr=0.01) is est
    assert (est.model.hidden_size, est.lr) == (4, 0.01)
    assert fitted.model.hidden_size == 8  # each small() holds its own settings
    copy = clone(fitted)
    assert copy.model is not fitted.model
    assert params_of(copy) == params_of(fitted)
    assert not hasattr(copy, "model_")
    with pytest.raises(ValueError, match="nope"):
        est.set_params(nope=1)


def test_constructor_stores_parameters_only():
    from sklearn.utils.estimator_checks import check_no_attributes_set_in_init

    check_no_attributes_set_in_init("Forecaster", Forecaster())
    est = Forecaster(max_epochs=0, model="nope", val_fraction=1.5)  # checked at fit, not here
    assert vars(est) == est.get_params()


def test_pickle_round_trip(fitted, ou):
    unfitted = pickle.loads(pickle.dumps(small(lr=0.02)))
    assert params_of(unfitted) == params_of(small(lr=0.02))
    again = pickle.loads(pickle.dumps(fitted))
    pd.testing.assert_frame_equal(again.predict(ou, horizon=[1, 2]), fitted.predict(ou, horizon=[1, 2]))


def test_random_state_makes_fits_repeatable(fitted, ou):
    same, other = small().fit(ou), small(random_state=1).fit(ou)
    pd.testing.assert_frame_equal(same.predict(ou, horizon=[1]), fitted.predict(ou, horizon=[1]))
    np.testing.assert_array_equal(same.sample(ou, horizon=[1, 2]), fitted.sample(ou, horizon=[1, 2]))
    assert same.history_["train_loss"] == fitted.history_["train_loss"]
    assert not np.allclose(values(other.predict(ou, horizon=[1])), values(fitted.predict(ou, horizon=[1])))
    draws = fitted.sample(ou, horizon=[1], n_samples=8, seed=3)
    np.testing.assert_array_equal(draws, fitted.sample(ou, horizon=[1], n_samples=8, seed=3))
    assert not np.array_equal(draws, fitted.sample(ou, horizon=[1], n_samples=8, seed=4))


# --------------------------------------------------------------------------- times
def test_datetime_times_with_given_unit(fitted_dt, fitted, ou):
    df = as_datetime(ou)
    assert fitted_dt.codec_.unit == "D"
    out = fitted_dt.predict(df, horizon=[1, 2])
    assert pd.api.types.is_datetime64_dtype(out["ds"])
    expected = np.repeat(last_times(df).to_numpy(), 2) + np.tile(pd.to_timedelta([1, 2], unit="D"), 48)
    np.testing.assert_array_equal(out["ds"].to_numpy(), expected.astype(out["ds"].dtype))
    as_timedelta = fitted_dt.predict(df, horizon=[pd.Timedelta("1D"), pd.Timedelta("48h")])
    pd.testing.assert_frame_equal(as_timedelta, out)
    # Same data on a float axis in days: the same model, the same forecasts.
    np.testing.assert_allclose(values(out), values(fitted.predict(ou, horizon=[1, 2])), atol=1e-5)


def test_datetime_unit_inferred_and_time_zones(fitted_dt, ou):
    df = as_datetime(ou)
    inferred = small().fit(df)
    assert inferred.codec_.unit == "h"  # observations are about half a day apart
    horizon = [pd.Timedelta("12h"), pd.Timedelta("1D")]
    ref = fitted_dt.predict(df, horizon=horizon)
    # Time is rescaled by the median gap, so the unit does not change the model.
    np.testing.assert_allclose(values(inferred.predict(df, horizon=horizon)), values(ref), atol=1e-5)

    aware = df.assign(ds=df["ds"].dt.tz_localize("America/New_York"))
    tz_model = small().fit(aware, time_unit="D")
    out = tz_model.predict(aware, horizon=horizon)
    assert str(out["ds"].dt.tz) == "America/New_York"
    expected = last_times(aware).repeat(2).reset_index(drop=True) + pd.Series(pd.to_timedelta(horizon * 48))
    assert (out["ds"] == expected).all()
    np.testing.assert_allclose(values(out), values(ref), atol=1e-5)
    with pytest.raises(TypeError, match="time-zone aware"):
        tz_model.predict(df, horizon=[1])
    with pytest.raises(TypeError, match="fitted on datetime"):
        tz_model.predict(ou, horizon=[1])
    with pytest.raises(TypeError, match="timedelta horizon"):
        small().fit(ou.iloc[:100]).predict(ou, horizon=[pd.Timedelta("1D")])


# --------------------------------------------------------------------------- predictions
def test_predict_with_times_keeps_query_order(fitted, ou):
    last = last_times(ou)
    rng = np.random.default_rng(0)
    ids = rng.choice(last.index.to_numpy()[:30], size=50)
    queries = pd.DataFrame({"unique_id": ids, "ds": last.loc[ids].to_numpy() + rng.uniform(0.1, 3, 50)})
    queries.index = rng.permutation(1000)[:50]
    out = fitted.predict(ou, times=queries)
    assert list(out.columns) == ["unique_id", "ds", *VALUES]
    np.testing.assert_array_equal(out["unique_id"], queries["unique_id"])
    np.testing.assert_array_equal(out["ds"], queries["ds"])
    order = np.lexsort((queries["ds"].to_numpy(), queries["unique_id"].to_numpy()))
    sorted_out = fitted.predict(ou, times=queries.iloc[order])
    np.testing.assert_allclose(values(sorted_out), values(out)[order], rtol=1e-6)
    # A query at last + h equals the horizon forecast at h.
    by_horizon = fitted.predict(ou, horizon=[0.5, 2])
    grid = by_horizon[["unique_id", "ds"]].iloc[::-1]
    np.testing.assert_allclose(values(fitted.predict(ou, times=grid)), values(by_horizon)[::-1], rtol=1e-5)


def test_horizon_grid_layout(fitted, ou):
    out = fitted.predict(ou, horizon=np.array([2.0, 0.5, 1]))
    assert len(out) == 48 * 3
    assert out["unique_id"].tolist() == np.repeat(sorted(ou["unique_id"].unique()), 3).tolist()
    offsets = out["ds"].to_numpy() - np.repeat(last_times(ou).to_numpy(), 3)
    np.testing.assert_allclose(offsets, np.tile([0.5, 1, 2], 48))


def test_quantiles_intervals_and_samples(fitted, ou):
    q = fitted.predict_quantiles(ou, horizon=[1, 3], quantiles=[0.9, 0.1, 0.5])
    assert list(q.columns) == ["unique_id", "ds", "y1_q90", "y1_q10", "y1_q50", "y2_q90", "y2_q10", "y2_q50"]
    for v in VALUES:
        assert (q[f"{v}_q10"] <= q[f"{v}_q50"]).all() and (q[f"{v}_q50"] <= q[f"{v}_q90"]).all()
        assert (q[f"{v}_q10"] < q[f"{v}_q90"]).all()
    iv = fitted.predict_interval(ou, horizon=[1, 3], coverage=[0.8, 0.95])
    for v in VALUES:
        assert (iv[f"{v}_lower_95"] <= iv[f"{v}_lower_80"]).all()
        assert (iv[f"{v}_upper_80"] <= iv[f"{v}_upper_95"]).all()
        assert (iv[f"{v}_lower_80"] < iv[f"{v}_upper_80"]).all()
    for paths in (True, False):
        s = fitted.sample(ou, horizon=[1, 2, 3], n_samples=10, paths=paths)
        assert s.shape == (10, 48 * 3, 2) and np.isfinite(s).all()
    # Marginal draws at a horizon have the spread of the predictive distribution.
    many = fitted.sample(ou, horizon=[1], n_samples=400, paths=False)
    mean = values(fitted.predict(ou, horizon=[1]))
    assert np.abs(many.mean(0) - mean).max() < 4 * many.std(0).max() / math.sqrt(400) + 1e-6


def test_forecasts_are_in_original_units(fitted, ou):
    moved = ou.assign(y1=10 * ou["y1"] + 1000, y2=10 * ou["y2"] + 1000)
    refit = small().fit(moved)
    np.testing.assert_allclose(
        values(refit.predict(moved, horizon=[1, 2])),
        10 * values(fitted.predict(ou, horizon=[1, 2])) + 1000,
        rtol=1e-4,
    )
    draws = refit.sample(moved, horizon=[1], n_samples=16)
    np.testing.assert_allclose(draws, 10 * fitted.sample(ou, horizon=[1], n_samples=16) + 1000, rtol=1e-4)
    # The score is a log-density in data units: scaling values by 10 subtracts log 10.
    assert refit.score(moved) == pytest.approx(fitted.score(ou) - math.log(10), abs=1e-3)


def test_score_matches_a_manual_change_of_variables(fitted, ou):
    from ctflow.training import evaluate_sequence_nll

    batch = fitted._context(ou).model_batch(fitted.scaling_)
    nll_model_units = evaluate_sequence_nll(fitted.model_, batch)
    observed = ou[VALUES].notna().sum().to_numpy()
    log_jac = (observed * np.log(ou[VALUES].std(ddof=0).to_numpy())).sum() / observed.sum()
    assert fitted.score(ou) == pytest.approx(-nll_model_units - log_jac, abs=1e-9)


def test_forecast_object(fitted, ou):
    fc = fitted.forecast(ou, horizon=[1, 2], n_samples=32)
    assert isinstance(fc, Forecast) and len(fc) == 96 and fc.n_samples == 32
    assert "96 queries of 48 series" in repr(fc)
    pd.testing.assert_frame_equal(fc.mean, fitted.predict(ou, horizon=[1, 2]))
    assert fc.samples.shape == (32, 96, 2)
    q = fc.quantile([0.1, 0.9])
    np.testing.assert_allclose(q["y1_q10"], np.quantile(fc.samples[:, :, 0], 0.1, axis=0))
    iv = fc.interval(0.5)
    np.testing.assert_allclose(iv["y2_upper_50"], np.quantile(fc.samples[:, :, 1], 0.75, axis=0))
    long = fc.to_frame(quantiles=[0.1, 0.5, 0.9])
    assert list(long.columns) == ["unique_id", "ds", "variable", "mean", "q10", "q50", "q90"]
    assert len(long) == 96 * 2 and long["variable"].tolist()[:4] == ["y1", "y2", "y1", "y2"]
    np.testing.assert_allclose(long["mean"].to_numpy(), fc.mean[VALUES].to_numpy().reshape(-1))
    assert (long["q10"] <= long["q50"]).all() and (long["q50"] <= long["q90"]).all()


def test_forecast_plot(fitted, ou):
    import matplotlib.pyplot as plt

    fc = fitted.forecast(ou, horizon=[0.5, 1, 2], n_samples=32)
    axes = fc.plot(3)
    assert len(axes) == 2
    for ax in axes:
        assert len(ax.lines) == 2  # history dots and the forecast median
        assert len(ax.collections) == 3  # one band per default coverage
    _, ax = plt.subplots()
    assert fc.plot(3, ax=ax, variables=["y2"], coverage=[0.9]) is ax
    assert ax.get_ylabel() == "y2" and len(ax.collections) == 1
    with pytest.raises(ValueError, match="12345"):
        fc.plot(12345)
    with pytest.raises(ValueError, match="y9"):
        fc.plot(3, variables=["y9"])
    plt.close("all")


def test_fitted_model_beats_last_value_baseline():
    train, test = load_double_ou(200, seed=1), load_double_ou(60, seed=2)
    est = Forecaster(
        model=GRUODEBayesSettings(hidden_size=16, p_hidden=16, prep_hidden=8),
        max_epochs=5,
        batch_size=16,
        lr=0.02,
        val_fraction=0,
        random_state=0,
    ).fit(train)
    # Baseline: Gaussian at the previous observed value, its spread fitted on the training steps;
    # a series' first value gets the training mean and standard deviation.
    total, count = 0.0, 0
    for v in VALUES:
        tr = train[["unique_id", v]].dropna()
        step_sd = np.sqrt((tr.groupby("unique_id")[v].diff().dropna() ** 2).mean())
        te = test[["unique_id", "ds", v]].dropna()
        prev = te.groupby("unique_id")[v].shift()
        loc = prev.fillna(tr[v].mean()).to_numpy()
        sd = np.where(prev.isna(), tr[v].std(), step_sd)
        total += (-0.5 * np.log(2 * np.pi * sd**2) - 0.5 * ((te[v].to_numpy() - loc) / sd) ** 2).sum()
        count += len(te)
    assert est.score(test) > total / count + 0.2


# --------------------------------------------------------------------------- persistence
def test_save_load_round_trip(fitted, ou, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    path = fitted.save(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    saved_params = dict(config["params"])
    assert saved_params.pop("model") == {"name": "gru_ode_bayes", "params": fitted.model.get_params()}
    assert saved_params == {k: v for k, v in fitted.get_params(deep=False).items() if k != "model"}
    weights = load_file(str(path / "model.safetensors"))
    assert weights.keys() == fitted.model_.state_dict().keys()

    def no_pickle(*args, **kwargs):
        raise AssertionError("unpickling during load")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    loaded = Forecaster.load(path)
    monkeypatch.undo()
    assert params_of(loaded) == params_of(fitted)
    pd.testing.assert_frame_equal(loaded.predict(ou, horizon=[1, 2]), fitted.predict(ou, horizon=[1, 2]))
    np.testing.assert_array_equal(loaded.sample(ou, horizon=[1]), fitted.sample(ou, horizon=[1]))
    assert loaded.score(ou) == pytest.approx(fitted.score(ou), abs=1e-12)


def test_save_load_datetime_model(fitted_dt, ou, tmp_path):
    df = as_datetime(ou)
    loaded = Forecaster.load(fitted_dt.save(tmp_path / "dt"))
    pd.testing.assert_frame_equal(loaded.predict(df, horizon=[1]), fitted_dt.predict(df, horizon=[1]))


def test_save_overwrites_a_saved_model(fitted, ou, tmp_path):
    other = small(random_state=1, max_epochs=1).fit(ou.iloc[:300])
    target = tmp_path / "model"
    fitted.save(target)
    other.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    pd.testing.assert_frame_equal(
        Forecaster.load(target).predict(ou, horizon=[1]), other.predict(ou, horizon=[1])
    )
    (tmp_path / "empty").mkdir()
    fitted.save(tmp_path / "empty")
    assert Forecaster.load(tmp_path / "empty").n_variables_ == 2


def test_save_refuses_foreign_directory_and_files(fitted, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"other files \(\['notes.txt'\]\)"):
        fitted.save(foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert (foreign / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        fitted.save(tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "foreign"]


def test_interrupted_save_leaves_nothing_behind(fitted, ou, tmp_path, monkeypatch):
    import safetensors.torch

    fitted.save(tmp_path / "old")
    before = fitted.predict(ou, horizon=[1])

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        fitted.save(tmp_path / "new")
    with pytest.raises(OSError, match="disk full"):
        fitted.save(tmp_path / "old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    monkeypatch.undo()
    pd.testing.assert_frame_equal(Forecaster.load(tmp_path / "old").predict(ou, horizon=[1]), before)


@pytest.fixture
def saved(fitted, tmp_path):
    return fitted.save(tmp_path / "model")


def _edit_config(path, edit) -> None:
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: (p / "config.json").unlink(), "missing config.json"),
        (lambda p: (p / "model.safetensors").unlink(), "missing model.safetensors"),
        (
            lambda p: (p / "config.json").write_text((p / "config.json").read_text()[:200]),
            "truncated or not valid JSON",
        ),
        (
            lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:300]),
            "model.safetensors is truncated or corrupt",
        ),
        (lambda p: (p / "model.safetensors").write_bytes(b""), "model.safetensors is truncated or corrupt"),
        (lambda p: _edit_config(p, lambda c: c.update(format_version=99)), "format version 99"),
        (lambda p: _edit_config(p, lambda c: c.update(ctflow_version="7.0.0")), "saved by ctflow '7.0.0'"),
        (lambda p: _edit_config(p, lambda c: c.update(format="something.else")), "not a ctflow Forecaster"),
        (
            lambda p: _edit_config(p, lambda c: c["fitted"]["model_kwargs"].update(hidden_size=12)),
            "wrong shapes",
        ),
        (lambda p: _edit_config(p, lambda c: c["fitted"].pop("scaling")), "incomplete or invalid"),
        (
            lambda p: _edit_config(
                p, lambda c: c["fitted"]["time_codec"].update(kind="datetime", unit="D", origin="never")
            ),
            "origin",
        ),
        (lambda p: _edit_config(p, lambda c: c["params"].update(bogus=1)), "bogus"),
    ],
    ids=[
        "no-config",
        "no-weights",
        "truncated-config",
        "truncated-weights",
        "empty-weights",
        "format-version",
        "ctflow-version",
        "foreign-format",
        "wrong-shapes",
        "no-scaling",
        "bad-origin",
        "unknown-param",
    ],
)
def test_load_rejects_damaged_models(saved, damage, match):
    damage(saved)
    with pytest.raises(ValueError, match=match):
        Forecaster.load(saved)


def test_load_rejects_weights_of_another_model(fitted, ou, tmp_path):
    wider_model = GRUODEBayesSettings(**{**SMALL_MODEL, "hidden_size": 12})
    wider = small(model=wider_model, max_epochs=1).fit(ou.iloc[:200]).save(tmp_path / "wider")
    target = fitted.save(tmp_path / "model")
    (target / "model.safetensors").write_bytes((wider / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="does not match the configuration"):
        Forecaster.load(target)
    with pytest.raises(ValueError, match="not a saved model directory"):
        Forecaster.load(tmp_path / "absent")


# --------------------------------------------------------------------------- bad input
def _drop(col):
    return lambda df: df.drop(columns=col)


def _set(row, col, value):
    def edit(df):
        df = df.copy()
        if col == "ds" and isinstance(value, type(pd.NaT)):
            df["ds"] = as_datetime(df)["ds"]
        df.loc[row, col] = value
        return df

    return edit


def _no_obs(df):
    df = df.copy()
    df.loc[df["unique_id"] == 5, VALUES] = np.nan
    return df


BAD_FRAMES = {
    "no-id": (_drop("unique_id"), {}, ValueError, "no id column 'unique_id'"),
    "no-time": (_drop("ds"), {}, ValueError, "no time column 'ds'"),
    "missing-value-col": (
        lambda df: df,
        {"value_cols": ["y1", "y3"]},
        ValueError,
        r"value column\(s\) \['y3'\]",
    ),
    "no-value-col": (lambda df: df[["unique_id", "ds"]], {}, ValueError, "no value column"),
    "non-numeric": (lambda df: df.assign(y2=df["y2"].astype(str)), {}, TypeError, "'y2' must be numeric"),
    "infinite": (_set(7, "y1", np.inf), {}, ValueError, "infinite value in column 'y1' at row 7"),
    "nan-time": (_set(9, "ds", np.nan), {}, ValueError, "'ds' has a missing or infinite value at row 9"),
    "nat-time": (_set(11, "ds", pd.NaT), {}, ValueError, r"'ds' has a missing value \(NaT\) at row 11"),
    "duplicate": (lambda df: pd.concat([df, df.iloc[[4]]], ignore_index=True), {}, ValueError, "duplicated"),
    "no-observation": (_no_obs, {}, ValueError, r"series \[5\] have no observed value"),
    "empty": (lambda df: df.iloc[:0], {}, ValueError, "empty"),
    "not-a-frame": (lambda df: df.to_numpy(), {}, TypeError, "must be a pandas DataFrame"),
    "string-times": (lambda df: df.assign(ds=df["ds"].astype(str)), {}, TypeError, "time column 'ds'"),
    "nan-id": (_set(3, "unique_id", np.nan), {}, ValueError, "id column 'unique_id' has a missing value"),
    "bad-time-unit": (as_datetime, {"time_unit": "fortnight"}, ValueError, "unknown time_unit 'fortnight'"),
    "unit-for-numbers": (lambda df: df, {"time_unit": "D"}, ValueError, "time column 'ds' is numeric"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_fit_rejects_bad_frames(case, ou, tmp_path, monkeypatch):
    edit, kwargs, error, match = BAD_FRAMES[case]
    monkeypatch.chdir(tmp_path)
    est = small()
    with pytest.raises(error, match=match):
        est.fit(edit(ou), **kwargs)
    assert not hasattr(est, "model_")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"val_fraction": 1.5}, ValueError, "val_fraction"),
        ({"max_epochs": 0}, ValueError, "max_epochs"),
        ({"batch_size": 2.5}, ValueError, "batch_size"),
        ({"model": "nope"}, ValueError, "unknown model 'nope'; valid: gru_ode_bayes, latent_ode, latent_sde"),
        ({"model": 3}, TypeError, "model must be a model name"),
        ({"model": GRUODEBayesSettings(emission="nope")}, ValueError, "emission"),
        ({"model": GRUODEBayesSettings(step_size="small")}, ValueError, "step_size"),
        ({"model": GRUODEBayesSettings(hidden_size=0)}, ValueError, "hidden_size"),
        ({"model": GRUODEBayesSettings(emission_options=[1])}, TypeError, "emission_options"),
        ({"model": {"name": "gru_ode_bayes", "latent_dim": 3}}, ValueError, "latent_dim"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"device": "tpu"}, ValueError, "device"),
    ],
)
def test_fit_rejects_bad_parameters(params, error, match, ou):
    with pytest.raises(error, match=match):
        small(**params).fit(ou)


def test_methods_need_a_fitted_model(ou, tmp_path):
    est = small()
    for call in (
        lambda: est.predict(ou, horizon=[1]),
        lambda: est.forecast(ou, horizon=[1]),
        lambda: est.sample(ou, horizon=[1]),
        lambda: est.score(ou),
        lambda: est.save(tmp_path / "model"),
    ):
        with pytest.raises(NotFittedError):
            call()
    assert list(tmp_path.iterdir()) == []


def test_bad_queries(fitted, ou):
    last = last_times(ou)
    with pytest.raises(ValueError, match=r"series 2 .* not after its last observation"):
        fitted.predict(ou, times=pd.DataFrame({"unique_id": [1, 2], "ds": [last[1] + 1, last[2]]}))
    with pytest.raises(ValueError, match=r"series \[999\]"):
        fitted.predict(ou, times=pd.DataFrame({"unique_id": [1, 999], "ds": [100.0, 100.0]}))
    with pytest.raises(ValueError, match="row 'b'"):
        fitted.predict(ou, times=pd.DataFrame({"unique_id": [1, 2], "ds": [100.0, np.nan]}, index=["a", "b"]))
    with pytest.raises(ValueError, match="times has no column 'ds'"):
        fitted.predict(ou, times=pd.DataFrame({"unique_id": [1]}))
    with pytest.raises(TypeError, match="times must be a DataFrame"):
        fitted.predict(ou, times=[100.0])
    with pytest.raises(ValueError, match="exactly one of times"):
        fitted.predict(ou)
    with pytest.raises(ValueError, match="lacks the value column"):
        fitted.predict(ou.drop(columns="y2"), horizon=[1])


@pytest.mark.parametrize(
    ("horizon", "error", "match"),
    [
        ([], ValueError, "at least one offset"),
        ([1, -1], ValueError, "positive and finite, got -1"),
        ([0], ValueError, "positive"),
        ([np.nan], ValueError, "positive and finite"),
        (["1"], TypeError, "is a time span, but the model.s times are plain numbers"),
        ([None], TypeError, "numbers or timedeltas"),
        (3, TypeError, "list of positive offsets"),
        ("3", TypeError, "list of positive offsets"),
    ],
)
def test_bad_horizons(fitted, ou, horizon, error, match):
    with pytest.raises(error, match=match):
        fitted.predict(ou, horizon=horizon)


def test_bad_levels(fitted, ou):
    for q in ([0.0, 0.5], [1.0], [-0.1], [1.5]):
        with pytest.raises(ValueError, match="quantiles must lie strictly between 0 and 1"):
            fitted.predict_quantiles(ou, horizon=[1], quantiles=q)
    with pytest.raises(ValueError, match="quantiles must hold at least one level"):
        fitted.predict_quantiles(ou, horizon=[1], quantiles=[])
    for c in ([1.0], [0.0], [0.8, 95]):
        with pytest.raises(ValueError, match="coverage must lie strictly between 0 and 1"):
            fitted.predict_interval(ou, horizon=[1], coverage=c)
    with pytest.raises(ValueError, match="n_samples"):
        fitted.sample(ou, horizon=[1], n_samples=0)
