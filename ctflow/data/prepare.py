"""From a user's long DataFrame to model-ready tensors, and query points to forecast at.

The estimator's pandas work lives here: checking a frame's columns, encoding its times
(:class:`~ctflow.data.timecodec.TimeCodec`), shifting each series to start at time 0 (so that
large absolute times, e.g. seconds since 1970, keep their precision in float32), scaling the
time axis and each variable, and turning forecast queries (a frame of (id, time) pairs or a list
of horizon offsets) into a padded grid of per-series query times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch

from .irregular import IrregularBatch, from_dataframe, show_label
from .timecodec import TimeCodec

__all__ = [
    "PreparedSeries",
    "QueryGrid",
    "Scaling",
    "check_exog_columns",
    "check_frame",
    "prepare_series",
    "query_grid",
]


# Model times are float32: beyond 2**24 typical gaps from a series' start they no longer resolve one gap.
MAX_MODEL_TIME = float(2**24)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_hashable(column: pd.Series, role: str, col: Any, name: str) -> None:
    """A TypeError naming the first row whose value cannot serve as a key (lists, dicts, ...)."""
    if column.dtype != object:
        return
    for row, value in zip(column.index, column.to_numpy(), strict=True):
        try:
            hash(value)
        except TypeError:
            raise TypeError(
                f"{name}: {role} column {col!r} holds an unhashable {type(value).__name__} at row "
                f"{show_label(row)}; ids must be numbers, strings or other hashable values"
            ) from None


def check_frame(
    df: Any, id_col: str, time_col: str, value_cols: Sequence[str] | None, name: str = "df"
) -> list[str]:
    """Check the frame's type, emptiness and columns; return the value columns.

    ``value_cols=None`` takes every column except id and time.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    for arg, col in (("id_col", id_col), ("time_col", time_col)):
        try:
            hash(col)
        except TypeError:
            raise TypeError(f"{arg} must be a column name, got {type(col).__name__} {col!r}") from None
    if len(df) == 0:
        raise ValueError(f"{name} is empty (no rows)")
    if df.columns.duplicated().any():
        dup = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
        raise ValueError(f"{name} has duplicated column names: {dup}")
    for role, col in (("id", id_col), ("time", time_col)):
        if col not in df.columns:
            raise ValueError(f"{name} has no {role} column {col!r}; columns are {list(map(str, df.columns))}")
    if id_col == time_col:
        raise ValueError(f"id_col and time_col must differ, both are {id_col!r}")
    if value_cols is None:
        values = [c for c in df.columns if c not in (id_col, time_col)]
    else:
        if isinstance(value_cols, str):
            value_cols = [value_cols]
        values = list(value_cols)
        for col in values:
            try:
                hash(col)
            except TypeError:
                raise TypeError(
                    f"value_cols must hold column names, got {type(col).__name__} {col!r}"
                ) from None
        missing = [c for c in values if c not in df.columns]
        if missing:
            raise ValueError(f"{name} lacks the value column(s) {missing}")
        clash = [c for c in values if c in (id_col, time_col)]
        if clash:
            raise ValueError(f"value column(s) {clash} are also the id or time column")
        if len(set(values)) != len(values):
            raise ValueError(f"value_cols repeats a column: {values}")
    if not values:
        raise ValueError(f"{name} has no value column besides {id_col!r} and {time_col!r}")
    as_text = pd.Series([str(c) for c in (id_col, time_col, *values)])
    if as_text.duplicated().any():
        text = as_text[as_text.duplicated()].iloc[0]
        same = [c for c in (id_col, time_col, *values) if str(c) == text]
        raise ValueError(f"{name}: columns {same} have the same name as text ({text!r}); rename one of them")
    for col in values:
        dtype = df[col].dtype
        if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
            raise TypeError(f"value column {col!r} must be numeric, got dtype {dtype}")
        if pd.api.types.is_complex_dtype(dtype):
            raise TypeError(f"value column {col!r} must be real, got dtype {dtype}")
    _check_hashable(df[id_col], "id", id_col, name)
    return values


def _column_list(cols: Any, argument: str) -> list:
    """``cols`` (a name or a list of names) as a list, each name hashable and named once."""
    cols = [cols] if isinstance(cols, str) else list(cols)
    for col in cols:
        try:
            hash(col)
        except TypeError:
            raise TypeError(f"{argument} must hold column names, got {type(col).__name__} {col!r}") from None
    if len(set(cols)) != len(cols):
        raise ValueError(f"{argument} repeats a column: {cols}")
    return cols


def check_exog_columns(
    df: pd.DataFrame,
    id_col: str,
    time_col: str,
    value_cols: Sequence[str] | None,
    exog_cols: Sequence[str] | None,
    future_exog_cols: Sequence[str] | None,
) -> tuple[list, list]:
    """The checked input columns and the known-future ones among them (None: all of them)."""
    if exog_cols is None:
        if future_exog_cols:
            raise ValueError("future_exog_cols names inputs, but exog_cols is not given")
        return [], []
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    exog = _column_list(exog_cols, "exog_cols")
    for col in exog:
        if col in (id_col, time_col):
            raise ValueError(f"input column {col!r} is also the id or time column")
        if col not in df.columns:
            raise ValueError(f"df has no input column {col!r}; columns are {list(map(str, df.columns))}")
        dtype = df[col].dtype
        if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
            raise TypeError(f"input column {col!r} must be numeric, got dtype {dtype}")
        if pd.api.types.is_complex_dtype(dtype):
            raise TypeError(f"input column {col!r} must be real, got dtype {dtype}")
    if value_cols is not None:
        values = [value_cols] if isinstance(value_cols, str) else list(value_cols)
        both = [c for c in exog if c in values]
        if both:
            raise ValueError(
                f"column(s) {both} are named both as targets (value_cols) and as inputs (exog_cols); "
                "a column is either forecast or conditioned on"
            )
    if future_exog_cols is None:
        return exog, list(exog)
    future = _column_list(future_exog_cols, "future_exog_cols")
    unknown = [c for c in future if c not in exog]
    if unknown:
        raise ValueError(f"future_exog_cols names {unknown}, which are not among exog_cols {exog}")
    return exog, [c for c in exog if c in future]


@dataclass(frozen=True)
class Scaling:
    """Affine maps of the time axis and of each variable: model units = (x - mean) / scale; and
    of each exogenous input: model units = u / input_scale (not centred, so that "no dose" and
    "a dose" stay apart when every dose is the same)."""

    time_scale: float
    mean: np.ndarray
    scale: np.ndarray
    input_scale: np.ndarray | None = None

    @classmethod
    def fit(cls, batch: IrregularBatch) -> Scaling:
        """Mean and standard deviation of each variable's observed values (1 where constant), and
        the median gap between a series' consecutive observations (1 when there is none).

        Both are computed on values divided by the variable's largest magnitude, so that neither
        huge (1e300) nor tiny (1e-300) values overflow or underflow. The gaps are those between
        rows with a target observed; each input's scale is the root mean square of its given
        values (1 where all are 0).
        """
        values = batch.values.double().numpy()
        mask = batch.mask.double().numpy() > 0
        count = mask.sum((0, 1))
        peak = np.where(mask, np.abs(values), 0.0).max((0, 1), initial=0.0)
        unit = np.where(peak > 0, peak, 1.0)
        unit_values = np.where(mask, values / unit, 0.0)
        unit_mean = unit_values.sum((0, 1)) / np.maximum(count, 1)
        unit_var = (np.where(mask, unit_values - unit_mean, 0.0) ** 2).sum((0, 1)) / np.maximum(count, 1)
        unit_scale = np.sqrt(unit_var)
        with np.errstate(over="ignore"):
            mean = unit_mean * unit
            scale = np.where(unit_scale > 1e-12, unit_scale * unit, 1.0)
        bad = ~(np.isfinite(scale) & (scale > 0) & np.isfinite(mean))
        if bad.any():
            d = int(np.flatnonzero(bad)[0])
            what = "has values too small" if scale[d] == 0 else "spans too wide a range"
            raise ValueError(
                f"value column {batch.variables[d]!r} {what} to standardise in float64 (largest "
                f"magnitude {peak[d]:.3g}); rescale it"
            )
        gaps = _target_gaps(batch)
        time_scale = float(np.median(gaps)) if gaps.size else 1.0
        if not (np.isfinite(time_scale) and time_scale > 0):
            raise ValueError(
                f"time column {batch.time_col!r}: the median gap between observations ({time_scale}) is "
                "not a positive finite number; rescale the times"
            )
        return cls(time_scale=time_scale, mean=mean, scale=scale, input_scale=_input_scale(batch))

    def to_dict(self) -> dict[str, Any]:
        out = {"time_scale": self.time_scale, "mean": self.mean.tolist(), "scale": self.scale.tolist()}
        if self.input_scale is not None:
            out["input_scale"] = self.input_scale.tolist()
        return out

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> Scaling:
        mean = np.asarray(config["mean"], dtype=np.float64)
        scale = np.asarray(config["scale"], dtype=np.float64)
        time_scale = float(config["time_scale"])
        if mean.shape != scale.shape or mean.ndim != 1 or not (scale > 0).all() or not time_scale > 0:
            raise ValueError("invalid scaling in the saved configuration")
        inputs = config.get("input_scale")
        input_scale = None if inputs is None else np.asarray(inputs, dtype=np.float64)
        if input_scale is not None and (input_scale.ndim != 1 or not (input_scale > 0).all()):
            raise ValueError("invalid input scaling in the saved configuration")
        return cls(time_scale=time_scale, mean=mean, scale=scale, input_scale=input_scale)

    def values_to_model(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.scale

    def values_from_model(self, values: np.ndarray) -> np.ndarray:
        """Original units; values beyond the float64 range become inf (callers check)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return values * self.scale + self.mean


def _target_gaps(batch: IrregularBatch) -> np.ndarray:
    """Positive gaps between consecutive rows with a target observed, over every series."""
    times = batch.times.double().numpy()
    keep = batch.pad_mask.numpy() & (batch.mask.numpy() > 0).any(-1)
    series = np.broadcast_to(np.arange(len(times))[:, None], times.shape)[keep]
    t = times[keep]
    with np.errstate(over="ignore", invalid="ignore"):
        gaps = np.diff(t)
    gaps = gaps[(series[1:] == series[:-1]) & (gaps > 0)] if gaps.size else gaps
    return gaps


def _input_scale(batch: IrregularBatch) -> np.ndarray | None:
    """Root mean square of each input's given values (1 where there are none or all are 0)."""
    if batch.inputs is None:
        return None
    given = batch.input_mask.double().numpy() > 0
    u = np.where(given, batch.inputs.double().numpy(), 0.0)
    peak = np.abs(u).max((0, 1), initial=0.0)
    unit = np.where(peak > 0, peak, 1.0)
    rms = np.sqrt(((u / unit) ** 2).sum((0, 1)) / np.maximum(given.sum((0, 1)), 1)) * unit
    return np.where(rms > 0, rms, 1.0)


@dataclass
class PreparedSeries:
    """Checked series: ``raw`` holds encoded (unscaled) float64 times and original values, with
    each series' first (``origin``) and last observation time, and ``history`` the observations
    as a frame in original units; ``static`` the encoded static covariates ``(B, S)`` of the
    series (None without), named ``static_names``. :meth:`model_batch` gives the batch in model
    units."""

    raw: IrregularBatch
    origin: np.ndarray
    last_time: np.ndarray
    history: pd.DataFrame
    static: np.ndarray | None = None
    static_names: list[str] | None = None

    @property
    def ids(self) -> np.ndarray:
        return self.raw.ids

    def __len__(self) -> int:
        return len(self.raw)

    def model_batch(self, scaling: Scaling, dtype: torch.dtype = torch.float32) -> IrregularBatch:
        """Times from 0 per series divided by ``time_scale``; values standardised (0 where unobserved).

        A series spanning more than ``MAX_MODEL_TIME`` typical gaps, or a value too many standard
        deviations from the training mean to be a float32 number, is a ValueError naming it.
        """
        raw = self.raw
        with np.errstate(over="ignore", invalid="ignore"):
            times = (raw.times.numpy() - self.origin[:, None]) / scaling.time_scale
            observed = raw.mask.numpy() > 0
            values = np.where(observed, scaling.values_to_model(raw.values.numpy()), 0.0)
        self._check_span(times[:, -1] if times.shape[1] else times[:, :0], scaling, "its observations")
        far = ~(np.abs(values) <= _FLOAT32_MAX)
        if far.any():
            b, i, d = np.argwhere(far)[0]
            raise ValueError(
                f"value {raw.values[b, i, d].item()!r} of column {raw.variables[d]!r} (series "
                f"{show_label(raw.ids[b])}) lies too far from the training values (mean "
                f"{scaling.mean[d]:.3g}, standard deviation {scaling.scale[d]:.3g}) for the model"
            )
        inputs = {}
        if raw.inputs is not None:
            given = raw.input_mask.numpy() > 0
            u = np.where(given, raw.inputs.numpy() / scaling.input_scale, 0.0)
            inputs = {
                "inputs": torch.from_numpy(u).to(dtype),
                "input_mask": raw.input_mask.to(dtype),
                "input_names": raw.input_names,
            }
        return IrregularBatch(
            times=torch.from_numpy(times).to(dtype),
            values=torch.from_numpy(values).to(dtype),
            mask=raw.mask.to(dtype),
            **inputs,
            lengths=raw.lengths,
            ids=raw.ids,
            variables=raw.variables,
            id_col=raw.id_col,
            time_col=raw.time_col,
            id_dtype=raw.id_dtype,
            static=None if self.static is None else torch.from_numpy(self.static).to(dtype),
            static_names=self.static_names,
            validate=False,
        )

    def model_times(self, times: np.ndarray, scaling: Scaling, rows: np.ndarray | None = None) -> np.ndarray:
        """Encoded times ``(B, Q)`` of series ``rows`` (default all) on the model's time axis."""
        origin = self.origin if rows is None else self.origin[rows]
        with np.errstate(over="ignore", invalid="ignore"):
            out = (times - origin[:, None]) / scaling.time_scale
        self._check_span(out[:, -1] if out.shape[1] else out[:, :0], scaling, "its queries", rows)
        return out

    def _check_span(
        self, ends: np.ndarray, scaling: Scaling, what: str, rows: np.ndarray | None = None
    ) -> None:
        """ValueError unless each series' model time ``ends`` (its last, largest time) is in range."""
        far = ~(ends <= MAX_MODEL_TIME)
        if far.any():
            k = int(np.flatnonzero(far)[0])
            series = self.ids[k if rows is None else rows[k]]
            raise ValueError(
                f"series {show_label(series)}: {what} reach {ends[k]:.3g} times the median gap between "
                f"training observations ({scaling.time_scale:.3g} time units) after its first "
                f"observation; the model resolves at most {MAX_MODEL_TIME:.3g} gaps"
            )


def prepare_series(
    df: pd.DataFrame,
    id_col: str,
    time_col: str,
    value_cols: list[str],
    codec: TimeCodec,
    name: str = "df",
    input_cols: Sequence[str] = (),
) -> PreparedSeries:
    """Encode the times of a checked frame and convert it (errors name the offending row/series).

    ``input_cols``: exogenous inputs, kept in the batch's ``inputs``; a series' last time is
    that of its last row, input rows included (the end of what is known about it)."""
    times = codec.encode(df[time_col], time_col)
    input_cols = list(input_cols)
    columns = {id_col: df[id_col].array, time_col: times}
    columns.update(
        {col: df[col].to_numpy(dtype=np.float64, na_value=np.nan) for col in [*value_cols, *input_cols]}
    )
    frame = pd.DataFrame(columns, index=df.index)
    if frame[id_col].isna().any():
        row = frame.index[np.flatnonzero(frame[id_col].isna().to_numpy())[0]]
        raise ValueError(f"{name}: id column {id_col!r} has a missing value at row {show_label(row)}")
    observed = frame[[*value_cols, *input_cols]].notna().any(axis=1)
    has_obs = observed.groupby(frame[id_col], sort=False).any()
    if not has_obs.all():
        empty = has_obs.index[~has_obs.to_numpy()].tolist()
        raise ValueError(
            f"{name}: series {empty[:5]}{' ...' if len(empty) > 5 else ''} have no observed value "
            f"in {[*value_cols, *input_cols]}"
        )
    raw = from_dataframe(frame, id_col, time_col, value_cols, dtype=torch.float64, input_cols=input_cols)
    lengths = raw.lengths.numpy()
    t = raw.times.numpy()
    origin = t[:, 0].copy()
    last_time = t[np.arange(len(raw)), lengths - 1].copy()
    history = _history_frame(raw, id_col, time_col, value_cols, codec)
    return PreparedSeries(raw, origin, last_time, history)


def _history_frame(
    raw: IrregularBatch, id_col: str, time_col: str, value_cols: list[str], codec: TimeCodec
) -> pd.DataFrame:
    """The target observations (rows holding only inputs left out) in original units."""
    pad = raw.pad_mask.numpy()
    columns = {id_col: np.repeat(raw.ids, raw.lengths.numpy())}
    columns[time_col] = codec.decode(raw.times.numpy()[pad]).to_numpy()
    observed = raw.mask.numpy()[pad] > 0
    values = np.where(observed, raw.values.numpy()[pad], np.nan)
    columns.update({col: values[:, d] for d, col in enumerate(value_cols)})
    frame = pd.DataFrame(columns)
    return frame if observed.any(1).all() else frame[observed.any(1)].reset_index(drop=True)


@dataclass
class QueryGrid:
    """Forecast queries as a padded grid: ``times (B, Q)`` encoded (unscaled) query times per
    context series, non-decreasing along a row (padding repeats the row's last query); output row
    ``k`` is grid cell ``(series[k], slot[k])``. With known-future inputs, ``inputs (B, Q, E)``
    (original units) and ``input_mask`` hold the inputs given at each cell, applied after the
    cell's prediction (cells that only carry inputs are no output row's)."""

    times: np.ndarray
    series: np.ndarray
    slot: np.ndarray
    inputs: np.ndarray | None = None
    input_mask: np.ndarray | None = None

    @property
    def n_queries(self) -> int:
        return len(self.series)

    @cached_property
    def is_query(self) -> np.ndarray:
        """``(B, Q)`` True at the cells that are some output row's (not inputs only)."""
        out = np.zeros(self.times.shape, dtype=bool)
        out[self.series, self.slot] = True
        return out


def encode_finite_times(frame: pd.DataFrame, codec: TimeCodec, time_col: str, name: str) -> np.ndarray:
    """The encoded times of ``frame``; a missing or infinite one is a ValueError naming its row."""
    if len(frame) == 0:
        return np.zeros(0)
    encoded = codec.encode(frame[time_col], time_col)
    bad = ~np.isfinite(encoded)
    if bad.any():
        row = show_label(frame.index[np.flatnonzero(bad)[0]])
        raise ValueError(f"{name}: column {time_col!r} has a missing or infinite value at row {row}")
    return encoded


def series_positions(context: PreparedSeries, ids: pd.Series) -> np.ndarray:
    """The position in ``context`` of the series of each id (float, NaN for an id it lacks)."""
    position = pd.Series(np.arange(len(context)), index=pd.Index(context.ids))
    if not position.index.is_unique:
        raise ValueError("context series ids are not unique")
    return position.reindex(ids.to_numpy()).to_numpy()


def query_grid(
    context: PreparedSeries,
    codec: TimeCodec,
    id_col: str,
    time_col: str,
    times: pd.DataFrame | None = None,
    horizon: Sequence[Any] | None = None,
) -> QueryGrid:
    """Query times from a frame of (id, time) rows (output in its row order) or from ``horizon``
    offsets after each series' last observation (output series by series, offsets ascending)."""
    if (times is None) == (horizon is None):
        raise ValueError("pass exactly one of times (a DataFrame of id, time) or horizon (offsets)")
    n_series = len(context)
    if horizon is not None:
        offsets = np.unique(codec.offsets(horizon))
        grid = context.last_time[:, None] + offsets[None, :]
        series = np.repeat(np.arange(n_series), len(offsets))
        slot = np.tile(np.arange(len(offsets)), n_series)
        return QueryGrid(grid, series, slot)
    if not isinstance(times, pd.DataFrame):
        raise TypeError(f"times must be a DataFrame with columns {id_col!r} and {time_col!r}")
    for col in (id_col, time_col):
        if col not in times.columns:
            raise ValueError(f"times has no column {col!r}; columns are {list(map(str, times.columns))}")
        if (times.columns == col).sum() > 1:
            raise ValueError(f"times has more than one column named {col!r}")
    if len(times) == 0:
        raise ValueError("times is empty (no query rows)")
    _check_hashable(times[id_col], "id", id_col, "times")
    encoded = encode_finite_times(times, codec, time_col, "times")
    series = series_positions(context, times[id_col])
    unknown = np.isnan(series)
    if unknown.any():
        missing = pd.unique(times[id_col].to_numpy()[unknown]).tolist()
        raise ValueError(
            f"times asks for series {missing[:5]}{' ...' if len(missing) > 5 else ''} that have no "
            "observation in the context frame"
        )
    series = series.astype(np.int64)
    last = context.last_time[series]
    early = encoded <= last
    if early.any():
        k = np.flatnonzero(early)[0]
        raise ValueError(
            f"query time {show_label(times[time_col].iloc[k])} of series {show_label(times[id_col].iloc[k])} "
            f"(row {show_label(times.index[k])}) is not after its last observation; forecasts must lie "
            "strictly after each series' last observed time"
        )
    order = np.lexsort((encoded, series))
    counts = np.bincount(series, minlength=n_series)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    slot_sorted = np.arange(len(order)) - starts[series[order]]
    width = int(counts.max())
    grid = np.repeat(context.last_time[:, None], width, axis=1)
    grid[series[order], slot_sorted] = encoded[order]
    # Padding repeats each row's last query so the row stays non-decreasing.
    filled = np.arange(width)[None, :] < counts[:, None]
    last_query = np.where(counts > 0, grid[np.arange(n_series), np.maximum(counts - 1, 0)], grid[:, 0])
    grid = np.where(filled, grid, last_query[:, None])
    slot = np.empty(len(order), dtype=np.int64)
    slot[order] = slot_sorted
    return QueryGrid(grid, series, slot)
