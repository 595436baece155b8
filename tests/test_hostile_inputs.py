"""Hostile DataFrames for Forecaster.fit / predict / score. A valid input works (finite outputs of
the right shape, no warning); an input with one defect is refused with a ValueError/TypeError whose
whole message is checked (it names the column, row, series or argument and what was expected),
and the valid input it was made from is accepted, so a check that refuses everything fails."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctflow import Forecaster
from ctflow.models.settings import GRUODEBayesSettings

TINY_MODEL = {"hidden_size": 4, "p_hidden": 4, "prep_hidden": 2}
TINY = {
    "max_epochs": 1,
    "batch_size": 8,
    "val_fraction": 0,
    "random_state": 0,
    "n_samples": 8,
}
# Every generated case fits and forecasts a valid input (the case itself, or the input its defect
# was put into): 150 cases per property keep the file's run time near that of rejection-only checks.
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
MAGNITUDES = [1.0, 1e30, 1e300, 1e-300, 5e-324]


def tiny(**params: Any) -> Forecaster:
    """A tiny Forecaster; each call holds its own settings object."""
    return Forecaster(**{"model": GRUODEBayesSettings(**TINY_MODEL), **TINY, **params})


def accepted(call: Callable[[], Any]) -> Any:
    """``call()`` with warnings as errors: a valid input gives its result, with no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


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
@dataclass
class Rejected:
    """A defective input's defect, the error it must raise (type and full-message regex), and the
    valid input it was made from, which must be accepted."""

    what: str
    error: type[Exception]
    match: str
    clean: Any


def _ids(draw: Any, kind: str, n: int) -> list[Any]:
    if kind in ("int", "category"):
        return list(range(n))
    if kind == "str":
        return [f"s{i}" for i in range(n)]
    if kind == "float":
        return [i + 0.5 for i in range(n)]
    if kind == "bool":
        return [True, False][:n] if n <= 2 else list(range(n))
    return draw(st.permutations([0, "a", 2.5, b"x"]))[:n]  # hashable, of types that do not sort together


def _times(kind: str, steps: np.ndarray, scale: float) -> Any:
    if kind == "int":
        return (steps * min(max(scale, 1.0), 1e9)).astype(np.int64)
    if kind == "float":
        return steps * scale
    if kind == "datetime":
        return pd.Timestamp("2021-01-01") + pd.to_timedelta(steps, unit="h")
    if kind == "datetime_tz":
        return pd.Timestamp("2021-03-27", tz="Europe/Paris") + pd.to_timedelta(steps * 30, unit="min")
    return pd.to_timedelta(steps, unit="s")  # timedelta


def _raw_values(draw: Any, n: int) -> np.ndarray:
    """One column of floats: a magnitude, alternating signs or not, and a pattern of NaN."""
    pattern = draw(st.sampled_from(["normal", "constant", "all_nan", "one_value", "holes"]))
    # Subnormal magnitudes (5e-324) leave too few bits for a standard deviation: they only come in
    # columns holding a single distinct value.
    magnitude = draw(st.sampled_from(MAGNITUDES if pattern in ("constant", "one_value") else MAGNITUDES[:-1]))
    x = np.arange(1, n + 1, dtype=np.float64) * magnitude
    if draw(st.booleans()):
        x[::2] *= -1
    if pattern == "constant":
        x[:] = magnitude
    elif pattern == "all_nan":
        x[:] = np.nan
    elif pattern == "one_value":
        x[1:] = np.nan
    elif pattern == "holes":
        x[draw(st.lists(st.booleans(), min_size=n, max_size=n))] = np.nan
    return x


def _as_kind(x: np.ndarray, kind: str) -> Any:
    """A float column (NaN = missing) as one of the accepted numeric dtypes."""
    if kind == "int":  # no missing values in a plain int column
        return np.where(np.isnan(x), 0, np.clip(x, -1e15, 1e15)).astype(np.int64)
    if kind == "Int64":
        return pd.array([None if np.isnan(v) else int(np.clip(v, -1e15, 1e15)) for v in x], dtype="Int64")
    if kind == "Float64":
        return pd.array([None if np.isnan(v) else v for v in x], dtype="Float64")
    return x


def _with_column(df: pd.DataFrame, col: Any, values: Any) -> pd.DataFrame:
    """A copy of ``df`` with column ``col`` replaced (dtype changes allowed, no warnings)."""
    out = df.copy()
    out[col] = pd.Series(values, index=df.index) if not isinstance(values, pd.Series) else values
    return out


def _py(value: Any) -> Any:
    """A numpy scalar as the Python value that error messages show."""
    return value.item() if isinstance(value, np.generic) else value


def _shown(value: Any) -> str:
    """Regex of a value as error messages show it (its repr)."""
    return re.escape(repr(_py(value)))


def _row_label(df: pd.DataFrame, position: int) -> str:
    return _shown(df.index[position])


FRAME_DEFECTS = (
    "missing_id",
    "unhashable_id",
    "time_dtype",
    "missing_time",
    "value_dtype",
    "complex_values",
    "infinite_value",
    "duplicate_row",
    "series_without_values",
    "names_equal_as_text",
    "duplicated_column",
    "no_value_column",
    "empty",
    "unknown_id_col",
    "empty_value_column",
)


def _frame_defect(
    draw: Any, what: str, df: pd.DataFrame, id_col: Any, time_col: Any, values: list[Any]
) -> tuple[pd.DataFrame, dict[str, Any], type[Exception], str]:
    """One defect put into a valid frame: the frame, any changed fit arguments, and the error
    (type, regex of the whole message) naming the column, row or series concerned."""
    n = len(df)
    r = draw(st.integers(0, n - 1))
    col = draw(st.sampled_from(values))
    ic, tc, vc = (re.escape(repr(c)) for c in (id_col, time_col, col))
    if what == "empty_value_column":
        bad = _with_column(df, col, np.full(n, np.nan))
        shown = re.escape(repr([col]))
        return (
            bad,
            {},
            ValueError,
            rf"^value column\(s\) {shown} have no observed value \(every row is NaN\); drop them$",
        )
    if what == "missing_id":
        ids = df[id_col].astype(object).to_numpy().copy()
        ids[r] = draw(st.sampled_from([None, np.nan]))
        return (
            _with_column(df, id_col, ids),
            {},
            ValueError,
            rf"^df: id column {ic} has a missing value at row {_row_label(df, r)}$",
        )
    if what == "unhashable_id":
        ids = df[id_col].astype(object).to_numpy().copy()
        ids[r] = [1]
        return (
            _with_column(df, id_col, ids),
            {},
            TypeError,
            (
                rf"^df: id column {ic} holds an unhashable list at row {_row_label(df, r)}; ids must be "
                r"numbers, strings or other hashable values$"
            ),
        )
    if what == "time_dtype":
        t = df[time_col]
        bad = draw(st.sampled_from(["str", "bool", "object"]))
        if bad == "str":
            new = t.astype(str)
        elif bad == "bool":
            new = pd.Series(np.arange(n) % 2 == 0, index=df.index)
        else:  # times and text mixed
            new = pd.Series([v if i % 2 else str(v) for i, v in enumerate(t)], index=df.index, dtype=object)
        return (
            _with_column(df, time_col, new),
            {},
            TypeError,
            rf"^time column {tc} must be numeric, datetime or timedelta, got dtype {new.dtype}$",
        )
    if what == "missing_time":
        t = df[time_col]
        if pd.api.types.is_numeric_dtype(t.dtype):
            new = t.astype(np.float64).to_numpy().copy()
            new[r] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
            message = rf"^time column {tc} has a missing or infinite value at row {_row_label(df, r)}$"
        else:
            new = t.copy()
            new.iloc[r] = pd.NaT
            message = rf"^time column {tc} has a missing value \(NaT\) at row {_row_label(df, r)}$"
        return _with_column(df, time_col, new), {}, ValueError, message
    if what == "value_dtype":
        x = df[col].astype(np.float64).to_numpy()
        bad = draw(st.sampled_from(["bool", "str", "object"]))
        new = {
            "bool": x > 0,
            "str": pd.Series(x).astype(str).to_numpy(dtype=object),
            "object": x.astype(object),
        }
        bad_df = _with_column(df, col, new[bad])
        return bad_df, {}, TypeError, rf"^value column {vc} must be numeric, got dtype {bad_df[col].dtype}$"
    if what == "complex_values":
        x = df[col].astype(np.float64).to_numpy()
        return (
            _with_column(df, col, x.astype(np.complex128)),
            {},
            TypeError,
            rf"^value column {vc} must be real, got dtype complex128$",
        )
    if what == "infinite_value":
        x = df[col].astype(np.float64).to_numpy().copy()
        x[r] = draw(st.sampled_from([np.inf, -np.inf]))
        return (
            _with_column(df, col, x),
            {},
            ValueError,
            rf"^infinite value in column {vc} at row {_row_label(df, r)}$",
        )
    if what == "duplicate_row":
        observed = np.flatnonzero(df[values].notna().any(axis=1).to_numpy())
        r = int(observed[draw(st.integers(0, len(observed) - 1))])
        series = _shown(df[id_col].iloc[r])
        row = _row_label(df, r)
        return (
            pd.concat([df, df.iloc[[r]]]),
            {},
            ValueError,
            (
                rf"^duplicated \(id, time\) pair: series {series} has two rows at time \S+ "
                rf"\(rows {row} and {row}\); 1 duplicated pair\(s\) in all$"
            ),
        )
    if what == "series_without_values":
        sid = df[id_col].iloc[r]
        keep = (df[id_col] != sid).to_numpy()
        bad_df = df.copy()
        for c in values:
            bad_df[c] = df[c].where(keep)
        return (
            bad_df,
            {},
            ValueError,
            rf"^df: series \[{_shown(sid)}\] have no observed value in {re.escape(repr(values))}$",
        )
    if what == "names_equal_as_text":
        return (
            df.assign(**{"7": 1.0}).join(pd.DataFrame({7: np.ones(n)}, index=df.index)),
            {},
            ValueError,
            r"^df: columns \['7', 7\] have the same name as text \('7'\); rename one of them$",
        )
    if what == "duplicated_column":
        bad_df = pd.concat([df, df[[col]]], axis=1)
        return bad_df, {}, ValueError, rf"^df has duplicated column names: \[{re.escape(repr(str(col)))}\]$"
    if what == "no_value_column":
        return df[[id_col, time_col]], {}, ValueError, rf"^df has no value column besides {ic} and {tc}$"
    if what == "empty":
        return df.iloc[:0], {}, ValueError, r"^df is empty \(no rows\)$"
    # unknown_id_col
    columns = re.escape(repr(list(map(str, df.columns))))
    return df, {"id_col": "series"}, ValueError, rf"^df has no id column 'series'; columns are {columns}$"


@st.composite
def frames(draw: Any) -> tuple[pd.DataFrame, dict[str, Any], Rejected | None]:
    """A valid long frame with random dtypes, missing-value patterns, magnitudes, row order and
    column names, with its fit arguments; in three cases out of four one defect is put into it,
    and the case says which error that must raise."""
    n_series = draw(st.integers(1, 3))
    lengths = draw(st.lists(st.integers(1, 4), min_size=n_series, max_size=n_series))
    n = sum(lengths)
    time_kind = draw(st.sampled_from(["float"] * 3 + ["int", "datetime", "datetime_tz", "timedelta"]))
    id_kind = draw(st.sampled_from(["int", "str", "float", "category", "bool", "mixed"]))
    kinds = draw(
        st.lists(st.sampled_from(["float"] * 4 + ["int", "Int64", "Float64"]), min_size=1, max_size=3)
    )
    ids = _ids(draw, id_kind, n_series)
    series = np.repeat(np.arange(n_series), lengths)
    steps = np.concatenate([np.cumsum(draw(st.permutations([1, 2, 3, 4])))[:k] for k in lengths])
    scale = draw(st.sampled_from([1.0, 1e-6, 1e6, 1e300, 1e-300]))
    names = draw(st.sampled_from(["plain", "int", "collide"]))
    id_col, time_col = ("id", "time") if names == "collide" else ("unique_id", "ds")
    value_names: list[Any] = {
        "plain": [f"v{j}" for j in range(3)],
        "int": [0, 1, 2],
        "collide": ["unique_id", "ds", "v2"],  # legal names once id and time are elsewhere
    }[names][: len(kinds)]
    raw = np.stack([_raw_values(draw, n) for _ in kinds], axis=1)
    for s in range(n_series):  # every series has an observed value
        first = int(np.flatnonzero(series == s)[0])
        if np.isnan(raw[series == s]).all():
            raw[first, 0] = 1.0
    for j in range(raw.shape[1]):  # and so has every value column
        if np.isnan(raw[:, j]).all():
            raw[0, j] = 1.0
    df = pd.DataFrame(
        {id_col: [ids[s] for s in series], time_col: _times(time_kind, steps.astype(float), scale)}
    )
    if id_kind == "category":
        df[id_col] = df[id_col].astype("category")
    for j, (name, kind) in enumerate(zip(value_names, kinds, strict=True)):
        df[name] = _as_kind(raw[:, j], kind)
    if draw(st.booleans()):
        df = df.iloc[draw(st.permutations(range(n)))]
    kwargs = {} if names != "collide" else {"id_col": id_col, "time_col": time_col}
    if draw(st.integers(0, 3)) == 0:  # a quarter of the cases are valid as they are
        return df, kwargs, None
    what = draw(st.sampled_from(FRAME_DEFECTS))
    bad, changed, error, match = _frame_defect(draw, what, df, id_col, time_col, value_names)
    return bad, {**kwargs, **changed}, Rejected(what, error, match, (df, kwargs))


def check_fit_predict_score(df: pd.DataFrame, kwargs: dict[str, Any]) -> None:
    """A valid frame is accepted (warnings are errors): fit, forecasts and samples of the right
    shape and finite, a finite score."""
    id_col = kwargs.get("id_col", "unique_id")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = tiny().fit(df, **kwargs)
        gap = model.scaling_.time_scale  # in the model's time unit: steps of a typical gap
        horizon = [gap, 2 * gap]
        out = model.predict(df, horizon=horizon)
        check_forecasts(model, out, df[id_col].nunique(dropna=False) * len(set(horizon)))
        draws = model.sample(df, horizon=horizon, n_samples=3)
        assert draws.shape == (3, len(out), len(model.value_cols_)) and np.isfinite(draws).all()
        assert np.isfinite(model.score(df))


@SETTINGS
@given(case=frames())
def test_generated_frames_fit_predict_score(case):
    """Random dtypes, NaN patterns, magnitudes, order and names: a valid frame is fitted, forecast
    and scored; a frame with one defect is refused with the error naming it, while the frame it
    was made from is accepted."""
    df, kwargs, rejected = case
    if rejected is None:
        check_fit_predict_score(df, kwargs)
        return
    with pytest.raises(rejected.error, match=rejected.match):
        tiny().fit(df, **kwargs)
    check_fit_predict_score(*rejected.clean)


# --------------------------------------------------------------------------- prediction contexts
CONTEXT_DEFECTS = (
    "series_without_values",
    "text_values",
    "object_values",
    "infinite_value",
    "duplicate_row",
    "far_values",
    "missing_id",
    "datetime_times",
)


def _context_defect(draw: Any, what: str, df: pd.DataFrame) -> tuple[pd.DataFrame, type[Exception], str]:
    """One defect put into a valid context of the ``fitted`` model, and the error it must raise."""
    r = draw(st.integers(0, len(df) - 1))
    col = draw(st.sampled_from(["y1", "y2"]))
    if what == "series_without_values":
        sid = df["unique_id"].iloc[r]
        keep = (df["unique_id"] != sid).to_numpy()
        bad = df.assign(y1=df["y1"].where(keep), y2=df["y2"].where(keep))
        return bad, ValueError, rf"^df: series \[{_shown(sid)}\] have no observed value in \['y1', 'y2'\]$"
    if what in ("text_values", "object_values"):
        bad = _with_column(df, col, df[col].astype(str if what == "text_values" else object))
        return bad, TypeError, rf"^value column '{col}' must be numeric, got dtype {bad[col].dtype}$"
    if what == "infinite_value":
        x = df[col].astype(np.float64).to_numpy().copy()
        x[r] = draw(st.sampled_from([np.inf, -np.inf]))
        return (
            _with_column(df, col, x),
            ValueError,
            rf"^infinite value in column '{col}' at row {_row_label(df, r)}$",
        )
    if what == "duplicate_row":
        observed = np.flatnonzero(df[["y1", "y2"]].notna().any(axis=1).to_numpy())
        r = int(observed[draw(st.integers(0, len(observed) - 1))])
        series, row = _shown(df["unique_id"].iloc[r]), _row_label(df, r)
        return (
            pd.concat([df, df.iloc[[r]]]),
            ValueError,
            (
                rf"^duplicated \(id, time\) pair: series {series} has two rows at time \S+ "
                rf"\(rows {row} and {row}\); 1 duplicated pair\(s\) in all$"
            ),
        )
    if what == "far_values":
        col = "y1" if df["y1"].notna().any() else "y2"
        # Every observed value of the column becomes 1e300: the first in series order (ids sorted,
        # then times) is named.
        first = df[df[col].notna()].sort_values(["unique_id", "ds"])["unique_id"].iloc[0]
        bad = _with_column(df, col, df[col].astype(np.float64).where(df[col].isna(), 1e300))
        return (
            bad,
            ValueError,
            (
                rf"^value \S+ of column '{col}' \(series {_shown(first)}\) lies too far from "
                r"the training values \(mean \S+, standard deviation \S+\) for the model$"
            ),
        )
    if what == "missing_id":
        ids = df["unique_id"].astype(np.float64).to_numpy().copy()
        ids[r] = np.nan
        return (
            _with_column(df, "unique_id", ids),
            ValueError,
            rf"^df: id column 'unique_id' has a missing value at row {_row_label(df, r)}$",
        )
    # datetime_times: the model was fitted on numbers
    bad = _with_column(df, "ds", pd.Timestamp("2021-01-01") + pd.to_timedelta(df["ds"], unit="D"))
    return (
        bad,
        TypeError,
        (
            rf"^time column 'ds' has dtype {re.escape(str(bad['ds'].dtype))} but the model was fitted on "
            r"numeric times$"
        ),
    )


@st.composite
def contexts(draw: Any) -> tuple[pd.DataFrame, Rejected | None]:
    """The training frame edited in ways that keep it a valid context (unseen series, fewer rows,
    rescaled or integer values, one variable missing, extra columns, order, index); in three
    cases out of four with one defect as well."""
    df = base_frame()
    if draw(st.booleans()):
        df["unique_id"] = df["unique_id"] + draw(st.sampled_from([0, 10, 100]))
    if draw(st.booleans()):
        keep = draw(st.lists(st.integers(0, len(df) - 1), min_size=1, max_size=len(df), unique=True))
        df = df.iloc[keep]
    # At most one variable gets missing values, so every row keeps an observed value.
    holes = draw(st.sampled_from(["y1", "y2", None]))
    for col in ("y1", "y2"):
        edits = ["none", "scale", "Int64_complete"] + (["nan", "Int64", "Float64"] if col == holes else [])
        edit = draw(st.sampled_from(edits))
        if edit == "scale":
            df[col] = df[col] * draw(st.sampled_from([1e-300, 1e3, 1e10]))
        elif edit == "nan":
            df[col] = np.nan
        elif edit.startswith("Int64"):
            df[col] = pd.array(np.round(df[col].to_numpy() * 10).astype(int), dtype="Int64")
            if edit == "Int64":
                df.loc[df.index[0], col] = pd.NA
        elif edit == "Float64":
            df[col] = df[col].astype("Float64")
            df.loc[df.index[-1], col] = pd.NA
    extra = draw(st.sampled_from(["none", "str", "complex", "datetime", "list"]))
    if extra != "none":  # columns other than id, time and the model's variables are ignored
        filler = {"str": "x", "complex": 1j, "datetime": pd.Timestamp("2020"), "list": [1]}[extra]
        df["extra"] = [filler] * len(df)
    if draw(st.booleans()):
        df = df.iloc[::-1]
    if draw(st.booleans()):
        df.index = ["r"] * len(df)
    if draw(st.integers(0, 3)) == 0:
        return df, None
    what = draw(st.sampled_from(CONTEXT_DEFECTS))
    bad, error, match = _context_defect(draw, what, df)
    return bad, Rejected(what, error, match, df)


def check_context_accepted(model: Forecaster, context: pd.DataFrame) -> None:
    """Forecasts and intervals for each series of a valid context, and a finite score."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.predict(context, horizon=[1.0, 3.0])
        check_forecasts(model, out, 2 * context["unique_id"].nunique())
        assert set(out["unique_id"]) == set(context["unique_id"])
        band = model.predict_interval(context, horizon=[1.0], coverage=[0.5])
        assert band.shape == (len(out) // 2, 6) and np.isfinite(band.iloc[:, 2:].to_numpy(float)).all()
        assert np.isfinite(model.score(context))


@SETTINGS
@given(case=contexts())
def test_generated_contexts(fitted, case):
    """A valid context is forecast and scored; one with a defect is refused by ``predict`` and
    ``score`` with the error naming it, while the context it was made from is accepted."""
    context, rejected = case
    if rejected is None:
        check_context_accepted(fitted, context)
        return
    with pytest.raises(rejected.error, match=rejected.match):
        fitted.predict(context, horizon=[1.0, 3.0])
    with pytest.raises(rejected.error, match=rejected.match):
        fitted.score(context)
    check_context_accepted(fitted, rejected.clean)


# --------------------------------------------------------------------------- query frames
QUERY_DEFECTS = (
    "unknown_series",
    "missing_time",
    "time_dtype",
    "not_after_last",
    "beyond_time_range",
    "unhashable_id",
    "repeated_time_column",
    "missing_time_column",
    "empty",
)


def _query_defect(draw: Any, what: str, times: pd.DataFrame) -> tuple[pd.DataFrame, type[Exception], str]:
    """One defect put into valid query rows for ``base_frame()``, and the error it must raise."""
    r = draw(st.integers(0, len(times) - 1))
    row = _row_label(times, r)
    sid = _py(times["unique_id"].iloc[r])
    if what == "unknown_series":
        unknown = draw(st.sampled_from([7, "0", np.nan]))
        ids = times["unique_id"].astype(object).to_numpy().copy()
        ids[r] = unknown
        return (
            _with_column(times, "unique_id", ids),
            ValueError,
            rf"^times asks for series \[{_shown(unknown)}\] that have no observation in the context frame$",
        )
    if what == "missing_time":
        t = times["ds"].copy()
        t.iloc[r] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return (
            _with_column(times, "ds", t),
            ValueError,
            rf"^times: column 'ds' has a missing or infinite value at row {row}$",
        )
    if what == "time_dtype":
        t = times["ds"].astype(np.float64)
        new = draw(
            st.sampled_from(
                [
                    pd.Timestamp("2021") + pd.to_timedelta(t, unit="D"),
                    t.astype(str),
                    t.astype(object),
                    pd.to_timedelta(t, unit="D"),
                ]
            )
        )
        return (
            _with_column(times, "ds", new),
            TypeError,
            (
                rf"^time column 'ds' has dtype {re.escape(str(new.dtype))} but the model was fitted on "
                r"numeric times$"
            ),
        )
    if what == "not_after_last":
        last = base_frame().groupby("unique_id")["ds"].max()[sid]
        value = last - draw(st.sampled_from([0.0, 1.0]))
        t = times["ds"].astype(np.float64).copy()
        t.iloc[r] = value
        return (
            _with_column(times, "ds", t),
            ValueError,
            (
                rf"^query time {_shown(value)} of series {_shown(sid)} \(row {row}\) is not after its last "
                r"observation; forecasts must lie strictly after each series' last observed time$"
            ),
        )
    if what == "beyond_time_range":
        t = times["ds"].astype(np.float64).copy()
        t.iloc[r] = 10.0 + draw(st.sampled_from([1e9, 1e300]))  # named by its context series' id
        return (
            _with_column(times, "ds", t),
            ValueError,
            (
                rf"^series {_shown(int(sid))}: its queries reach \S+ times the median gap between training "
                r"observations \(\S+ time units\) after its first observation; the model resolves at "
                r"most \S+ gaps$"
            ),
        )
    if what == "unhashable_id":
        ids = times["unique_id"].astype(object).to_numpy().copy()
        ids[r] = [sid]
        return (
            _with_column(times, "unique_id", ids),
            TypeError,
            (
                rf"^times: id column 'unique_id' holds an unhashable list at row {row}; ids must be "
                r"numbers, strings or other hashable values$"
            ),
        )
    if what == "repeated_time_column":
        bad = pd.concat([times, times[["ds"]] + 1.0], axis=1)
        return bad, ValueError, r"^times has more than one column named 'ds'$"
    if what == "missing_time_column":
        bad = times.drop(columns="ds")
        columns = re.escape(repr(list(map(str, bad.columns))))
        return bad, ValueError, rf"^times has no column 'ds'; columns are {columns}$"
    return times.iloc[:0], ValueError, r"^times is empty \(no query rows\)$"


@st.composite
def query_frames(draw: Any) -> tuple[pd.DataFrame, Rejected | None]:
    """Valid query rows for ``base_frame()`` (known series, float ids equal to them, times after
    the last observation, repeats, nullable floats, extra columns, any order); in three cases
    out of four with one defect as well."""
    n = draw(st.integers(1, 5))
    ids = draw(st.lists(st.sampled_from([0, 1, 2, 3, 1.0]), min_size=n, max_size=n))
    # Every series' last observation is before 8.
    offsets = st.sampled_from([0.5, 1.0, 1.0, 3.0, 3.0, 20.0, 0.0, -2.0, 1e-300])
    times = [10.0 + o for o in draw(st.lists(offsets, min_size=n, max_size=n))]
    frame = pd.DataFrame({"unique_id": ids, "ds": times})
    if draw(st.booleans()):
        frame["ds"] = frame["ds"].astype("Float64")
    if draw(st.booleans()):
        frame["extra"] = "x"
    if draw(st.booleans()):
        frame.index = draw(st.permutations(["a", "b", "c", "d", "e"]))[:n]
    if draw(st.integers(0, 3)) == 0:
        return frame, None
    what = draw(st.sampled_from(QUERY_DEFECTS))
    bad, error, match = _query_defect(draw, what, frame)
    return bad, Rejected(what, error, match, frame)


def check_queries_accepted(model: Forecaster, times: pd.DataFrame) -> None:
    """One forecast per query row, in the rows' order, after each series' last observation."""
    context = base_frame()
    last = context.groupby("unique_id")["ds"].max()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.predict(context, times=times)
        check_forecasts(model, out, len(times))
        np.testing.assert_array_equal(out["unique_id"].to_numpy(), times["unique_id"].to_numpy())
        assert (out["ds"].to_numpy() > last[times["unique_id"]].to_numpy()).all()
        paths = model.sample(context, times=times, n_samples=2)
        assert paths.shape == (2, len(times), 2) and np.isfinite(paths).all()


@SETTINGS
@given(case=query_frames())
def test_generated_query_frames(fitted, case):
    """Valid query rows are forecast; rows with a defect are refused with the error naming it,
    while the rows they were made from are accepted."""
    times, rejected = case
    if rejected is None:
        check_queries_accepted(fitted, times)
        return
    with pytest.raises(rejected.error, match=rejected.match):
        fitted.predict(base_frame(), times=times)
    check_queries_accepted(fitted, rejected.clean)


# --------------------------------------------------------------------------- horizons
HORIZON_ITEMS = [1, 2.5, np.float32(1.0), 0, -1, np.nan, np.inf, -np.inf, "1", None, 1e300, 1e-300]
HORIZON_ITEMS += [10**400, pd.Timedelta("1D"), True, 1j]
NOT_A_LIST = ["1", 3, 2.0, None, np.array(1.0), np.array([[1.0]]), {1.0}, (1.0, 1.0), b"1"]


def horizon_error(horizon: Any, time_scale: float) -> tuple[type[Exception], str] | None:
    """The error ``predict(..., horizon=horizon)`` must raise (None when it must succeed) for a
    model on numeric times with median gap ``time_scale`` and a context of series spanning a
    few gaps: the horizon is a 1-D list of positive finite numbers within ``2**24`` gaps."""
    if horizon is None:
        return ValueError, r"^pass exactly one of times \(a DataFrame of id, time\) or horizon \(offsets\)$"
    if isinstance(horizon, str | bytes) or not isinstance(horizon, list | tuple | np.ndarray):
        return TypeError, rf"^horizon must be a list of positive offsets, got {type(horizon).__name__}$"
    if isinstance(horizon, np.ndarray) and horizon.ndim != 1:
        shape = re.escape(str(horizon.shape))
        return TypeError, rf"^horizon must be a 1-D list of offsets, got an array of shape {shape}$"
    if len(horizon) == 0:
        return ValueError, r"^horizon must hold at least one offset$"
    for h in horizon:
        if isinstance(h, pd.Timedelta):
            return TypeError, r"^timedelta horizon offsets need datetime or timedelta times$"
        if isinstance(h, str):
            shown = re.escape(repr(h))
            return (
                TypeError,
                rf"^horizon offset {shown} is a time span, but the model's times are plain numbers; "
                "give numbers$",
            )
        if isinstance(h, bool) or not isinstance(h, int | float | np.floating):
            return TypeError, rf"^horizon offsets must be numbers or timedeltas, got {re.escape(repr(h))}$"
        try:
            value = float(h)
        except OverflowError:  # an int beyond the float range
            value = math.inf
        if not (np.isfinite(value) and value > 0):
            shown = repr(h) if len(repr(h)) <= 40 else f"{repr(h)[:20]}... ({value:.3g})"
            return ValueError, rf"^horizon offsets must be positive and finite, got {re.escape(shown)}$"
    if max(float(h) for h in horizon) > 2**24 * time_scale:  # series 0 is the first to reach it
        return ValueError, r"^series 0: its queries reach \S+ times the median gap between training "
    return None


@SETTINGS
@given(horizon=st.one_of(st.lists(st.sampled_from(HORIZON_ITEMS), max_size=4), st.sampled_from(NOT_A_LIST)))
def test_generated_horizons(fitted, horizon):
    """A horizon that breaks a rule is refused with the error for that rule; its valid offsets
    (or a unit offset when none is valid) are forecast."""
    context, gap = base_frame(), fitted.scaling_.time_scale
    expected = horizon_error(horizon, gap)
    if expected is not None:
        with pytest.raises(expected[0], match=expected[1]):
            fitted.predict(context, horizon=horizon)
        valid = [h for h in horizon if horizon_error([h], gap) is None] if isinstance(horizon, list) else []
        horizon = valid or [1.0]
    assert horizon_error(horizon, gap) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fitted.predict(context, horizon=horizon)
    check_forecasts(fitted, out, 4 * len(set(map(float, horizon))))


# --------------------------------------------------------------------------- targeted cases
def test_thousands_of_variables():
    rng = np.random.default_rng(0)
    values = pd.DataFrame(rng.normal(size=(6, 2000)), columns=[f"x{j}" for j in range(2000)])
    values.iloc[1:, ::7] = np.nan  # observed once: the second series never sees them
    ids = pd.DataFrame({"unique_id": [0, 0, 0, 1, 1, 1], "ds": [0.0, 1.0, 2.0, 0.0, 1.5, 3.0]})
    df = pd.concat([ids, values], axis=1)
    model = accepted(lambda: tiny().fit(df))
    out = accepted(lambda: model.predict(df, horizon=[1.0]))
    check_forecasts(model, out, 2)
    band = accepted(lambda: model.predict_interval(df, horizon=[1.0], coverage=[0.8]))
    assert band.shape == (2, 2 + 2 * 2000) and np.isfinite(band.iloc[:, 2:].to_numpy(float)).all()
    assert np.isfinite(accepted(lambda: model.score(df)))
    empty = df.assign(**{f"x{j}": np.nan for j in range(0, 2000, 7)})
    with pytest.raises(
        ValueError, match=r"^value column\(s\) \['x0', 'x7', 'x14', 'x21', 'x28'\] and 281 more have no"
    ):
        tiny().fit(empty)


@pytest.mark.parametrize("magnitude", [1e30, 1e300, 1e-300, 5e-324])
def test_extreme_magnitudes_are_forecast_in_their_own_units(magnitude):
    df = base_frame()
    df[["y1", "y2"]] = (df[["y1", "y2"]] + 3.0) * magnitude
    model = accepted(lambda: tiny().fit(df))
    out = accepted(lambda: model.predict(df, horizon=[1.0]))
    check_forecasts(model, out, 4)
    q = accepted(lambda: model.predict_quantiles(df, horizon=[1.0], quantiles=[0.1, 0.9]))
    spread = (q["y1_q90"] - q["y1_q10"]).to_numpy()
    assert np.isfinite(spread).all() and (spread <= 100 * magnitude).all()  # not on a unit scale
    assert np.isfinite(accepted(lambda: model.score(df)))


def test_values_spanning_the_float64_range():
    """Values of +-1.5e308 (a difference beyond the float64 range) are standardised and forecast."""
    df = base_frame()
    df["y1"] = np.where(np.arange(len(df)) % 2, 1.5e308, -1.5e308)
    model = accepted(lambda: tiny().fit(df))
    check_forecasts(model, accepted(lambda: model.predict(df, horizon=[1.0])), 4)


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
    model = accepted(lambda: tiny().fit(df))
    out = accepted(lambda: model.predict(df, horizon=[pd.Timedelta("3650D")]))
    check_forecasts(model, out, 2)
    assert (out["ds"] > pd.Timestamp("2250-01-01")).all()
    with pytest.raises(ValueError, match=r"outside the range of datetimes|can not be represented"):
        model.predict(df, horizon=[pd.Timedelta(days=10**9)])


def test_single_observed_value_overall_and_single_row_series():
    df = pd.DataFrame({"unique_id": ["a"], "ds": [3.0], "y": [2.0]})
    model = accepted(lambda: tiny().fit(df))
    check_forecasts(model, model.predict(df, horizon=[1.0]), 1)
    assert np.isfinite(model.score(df))
    unseen = df.assign(unique_id="b", ds=1.0, y=5.0)
    check_forecasts(model, model.predict(unseen, horizon=[0.5, 1.0]), 2)
    with pytest.raises(ValueError, match=r"^value column\(s\) \['z'\] have no observed value"):
        tiny().fit(df.assign(z=np.nan))  # a variable never observed cannot be learned


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (lambda df: df.iloc[:0], ValueError, r"^df is empty \(no rows\)$"),
        (
            lambda df: df[["unique_id", "ds"]],
            ValueError,
            r"^df has no value column besides 'unique_id' and 'ds'$",
        ),
        (
            lambda df: df.assign(y1=np.nan, y2=np.nan),
            ValueError,
            r"^df: series \[0, 1, 2, 3\] have no observed value in \['y1', 'y2'\]$",
        ),
        (
            lambda df: df.assign(y1=df["y1"].where(df["unique_id"] != 2), y2=np.nan),
            ValueError,
            r"^df: series \[2\] have no observed value in \['y1', 'y2'\]$",
        ),
        (
            lambda df: df.assign(unique_id=[[i] for i in df["unique_id"]]),
            TypeError,
            r"^df: id column 'unique_id' holds an unhashable list at row 0; ids must be numbers, "
            r"strings or other hashable values$",
        ),
        (
            lambda df: df.rename(columns={"y2": "y1"}),
            ValueError,
            r"^df has duplicated column names: \['y1'\]$",
        ),
        (
            lambda df: df.rename(columns={"y2": 0}).assign(**{"0": 1.0}),
            ValueError,
            r"^df: columns \[0, '0'\] have the same name as text \('0'\); rename one of them$",
        ),
        (
            lambda df: df.assign(y1=df["y1"].astype(complex)),
            TypeError,
            r"^value column 'y1' must be real, got dtype complex128$",
        ),
        (
            lambda df: df.assign(ds=df["ds"].astype(str)),
            TypeError,
            r"^time column 'ds' must be numeric, datetime or timedelta, got dtype (str|object)$",
        ),
        (
            lambda df: df.assign(ds=df["ds"] > 3),
            TypeError,
            r"^time column 'ds' must be numeric, datetime or timedelta, got dtype bool$",
        ),
    ],
)
def test_fit_rejects(fitted, edit, error, match):
    """Each edit of the training frame is refused with its message; the frame itself is accepted
    (``fitted`` is fitted on it)."""
    with pytest.raises(error, match=match):
        tiny().fit(edit(base_frame()))
    check_forecasts(fitted, fitted.predict(base_frame(), horizon=[1.0]), 4)


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


def test_ids_of_types_that_do_not_order_together_work_with_datetimes():
    times = pd.to_datetime(["2024-01-01", "2024-01-03", "2024-01-02", "2024-01-05", "2024-01-06"])
    df = pd.DataFrame({"unique_id": [1, 1, "a", "a", "a"], "ds": times, "y": [0.0, 1.0, 2.0, 2.5, 3.0]})
    model = tiny().fit(df)
    assert model.codec_.unit == "D"
    assert list(model.predict(df, horizon=[1.0])["unique_id"]) == [1, "a"]
