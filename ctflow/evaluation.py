"""Backtesting on long frames: forecasts from cutoffs, scored in one table, and a series splitter.

:func:`cross_validation` is the irregular-time analogue of NeuralForecast's / StatsForecast's
``cross_validation``: at each cutoff it conditions a forecaster on every row up to the cutoff and
forecasts every observation within ``horizon`` after it, returning one long frame (id, cutoff,
time, horizon, variable, actual, mean, quantiles, CRPS). :func:`ctflow.metrics.evaluate` scores
that frame by variable and horizon. The forecaster is a :class:`ctflow.Forecaster` or a baseline of
:mod:`ctflow.baselines`, so one table compares them. :class:`SeriesSplit` splits a long frame
by series for scikit-learn's ``cross_val_score`` and ``GridSearchCV``.

>>> from ctflow import Forecaster
>>> from ctflow.data import load_double_ou
>>> from ctflow.metrics import evaluate
>>> df = load_double_ou(20, seed=0)
>>> model = Forecaster(max_steps=5, val_fraction=0.0, random_state=0).fit(df)
>>> cv = cross_validation(model, df, horizon=1.0, n_windows=2, n_samples=50)
>>> list(cv.columns[:7])
['unique_id', 'cutoff', 'ds', 'horizon', 'variable', 'actual', 'mean']
>>> evaluate(cv, by=("variable",)).columns.tolist()
['variable', 'n', 'crps', 'mae', 'mse', 'coverage_50', 'coverage_80', 'coverage_90']
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from .checks import choice, positive_int
from .data.timecodec import TIME_UNITS
from .forecast import check_quantiles
from .metrics import crps_per_value

__all__ = ["SeriesSplit", "cross_validation"]

DEFAULT_QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


def _names(forecaster: Any, id_col: str | None, time_col: str | None) -> tuple[str, str]:
    fitted_id, fitted_time = getattr(forecaster, "id_col_", None), getattr(forecaster, "time_col_", None)
    return id_col or fitted_id or "unique_id", time_col or fitted_time or "ds"


def _offset(value: Any, times: pd.Series, unit: str | None = None) -> Any:
    """``horizon`` as a quantity that adds to ``times`` (a number, or a Timedelta for datetimes; a
    number counts in the forecaster's time ``unit`` there)."""
    is_time = pd.api.types.is_datetime64_any_dtype(times) or pd.api.types.is_timedelta64_dtype(times)
    if isinstance(value, str | pd.Timedelta | np.timedelta64):
        if not is_time:
            raise TypeError(f"horizon {value!r} is a time span, but the time column holds plain numbers")
        return pd.Timedelta(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value) and value > 0:
        if is_time:
            if unit is None:
                raise TypeError(f"horizon {value!r}: give a time span such as '12h' for datetime times")
            return float(value) * TIME_UNITS[unit]
        return float(value)
    raise ValueError(f"horizon must be a positive number or a time span such as '12h', got {value!r}")


def _cutoffs(
    df: pd.DataFrame,
    id_col: str,
    time_col: str,
    cutoffs: Any,
    n_windows: int | None,
    horizon: Any,
    align: str,
) -> pd.DataFrame:
    """Rows ``(id, cutoff)``: the cutoffs of every series (shared ones or each from its own end)."""
    ids = pd.unique(df[id_col])
    if cutoffs is not None:
        values = list(cutoffs) if not isinstance(cutoffs, str) else [cutoffs]
        if not values:
            raise ValueError("cutoffs is empty")
        cast = pd.Series(values).astype(df[time_col].dtype)
        return pd.DataFrame({id_col: np.repeat(ids, len(cast)), "cutoff": np.tile(cast.to_numpy(), len(ids))})
    n_windows = positive_int(n_windows if n_windows is not None else 1, "n_windows")
    steps = [horizon * (k + 1) for k in reversed(range(n_windows))]
    if align == "global":
        end = df[time_col].max()
        return pd.DataFrame(
            {id_col: np.repeat(ids, n_windows), "cutoff": np.tile([end - s for s in steps], len(ids))}
        )
    ends = df.groupby(id_col, sort=False)[time_col].max()
    rows = [(i, ends[i] - s) for i in ids for s in steps]
    return pd.DataFrame(rows, columns=[id_col, "cutoff"])


def _window(
    df: pd.DataFrame, id_col: str, time_col: str, values: list[str], at: pd.Series, horizon: Any
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Context (rows up to their series' cutoff ``at``, aligned with ``df``) and targets (observed
    rows in ``(cutoff, cutoff + horizon]``) of one window; series without either are left out."""
    context = df[df[time_col] <= at]
    observed = df[values].notna().any(axis=1)
    target = df[(df[time_col] > at) & (df[time_col] <= at + horizon) & observed]
    has_context = context[values].notna().any(axis=1).groupby(context[id_col]).any()
    keep = set(has_context.index[has_context.to_numpy()]) & set(target[id_col])
    return context[context[id_col].isin(keep)], target[target[id_col].isin(keep)]


def cross_validation(
    forecaster: Any,
    df: pd.DataFrame,
    horizon: Any,
    *,
    cutoffs: Sequence[Any] | None = None,
    n_windows: int | None = None,
    align: str = "end",
    refit: bool = False,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    n_samples: int | None = None,
    seed: int | None = 0,
    id_col: str | None = None,
    time_col: str | None = None,
    static_df: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Forecasts of every observation within ``horizon`` after each cutoff, from the rows up to it.

    Args:
        forecaster: a fitted :class:`ctflow.Forecaster` or baseline; with ``refit=True`` an
            estimator that is cloned and fitted on the rows up to each cutoff (every series).
        df: the long frame (the forecaster's id, time and value columns, inputs included).
        horizon: how far after a cutoff targets are taken: a number in the time column's units,
            or a span such as ``"12h"`` for datetime times.
        cutoffs: explicit cutoff times shared by every series; else ``n_windows`` (default 1)
            windows of length ``horizon`` back from the end: each series' own end
            (``align="end"``, for series observed over different stretches of time) or the
            frame's last time (``align="global"``).
        quantiles: levels of the quantile columns ``q{100 q}``.
        n_samples: draws behind each forecast's CRPS (default: the forecaster's).
        static_df: static covariates, for a forecaster fitted with them. A forecaster with
            known-future inputs gets the inputs of ``df`` after each cutoff as ``future_df``.

    Returns:
        One row per observed target value: id, ``cutoff``, time, ``horizon`` (time minus
        cutoff), ``variable``, ``actual``, ``mean``, the quantile columns and ``crps`` (of the
        forecast's draws), ordered by cutoff, series and time.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    choice(align, "align", ("end", "global"))
    if cutoffs is not None and n_windows is not None:
        raise ValueError("pass cutoffs or n_windows, not both")
    levels = check_quantiles(quantiles)
    id_col, time_col = _names(forecaster, id_col, time_col)
    for col in (id_col, time_col):
        if col not in df.columns:
            raise ValueError(f"df has no column {col!r}; columns are {list(map(str, df.columns))}")
    codec = getattr(forecaster, "codec_", None)
    step = _offset(horizon, df[time_col], getattr(codec, "unit", None))
    if not refit and not hasattr(forecaster, "value_cols_"):
        raise ValueError("the forecaster is not fitted: fit it first, or pass refit=True")
    windows = _cutoffs(df, id_col, time_col, cutoffs, n_windows, step, align)
    if cutoffs is not None or align == "global":  # shared cutoffs: one window each
        groups = [(windows[windows["cutoff"] == c], c) for c in pd.unique(windows["cutoff"])]
    else:  # the k-th window back from each series' own end
        per_series = windows.groupby(id_col, sort=False)
        groups = [(per_series.nth(k).reset_index(drop=True), None) for k in range(per_series.size().max())]
    options = {"levels": levels, "n_samples": n_samples, "seed": seed, "refit": refit, "static_df": static_df}
    frames = [
        _one_window(forecaster, df, cut, shared, step, id_col, time_col, **options) for cut, shared in groups
    ]
    frames = [f for f in frames if len(f)]
    if not frames:
        raise ValueError(
            f"no series has both observations up to a cutoff and observations within {horizon!r} after it"
        )
    return pd.concat(frames, ignore_index=True)


def _one_window(
    forecaster: Any,
    df: pd.DataFrame,
    cut: pd.DataFrame,
    shared: Any,
    step: Any,
    id_col: str,
    time_col: str,
    *,
    levels: list[float],
    n_samples: int | None,
    seed: int | None,
    refit: bool,
    static_df: pd.DataFrame | None,
) -> pd.DataFrame:
    """The long frame of one window: the series of ``cut`` from their cutoffs (``shared``: the
    cutoff of every one of them, needed to refit)."""
    model = forecaster
    if refit:
        if shared is None:
            raise ValueError(
                "refit=True needs cutoffs shared by every series: pass cutoffs or align='global'"
            )
        model = clone(forecaster)
        fit_kwargs = {"id_col": id_col, "time_col": time_col}
        if static_df is not None:
            fit_kwargs["static_df"] = static_df
        model.fit(df[df[time_col] <= shared], **fit_kwargs)
    values = list(model.value_cols_)
    inputs = list(getattr(model, "exog_cols_", []))
    cutoffs = cut.set_index(id_col)["cutoff"]
    at = df[id_col].map(cutoffs)  # each row's cutoff (NaN: its series is not in this window)
    context, target = _window(df, id_col, time_col, values, at, step)
    if target.empty:
        return pd.DataFrame()
    kwargs: dict[str, Any] = {"n_samples": n_samples, "seed": seed}
    if static_df is not None:
        kwargs["static_df"] = static_df
    future = list(getattr(model, "future_exog_cols_", []))
    if future:
        rows = df[(df[time_col] > at) & df[id_col].isin(target[id_col])][[id_col, time_col, *future]]
        kwargs["future_df"] = rows[rows[future].notna().any(axis=1)]
    fc = model.forecast(
        context[[id_col, time_col, *values, *inputs]], times=target[[id_col, time_col]], **kwargs
    )
    actual = target[values].to_numpy(dtype=np.float64)
    quantiles = fc.quantile_array(levels)  # (L, Q, D)
    crps = crps_per_value(fc.samples, actual)  # (Q, D)
    cutoff = target[id_col].map(cutoffs).to_numpy()
    n, d = len(target), len(values)
    out = pd.DataFrame(
        {
            id_col: np.repeat(fc.queries[id_col].to_numpy(), d),
            "cutoff": np.repeat(cutoff, d),
            time_col: np.repeat(fc.queries[time_col].to_numpy(), d),
        }
    )
    out["horizon"] = out[time_col] - out["cutoff"]
    out["variable"] = np.tile(np.asarray(values, dtype=object), n)
    out["actual"] = actual.reshape(-1)
    out["mean"] = fc.mean[values].to_numpy().reshape(-1)
    for i, level in enumerate(levels):
        out[f"q{100 * level:g}"] = quantiles[i].reshape(-1)
    out["crps"] = crps.reshape(-1)
    return out[out["actual"].notna()].reset_index(drop=True)


class SeriesSplit:
    """K-fold over the series of a long frame: every row of a series goes to the same side.

    For scikit-learn's ``cross_val_score(Forecaster(), df, cv=SeriesSplit(5))`` and
    ``GridSearchCV``: the forecaster is fitted on the rows of the training series and scored
    (:meth:`ctflow.Forecaster.score`) on the held-out series, which it has never seen. A
    row-splitting ``KFold`` would score rows in between training rows of the same series.

    Args:
        n_splits: number of folds (at least 2, at most the number of series).
        id_col: the series column.
        shuffle, random_state: shuffle the series before cutting them into folds.
    """

    def __init__(
        self, n_splits: int = 5, id_col: str = "unique_id", shuffle: bool = True, random_state: int | None = 0
    ):
        self.n_splits, self.id_col, self.shuffle, self.random_state = n_splits, id_col, shuffle, random_state

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        return positive_int(self.n_splits, "n_splits")

    def split(
        self, X: pd.DataFrame, y: Any = None, groups: Any = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Row positions ``(train, test)`` of each fold."""
        if not isinstance(X, pd.DataFrame) or self.id_col not in X.columns:
            raise ValueError(f"SeriesSplit splits a long DataFrame with an id column {self.id_col!r}")
        n_splits = self.get_n_splits()
        codes, ids = pd.factorize(X[self.id_col])
        if n_splits < 2 or n_splits > len(ids):
            raise ValueError(
                f"n_splits must be between 2 and the number of series ({len(ids)}), got {n_splits}"
            )
        order = np.arange(len(ids))
        if self.shuffle:
            order = np.random.default_rng(self.random_state).permutation(len(ids))
        fold_of = np.empty(len(ids), dtype=np.int64)
        fold_of[order] = np.arange(len(ids)) % n_splits
        rows = fold_of[codes]
        for k in range(n_splits):
            yield np.flatnonzero(rows != k), np.flatnonzero(rows == k)
