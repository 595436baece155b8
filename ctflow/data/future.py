"""Known-future inputs (planned doses, a promotion calendar) on a forecast's query grid.

A forecast that knows inputs planned after the context's end steps through them in time order
with its queries: at each query time the model predicts, at each input time it applies the
input. An input at the same time as a query comes after it (as in training, where a row's
targets are scored before its inputs act), so an input changes forecasts after its time only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .irregular import show_label
from .prepare import PreparedSeries, QueryGrid, _check_hashable, encode_finite_times, series_positions
from .timecodec import TimeCodec

__all__ = ["FutureInputs", "check_future_frame", "merge_future_inputs"]


class FutureInputs:
    """Checked future input rows: ``series`` (context positions), encoded ``times``, and
    ``values (R, E)`` over all ``E`` inputs of the model (NaN where not given)."""

    def __init__(self, series: np.ndarray, times: np.ndarray, values: np.ndarray):
        self.series, self.times, self.values = series, times, values


def check_future_frame(
    future_df: Any,
    context: PreparedSeries,
    codec: TimeCodec,
    id_col: str,
    time_col: str,
    input_cols: Sequence[str],
    future_cols: Sequence[str],
) -> FutureInputs:
    """Check ``future_df`` (id, time and the known-future inputs ``future_cols``): every declared
    input present, numeric, no past-only input, ids of the context, one row per (id, time), times
    finite and strictly after each series' context end (its last row, inputs included)."""
    if not isinstance(future_df, pd.DataFrame):
        raise TypeError(f"future_df must be a pandas DataFrame, got {type(future_df).__name__}")
    columns = [str(c) for c in future_df.columns]
    for col in (id_col, time_col):
        if col not in future_df.columns:
            raise ValueError(f"future_df has no column {col!r}; columns are {columns}")
    missing = [c for c in future_cols if c not in future_df.columns]
    if missing:
        raise ValueError(
            f"future_df lacks the known-future input(s) {missing} the model was fitted with "
            f"(expected {list(future_cols)}; NaN where an input is not given)"
        )
    past_only = [c for c in input_cols if c not in future_cols and c in future_df.columns]
    if past_only:
        raise ValueError(
            f"future_df has the past-only input(s) {past_only}: the model was fitted to know only "
            f"{list(future_cols)} in advance; drop those columns or refit with future_exog_cols"
        )
    for col in future_cols:
        dtype = future_df[col].dtype
        if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
            raise TypeError(f"future_df: input column {col!r} must be numeric, got dtype {dtype}")
    _check_hashable(future_df[id_col], "id", id_col, "future_df")
    times = encode_finite_times(future_df, codec, time_col, "future_df")
    given = future_df[list(future_cols)].to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isinf(given).any():
        r, c = np.argwhere(np.isinf(given))[0]
        raise ValueError(
            f"future_df: input {future_cols[c]!r} is infinite at row {show_label(future_df.index[r])}"
        )
    series = series_positions(context, future_df[id_col])
    unknown = np.isnan(series)
    if unknown.any():
        extra = pd.unique(future_df[id_col].to_numpy()[unknown]).tolist()
        raise ValueError(f"future_df has series {extra[:5]} that are not in the context frame")
    series = series.astype(np.int64)
    early = times <= context.last_time[series]
    if early.any():
        k = np.flatnonzero(early)[0]
        raise ValueError(
            f"future_df row {show_label(future_df.index[k])} (series "
            f"{show_label(future_df[id_col].iloc[k])}, "
            f"time {show_label(future_df[time_col].iloc[k])}) is not after the context's end for that "
            "series; future inputs must come strictly after each series' last row in the context"
        )
    dup = pd.DataFrame({"s": series, "t": times}).duplicated()
    if dup.any():
        k = np.flatnonzero(dup.to_numpy())[0]
        raise ValueError(
            f"future_df has two rows for series {show_label(future_df[id_col].iloc[k])} at time "
            f"{show_label(future_df[time_col].iloc[k])}"
        )
    values = np.full((len(future_df), len(input_cols)), np.nan)
    for j, col in enumerate(future_cols):
        values[:, list(input_cols).index(col)] = given[:, j]
    keep = ~np.isnan(values).all(1)
    return FutureInputs(series[keep], times[keep], values[keep])


def merge_future_inputs(grid: QueryGrid, future: FutureInputs, n_inputs: int) -> QueryGrid:
    """The grid with each series' future input rows before its last query merged in time order
    (a query before an input at the same time); cells carry the inputs given at them."""
    n_series = grid.times.shape[0]
    last_query = np.full(n_series, -np.inf)
    np.maximum.at(last_query, grid.series, grid.times[grid.series, grid.slot])
    useful = future.times < last_query[future.series]
    f_series, f_times, f_values = future.series[useful], future.times[useful], future.values[useful]
    n_out = grid.n_queries
    series = np.concatenate([grid.series, f_series])
    times = np.concatenate([grid.times[grid.series, grid.slot], f_times])
    kind = np.concatenate([np.zeros(n_out, dtype=np.int64), np.ones(len(f_series), dtype=np.int64)])
    order = np.lexsort((np.arange(len(series)), kind, times, series))
    counts = np.bincount(series, minlength=n_series)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    position = np.empty(len(series), dtype=np.int64)
    position[order] = np.arange(len(order)) - starts[series[order]]
    width = max(1, int(counts.max()) if len(counts) else 1)
    out_times = np.repeat(grid.times[:, :1], width, axis=1)
    out_times[series, position] = times
    filled = np.arange(width)[None, :] < counts[:, None]
    last = np.where(counts > 0, out_times[np.arange(n_series), np.maximum(counts - 1, 0)], out_times[:, 0])
    out_times = np.where(filled, out_times, last[:, None])
    inputs = np.zeros((n_series, width, n_inputs))
    input_mask = np.zeros((n_series, width, n_inputs))
    rows = np.arange(n_out, len(series))
    given = ~np.isnan(f_values)
    inputs[series[rows], position[rows]] = np.where(given, f_values, 0.0)
    input_mask[series[rows], position[rows]] = given
    return QueryGrid(out_times, grid.series, position[:n_out], inputs, input_mask)
