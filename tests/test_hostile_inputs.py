"""Hostile DataFrames for Forecaster.fit / predict / score: each either works (finite outputs of the
right shape) or is a ValueError/TypeError whose message says what is wrong."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctflow import Forecaster

TINY = {
    "hidden_size": 4,
    "p_hidden": 4,
    "prep_hidden": 2,
    "max_epochs": 1,
    "batch_size": 8,
    "val_fraction": 0,
    "random_state": 0,
    "n_samples": 8,
}
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
# Raw messages of Python, numpy, pandas or torch internals: a clear error never reads like these.
INTERNAL = (
    "unhashable type",
    "unsized object",
    "cannot convert",
    "index out of",
    "out of bounds",
    "overflow",
    "object has no attribute",
    "not supported between",
    "unsupported operand",
    "invalid value encountered",
    "could not convert",
    "setting an array element",
)
MAGNITUDES = [1.0, 1e30, 1e300, 1e-300, 5e-324]


def tiny(**params: Any) -> Forecaster:
    return Forecaster(**{**TINY, **params})


def check_error(err: BaseException, mentions: Iterable[Any] = ()) -> None:
    """The error is a ValueError/TypeError with a non-empty message of our own, naming one of
    ``mentions`` (columns, arguments, series) when given."""
    assert isinstance(err, ValueError | TypeError), f"{type(err).__name__}: {err}"
    message = str(err)
    assert len(message) >= 15, f"uninformative message {message!r}"
    assert not any(frag in message.lower() for frag in INTERNAL), f"internal message {message!r}"
    names = [str(m) for m in mentions]
    if names:
        assert any(n in message for n in names), f"{message!r} names none of {names}"


def attempt(call: Callable[[], Any], mentions: Iterable[Any] = ()) -> Any:
    """``call()`` with warnings as errors; a checked ValueError/TypeError gives None."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return call()
        except (ValueError, TypeError) as err:
            check_error(err, mentions)
            return None


def check_forecasts(model: Forecaster, out: pd.DataFrame, n_rows: int) -> None:
    assert out.shape == (n_rows, 2 + len(model.value_cols_))
    assert list(out.columns[2:]) == list(model.value_cols_)
    values = out[model.value_cols_].to_numpy(dtype=np.float64)
    assert np.isfinite(values).all(), "non-finite forecasts"


def base_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [(i, t, *rng.normal(size=2)) for i in range(4) for t in np.cumsum(rng.uniform(0.5, 1.5, 6))]
    return pd.DataFrame(rows, columns=["unique_id", "ds", "y1", "y2"])


@pytest.fixture(scope="module")
def fitted() -> Forecaster:
    return tiny().fit(base_frame())


# --------------------------------------------------------------------------- generated frames
def _ids(draw: Any, kind: str, n: int) -> list[Any]:
    if kind == "int":
        return list(range(n))
    if kind == "str":
        return [f"s{i}" for i in range(n)]
    if kind == "float":
        return [i + 0.5 for i in range(n)]
    if kind == "bool":
        return [True, False][:n] if n <= 2 else list(range(n))
    pool = [0, "a", 2.5, (1, 2), None, np.nan, [1], pd.NA, b"x"]
    return draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n))


def _times(kind: str, steps: np.ndarray, scale: float) -> Any:
    if kind == "int":
        return (steps * min(max(scale, 1.0), 1e9)).astype(np.int64)
    if kind == "float":
        return steps * scale
    if kind == "datetime":
        return pd.Timestamp("2021-01-01") + pd.to_timedelta(steps, unit="h")
    if kind == "datetime_tz":
        return pd.Timestamp("2021-03-27", tz="Europe/Paris") + pd.to_timedelta(steps * 30, unit="min")
    if kind == "timedelta":
        return pd.to_timedelta(steps, unit="s")
    if kind == "str":
        return [str(s) for s in steps]
    if kind == "bool":
        return steps % 2 == 0
    return np.array([s if i % 2 else str(s) for i, s in enumerate(steps)], dtype=object)


def _values(draw: Any, kind: str, n: int) -> Any:
    magnitude = draw(st.sampled_from(MAGNITUDES))
    pattern = draw(st.sampled_from(["normal", "constant", "all_nan", "one_value", "holes"]))
    signs = draw(st.booleans())
    x = np.arange(1, n + 1, dtype=np.float64) * magnitude
    if signs:
        x[::2] *= -1
    if pattern == "constant":
        x[:] = magnitude
    elif pattern == "all_nan":
        x[:] = np.nan
    elif pattern == "one_value":
        x[1:] = np.nan
    elif pattern == "holes":
        x[draw(st.lists(st.booleans(), min_size=n, max_size=n))] = np.nan
    if kind == "float":
        return x
    if kind == "int":
        return np.where(np.isnan(x), 0, np.clip(x, -1e15, 1e15)).astype(np.int64)
    if kind == "bool":
        return x > 0
    if kind == "str":
        return pd.Series(x).astype(str).to_numpy(dtype=object)
    if kind == "Int64":
        return pd.array([None if np.isnan(v) else int(np.clip(v, -1e15, 1e15)) for v in x], dtype="Int64")
    if kind == "Float64":
        return pd.array([None if np.isnan(v) else v for v in x], dtype="Float64")
    if kind == "complex":
        return x.astype(np.complex128)
    if kind == "inf":
        x[draw(st.integers(0, n - 1))] = draw(st.sampled_from([np.inf, -np.inf]))
        return x
    return x.astype(object)


@st.composite
def frames(draw: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A long frame with random dtypes, missing-value patterns, magnitudes and column names, and
    the fit keyword arguments that go with it."""
    n_series = draw(st.integers(1, 3))
    lengths = draw(st.lists(st.integers(1, 4), min_size=n_series, max_size=n_series))
    n = sum(lengths)
    id_kind = draw(st.sampled_from(["int", "str", "float", "category", "bool", "mixed"]))
    time_kind = draw(
        st.sampled_from(
            ["float"] * 3 + ["int", "datetime", "datetime_tz", "timedelta", "str", "bool", "object"]
        )
    )
    kinds = draw(
        st.lists(
            st.sampled_from(
                ["float"] * 4 + ["int", "bool", "str", "Int64", "Float64", "complex", "object", "inf"]
            ),
            min_size=1,
            max_size=3,
        )
    )
    ids = _ids(draw, "int" if id_kind == "category" else id_kind, n_series)
    id_column = [ids[s] for s, length in enumerate(lengths) for _ in range(length)]
    steps = np.concatenate([np.cumsum(draw(st.permutations([1, 2, 3, 4])))[:k] for k in lengths])
    steps = steps.astype(np.float64)
    if draw(st.booleans()):
        steps[draw(st.integers(0, n - 1))] = steps[0]  # a possible duplicate (id, time) pair
    scale = draw(st.sampled_from([1.0, 1e-6, 1e6, 1e300, 1e-300]))
    names = draw(st.sampled_from(["plain", "int", "collide"]))
    id_col, time_col = ("id", "time") if names == "collide" else ("unique_id", "ds")
    value_names: list[Any] = [f"v{j}" for j in range(len(kinds))]
    if names == "int":
        value_names = list(range(len(kinds)))
    elif names == "collide":
        value_names[0] = draw(st.sampled_from(["unique_id", "ds", 0, "0"]))
        if len(value_names) > 1:
            value_names[1] = draw(st.sampled_from(["ds", "v1", 0]))
    columns = {id_col: id_column, time_col: _times(time_kind, steps, scale)}
    df = pd.DataFrame(columns)
    if id_kind == "category":
        df[id_col] = df[id_col].astype("category")
    for name, kind in zip(value_names, kinds, strict=True):
        if name in df.columns:
            continue
        df[name] = _values(draw, kind, n)
    if draw(st.booleans()):
        df = df.iloc[draw(st.permutations(range(n)))]
    kwargs = {} if names != "collide" else {"id_col": id_col, "time_col": time_col}
    return df, kwargs


@SETTINGS
@given(case=frames())
def test_generated_frames_fit_predict_score(case):
    """Random dtypes, NaN patterns, magnitudes, duplicates and names: works or a clear error."""
    df, kwargs = case
    id_col, time_col = kwargs.get("id_col", "unique_id"), kwargs.get("time_col", "ds")
    mentions = [id_col, time_col, *df.columns, "df", "series", "time", "value"]
    model = attempt(lambda: tiny().fit(df, **kwargs), mentions)
    if model is None:
        return
    gap = model.scaling_.time_scale  # in the model's time unit: steps of a typical gap
    horizon = [gap, 2 * gap]
    out = attempt(lambda: model.predict(df, horizon=horizon), [*mentions, "horizon", "gap"])
    if out is not None:
        n_series = df[id_col].nunique(dropna=False)
        check_forecasts(model, out, n_series * len(set(horizon)))
        draws = model.sample(df, horizon=horizon, n_samples=3)
        assert draws.shape == (3, len(out), len(model.value_cols_)) and np.isfinite(draws).all()
    score = attempt(lambda: model.score(df), mentions)
    assert score is None or np.isfinite(score)


# --------------------------------------------------------------------------- prediction contexts
@st.composite
def contexts(draw: Any) -> pd.DataFrame:
    """The training frame edited: unseen series, extra columns, dtypes, magnitudes, NaN, order."""
    df = base_frame()
    if draw(st.booleans()):
        df["unique_id"] = df["unique_id"] + draw(st.sampled_from([0, 10, 100]))
    if draw(st.booleans()):
        keep = draw(st.lists(st.integers(0, len(df) - 1), min_size=1, max_size=len(df), unique=True))
        df = df.iloc[keep]
    for col in ("y1", "y2"):
        edit = draw(st.sampled_from(["none", "scale", "nan", "Int64", "Float64", "str", "object", "inf"]))
        if edit == "scale":
            df[col] = df[col] * draw(st.sampled_from([1e-300, 1e3, 1e20, 1e38, 1e300]))
        elif edit == "nan":
            df[col] = np.nan
        elif edit == "Int64":
            df[col] = pd.array(np.round(df[col].to_numpy() * 10).astype(int), dtype="Int64")
            df.loc[df.index[0], col] = pd.NA
        elif edit == "Float64":
            df[col] = df[col].astype("Float64")
            df.loc[df.index[-1], col] = pd.NA
        elif edit == "str":
            df[col] = df[col].astype(str)
        elif edit == "object":
            df[col] = df[col].astype(object)
        elif edit == "inf":
            df.loc[df.index[0], col] = np.inf
    extra = draw(st.sampled_from(["none", "str", "complex", "datetime", "list"]))
    if extra != "none":
        filler = {"str": "x", "complex": 1j, "datetime": pd.Timestamp("2020"), "list": [1]}[extra]
        df["extra"] = [filler] * len(df)
    if draw(st.booleans()):
        df = df.iloc[::-1]
    index = draw(st.sampled_from(["keep", "constant", "duplicate_row"]))
    if index == "constant":
        df.index = ["r"] * len(df)
    elif index == "duplicate_row":
        df = pd.concat([df, df.iloc[:1]])
    return df


@SETTINGS
@given(context=contexts())
def test_generated_contexts(fitted, context):
    """Any context: forecasts for each of its series, or a clear error."""
    mentions = ["y1", "y2", "unique_id", "ds", "df", "series"]
    out = attempt(lambda: fitted.predict(context, horizon=[1.0, 3.0]), mentions)
    if out is not None:
        check_forecasts(fitted, out, 2 * context["unique_id"].nunique())
        assert set(out["unique_id"]) == set(context["unique_id"])
        band = fitted.predict_interval(context, horizon=[1.0], coverage=[0.5])
        assert band.shape == (len(out) // 2, 6) and np.isfinite(band.iloc[:, 2:].to_numpy(float)).all()
    score = attempt(lambda: fitted.score(context), mentions)
    assert score is None or np.isfinite(score)


@st.composite
def query_frames(draw: Any) -> pd.DataFrame:
    """Query rows: known/unknown series, NaN/NaT/inf/huge times, times at or before the last
    observation, duplicates, other dtypes."""
    n = draw(st.integers(1, 5))
    known = st.sampled_from([0, 1, 2, 3])
    unknown = st.sampled_from([7, "0", np.nan, 1.0])
    ids = draw(st.lists(st.one_of(known, known, known, unknown), min_size=n, max_size=n))
    offsets = st.sampled_from([0.5, 1.0, 1.0, 3.0, 3.0, 20.0, 0.0, -2.0, np.nan, np.inf, 1e300, 1e-300])
    times = [10.0 + o for o in draw(st.lists(offsets, min_size=n, max_size=n))]
    frame = pd.DataFrame({"unique_id": ids, "ds": times})
    kind = draw(st.sampled_from(["float", "float", "float", "Float64", "datetime", "str", "object"]))
    if kind == "Float64":
        frame["ds"] = frame["ds"].astype("Float64")
    elif kind == "datetime":
        frame["ds"] = pd.Timestamp("2021") + pd.to_timedelta(frame["ds"].clip(-1e4, 1e4), unit="D")
    elif kind == "str":
        frame["ds"] = frame["ds"].astype(str)
    elif kind == "object":
        frame["ds"] = frame["ds"].astype(object)
    if draw(st.booleans()):
        frame["extra"] = "x"
    return frame


@SETTINGS
@given(times=query_frames())
def test_generated_query_frames(fitted, times):
    context = base_frame()
    last = context.groupby("unique_id")["ds"].max()
    out = attempt(
        lambda: fitted.predict(context, times=times), ["times", "ds", "unique_id", "series", "query"]
    )
    if out is not None:
        check_forecasts(fitted, out, len(times))
        np.testing.assert_array_equal(out["unique_id"].to_numpy(), times["unique_id"].to_numpy())
        assert (out["ds"].to_numpy() > last[times["unique_id"]].to_numpy()).all()
        paths = fitted.sample(context, times=times, n_samples=2)
        assert paths.shape == (2, len(times), 2) and np.isfinite(paths).all()


HORIZON_ITEMS = [1, 2.5, np.float32(1.0), 0, -1, np.nan, np.inf, -np.inf, "1", None, 1e300, 1e-300]
HORIZON_ITEMS += [10**400, pd.Timedelta("1D"), True, 1j]


@SETTINGS
@given(
    horizon=st.one_of(
        st.lists(st.sampled_from(HORIZON_ITEMS), max_size=4),
        st.sampled_from(["1", 3, 2.0, None, np.array(1.0), np.array([[1.0]]), {1.0}, (1.0, 1.0), b"1"]),
    )
)
def test_generated_horizons(fitted, horizon):
    context = base_frame()
    if horizon is None:
        with pytest.raises(ValueError, match="exactly one of times"):
            fitted.predict(context, horizon=horizon)
        return
    out = attempt(lambda: fitted.predict(context, horizon=horizon), ["horizon", "gap"])
    if out is not None:
        check_forecasts(fitted, out, 4 * len(set(map(float, horizon))))


# --------------------------------------------------------------------------- targeted cases
def test_thousands_of_variables():
    rng = np.random.default_rng(0)
    values = pd.DataFrame(rng.normal(size=(6, 2000)), columns=[f"x{j}" for j in range(2000)])
    values.iloc[:, ::7] = np.nan
    ids = pd.DataFrame({"unique_id": [0, 0, 0, 1, 1, 1], "ds": [0.0, 1.0, 2.0, 0.0, 1.5, 3.0]})
    df = pd.concat([ids, values], axis=1)
    model = attempt(lambda: tiny().fit(df))
    out = attempt(lambda: model.predict(df, horizon=[1.0]))
    check_forecasts(model, out, 2)
    band = attempt(lambda: model.predict_interval(df, horizon=[1.0], coverage=[0.8]))
    assert band.shape == (2, 2 + 2 * 2000) and np.isfinite(band.iloc[:, 2:].to_numpy(float)).all()
    assert np.isfinite(attempt(lambda: model.score(df)))


@pytest.mark.parametrize("magnitude", [1e30, 1e300, 1e-300, 5e-324])
def test_extreme_magnitudes_are_forecast_in_their_own_units(magnitude):
    df = base_frame()
    df[["y1", "y2"]] = (df[["y1", "y2"]] + 3.0) * magnitude
    model = attempt(lambda: tiny().fit(df))
    out = attempt(lambda: model.predict(df, horizon=[1.0]))
    check_forecasts(model, out, 4)
    q = attempt(lambda: model.predict_quantiles(df, horizon=[1.0], quantiles=[0.1, 0.9]))
    spread = (q["y1_q90"] - q["y1_q10"]).to_numpy()
    assert np.isfinite(spread).all() and (spread <= 100 * magnitude).all()  # not on a unit scale
    assert np.isfinite(attempt(lambda: model.score(df)))


def test_values_spanning_the_float64_range():
    df = base_frame()
    df["y1"] = np.where(np.arange(len(df)) % 2, 1.5e308, -1.5e308)
    model = attempt(lambda: tiny().fit(df), ["y1"])
    if model is not None:
        out = attempt(lambda: model.predict(df, horizon=[1.0]), ["y1", "series"])
        if out is not None:
            check_forecasts(model, out, 4)


def test_context_far_outside_training_is_a_clear_error(fitted):
    df = base_frame()
    df.loc[5, "y2"] = 1e300
    with pytest.raises(ValueError, match=r"column 'y2' \(series 0\) lies too far"):
        fitted.predict(df, horizon=[1.0])
    df.loc[5, "y2"] = 1e25  # representable, but its log-density overflows
    with pytest.raises(ValueError, match="log-likelihood of df is not finite"):
        fitted.score(df)
    check_forecasts(fitted, fitted.predict(df, horizon=[1.0]), 4)


@pytest.mark.parametrize("horizon", [[1e300], [1e9]])
def test_horizon_beyond_the_model_time_range_is_refused_fast(fitted, horizon):
    with pytest.raises(ValueError, match="times the median gap"):
        fitted.predict(base_frame(), horizon=horizon)


def test_tiny_time_scale_with_a_unit_horizon():
    df = base_frame()
    df["ds"] = df["ds"] * 1e-300
    model = tiny().fit(df)
    check_forecasts(model, model.predict(df, horizon=[1e-300]), 4)
    with pytest.raises(ValueError, match=r"series 0: its queries reach .* median gap"):
        model.predict(df, horizon=[1.0])


def test_datetimes_spanning_centuries():
    df = base_frame().iloc[:8].assign(unique_id=[0] * 4 + [1] * 4)
    stamps = pd.to_datetime(["1700-01-01", "1800-06-01", "2000-01-01", "2250-01-01"])
    df["ds"] = list(stamps) * 2
    df["ds"] = df["ds"].astype("datetime64[ns]")
    model = attempt(lambda: tiny().fit(df))
    out = attempt(lambda: model.predict(df, horizon=[pd.Timedelta("3650D")]))
    check_forecasts(model, out, 2)
    assert (out["ds"] > pd.Timestamp("2250-01-01")).all()
    with pytest.raises(ValueError, match=r"outside the range of datetimes|can not be represented"):
        model.predict(df, horizon=[pd.Timedelta(days=10**9)])


def test_single_observed_value_overall_and_single_row_series():
    df = pd.DataFrame({"unique_id": ["a"], "ds": [3.0], "y": [2.0], "z": [np.nan]})
    model = attempt(lambda: tiny().fit(df))
    check_forecasts(model, model.predict(df, horizon=[1.0]), 1)
    assert np.isfinite(model.score(df))
    unseen = df.assign(unique_id="b", y=np.nan, z=5.0)
    check_forecasts(model, model.predict(unseen, horizon=[0.5, 1.0]), 2)


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (lambda df: df.iloc[:0], ValueError, "df is empty"),
        (lambda df: df[["unique_id", "ds"]], ValueError, "no value column"),
        (lambda df: df.assign(y1=np.nan, y2=np.nan), ValueError, r"series \[0, 1, 2, 3\] have no observed"),
        (
            lambda df: df.assign(y1=df["y1"].where(df["unique_id"] != 2), y2=np.nan),
            ValueError,
            r"series \[2\]",
        ),
        (
            lambda df: df.assign(unique_id=[[i] for i in df["unique_id"]]),
            TypeError,
            "'unique_id' holds an unhashable list at row 0",
        ),
        (lambda df: df.rename(columns={"y2": "y1"}), ValueError, r"duplicated column names: \['y1'\]"),
        (
            lambda df: df.rename(columns={"y2": 0}).assign(**{"0": 1.0}),
            ValueError,
            r"columns \[0, '0'\] have the same name",
        ),
        (lambda df: df.assign(y1=df["y1"].astype(complex)), TypeError, "'y1' must be real"),
        (lambda df: df.assign(ds=df["ds"].astype(str)), TypeError, "time column 'ds'"),
        (lambda df: df.assign(ds=df["ds"] > 3), TypeError, "time column 'ds'"),
    ],
)
def test_fit_rejects(edit, error, match):
    with pytest.raises(error, match=match):
        tiny().fit(edit(base_frame()))


def test_bad_column_arguments():
    df = base_frame()
    with pytest.raises(TypeError, match="id_col must be a column name"):
        tiny().fit(df, id_col=["unique_id"])
    with pytest.raises(TypeError, match="value_cols must hold column names"):
        tiny().fit(df, value_cols=[["y1"]])
    with pytest.raises(ValueError, match="id_col and time_col must differ"):
        tiny().fit(df, id_col="ds", time_col="ds")
    with pytest.raises(TypeError, match="time_unit must be a string"):
        tiny().fit(df.assign(ds=pd.to_timedelta(df["ds"], unit="h")), time_unit=["h"])


def test_bad_query_frames(fitted):
    df = base_frame()
    dup = pd.DataFrame([[0, 50.0, 51.0]], columns=["unique_id", "ds", "ds"])
    with pytest.raises(ValueError, match="more than one column named 'ds'"):
        fitted.predict(df, times=dup)
    with pytest.raises(TypeError, match="times: id column 'unique_id' holds an unhashable list"):
        fitted.predict(df, times=pd.DataFrame({"unique_id": [[0]], "ds": [50.0]}))
    with pytest.raises(ValueError, match="df is empty"):
        fitted.predict(df.iloc[:0], horizon=[1.0])
    with pytest.raises(ValueError, match="times is empty"):
        fitted.predict(df, times=pd.DataFrame({"unique_id": [], "ds": []}))


def test_datetime_model_queries():
    df = base_frame()
    df["ds"] = pd.Timestamp("2021-01-01", tz="UTC") + pd.to_timedelta(df["ds"], unit="D")
    model = tiny().fit(df)
    later = df.groupby("unique_id")["ds"].max() + pd.Timedelta("1D")
    times = pd.DataFrame({"unique_id": later.index, "ds": later.to_numpy()}, index=list("abcd"))
    check_forecasts(model, model.predict(df, times=times), 4)
    with pytest.raises(ValueError, match=r"missing value \(NaT\) at row 'c'"):
        model.predict(df, times=times.assign(ds=times["ds"].where(times.index != "c")))
    with pytest.raises(TypeError, match="must be time-zone aware"):
        model.predict(df, times=times.assign(ds=times["ds"].dt.tz_localize(None)))
    with pytest.raises(ValueError, match="not after its last observation"):
        model.predict(df, times=times.assign(ds=times["ds"] - pd.Timedelta("1D")))
