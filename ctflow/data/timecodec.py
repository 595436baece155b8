"""Times of a DataFrame column as float64 numbers, and back.

Numeric times pass through unchanged. Datetime times (``datetime64``, optionally time-zone
aware) become the number of ``unit`` since an ``origin`` (the earliest training time); timedelta
times become the number of ``unit``. The unit is given or inferred from the typical gap between a
series' consecutive observations, and is stored with the origin so that forecasts come back as
datetimes of the same zone.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..checks import choice
from .irregular import show_label

__all__ = ["TIME_UNITS", "TimeCodec"]

# Units a datetime or timedelta column can be counted in, largest first.
TIME_UNITS: dict[str, pd.Timedelta] = {
    "W": pd.Timedelta(weeks=1),
    "D": pd.Timedelta(days=1),
    "h": pd.Timedelta(hours=1),
    "min": pd.Timedelta(minutes=1),
    "s": pd.Timedelta(seconds=1),
    "ms": pd.Timedelta(milliseconds=1),
    "us": pd.Timedelta(microseconds=1),
    "ns": pd.Timedelta(nanoseconds=1),
}
_ALIASES = {
    "weeks": "W",
    "w": "W",
    "days": "D",
    "day": "D",
    "d": "D",
    "hours": "h",
    "hour": "h",
    "H": "h",
    "minutes": "min",
    "minute": "min",
    "T": "min",
    "seconds": "s",
    "second": "s",
    "S": "s",
    "milliseconds": "ms",
    "microseconds": "us",
    "nanoseconds": "ns",
}


def _kind(series: pd.Series) -> str:
    dtype = series.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(dtype):
        return "datetime"
    if pd.api.types.is_timedelta64_dtype(dtype):
        return "timedelta"
    if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
        return "other"
    return "numeric"


def _canonical_unit(unit: str) -> str:
    if not isinstance(unit, str):
        raise TypeError(f"time_unit must be a string such as 'D' or 'h', got {type(unit).__name__}")
    return choice(_ALIASES.get(unit, unit), "time_unit", TIME_UNITS)


@dataclass(frozen=True)
class TimeCodec:
    """How one time column maps to float64 numbers: ``kind`` is numeric, datetime or timedelta."""

    kind: str = "numeric"
    unit: str | None = None
    origin: str | None = None  # ISO timestamp (datetime kind), naive in UTC when tz is set
    tz: str | None = None

    @classmethod
    def fit(
        cls, times: pd.Series, series_ids: pd.Series, unit: str | None = None, column: str = "ds"
    ) -> TimeCodec:
        """The codec of a training time column (``series_ids`` gives the series of each row)."""
        kind = _kind(times)
        if kind == "other":
            raise TypeError(
                f"time column {column!r} must be numeric, datetime or timedelta, got dtype {times.dtype}"
            )
        if kind == "numeric":
            if unit is not None:
                raise ValueError(f"time_unit={unit!r} was given but time column {column!r} is numeric")
            return cls()
        _check_no_missing(times, column)
        tz = None
        values = times
        if kind == "datetime" and isinstance(times.dtype, pd.DatetimeTZDtype):
            tz = str(times.dtype.tz)
            values = times.dt.tz_convert("UTC").dt.tz_localize(None)
        if unit is None:
            unit = _infer_unit(values, series_ids)
        unit = _canonical_unit(unit)
        origin = values.min().isoformat() if kind == "datetime" else None
        return cls(kind=kind, unit=unit, origin=origin, tz=tz)

    # ------------------------------------------------------------------ conversions
    def encode(self, times: pd.Series, column: str = "ds") -> np.ndarray:
        """float64 numbers of a time column of the kind this codec was fitted on."""
        kind = _kind(times)
        if kind != self.kind:
            raise TypeError(
                f"time column {column!r} has dtype {times.dtype} but the model was fitted on "
                f"{self.kind} times"
            )
        if kind == "numeric":
            return times.to_numpy(dtype=np.float64, na_value=np.nan)
        _check_no_missing(times, column)
        step = TIME_UNITS[self.unit]
        if kind == "timedelta":
            return (times / step).to_numpy(dtype=np.float64)
        aware = isinstance(times.dtype, pd.DatetimeTZDtype)
        if aware != (self.tz is not None):
            expected = f"time-zone aware ({self.tz})" if self.tz else "time-zone naive"
            raise TypeError(f"time column {column!r} must be {expected} datetimes, like the training data")
        if aware:
            times = times.dt.tz_convert("UTC").dt.tz_localize(None)
        origin = pd.Timestamp(self.origin)
        try:
            delta = times - origin
        except (OverflowError, pd.errors.OutOfBoundsDatetime, pd.errors.OutOfBoundsTimedelta):
            # Nanosecond timedeltas span only +-292 years; microseconds span far more.
            delta = times.astype("datetime64[us]") - origin.as_unit("us")
        return (delta / step).to_numpy(dtype=np.float64)

    def decode(self, numbers_: np.ndarray) -> pd.Series:
        """The time column of the numbers ``encode`` would map to them."""
        numbers_ = np.asarray(numbers_, dtype=np.float64)
        if self.kind == "numeric":
            return pd.Series(numbers_)
        step = TIME_UNITS[self.unit]
        nanos = numbers_ * step.value
        origin = pd.Timestamp(self.origin) if self.kind == "datetime" else None
        try:
            deltas = pd.to_timedelta(nanos, unit="ns").round("us")
            out = pd.Series(deltas if origin is None else origin + deltas)
        except (OverflowError, pd.errors.OutOfBoundsDatetime, pd.errors.OutOfBoundsTimedelta):
            out = _decode_coarse(nanos, origin)
        if self.kind == "timedelta":
            return out
        if self.tz is not None:
            out = out.dt.tz_localize("UTC").dt.tz_convert(self.tz)
        return out

    def offsets(self, horizon: Sequence[Any]) -> np.ndarray:
        """Horizon offsets (numbers in the time unit, timedeltas, or time spans as text such as
        ``"12h"`` and ``"2D"``) as positive float64 numbers in the time unit."""
        if isinstance(horizon, (str, bytes)) or not isinstance(horizon, Sequence | np.ndarray | pd.Index):
            raise TypeError(f"horizon must be a list of positive offsets, got {type(horizon).__name__}")
        if isinstance(horizon, np.ndarray) and horizon.ndim != 1:
            raise TypeError(f"horizon must be a 1-D list of offsets, got an array of shape {horizon.shape}")
        if len(horizon) == 0:
            raise ValueError("horizon must hold at least one offset")
        out = []
        for h in horizon:
            if isinstance(h, str):
                if self.kind == "numeric":
                    raise TypeError(
                        f"horizon offset {h!r} is a time span, but the model's times are plain numbers; "
                        "give numbers"
                    )
                try:
                    h = pd.Timedelta(h)
                except ValueError:
                    raise ValueError(
                        f"horizon offset {h!r} is not a time span such as '12h' or '2D'"
                    ) from None
            if isinstance(h, pd.Timedelta | np.timedelta64):
                if self.kind == "numeric":
                    raise TypeError("timedelta horizon offsets need datetime or timedelta times")
                step = TIME_UNITS[self.unit]
                try:
                    value = pd.Timedelta(h) / step
                except (OverflowError, pd.errors.OutOfBoundsTimedelta):
                    value = pd.Timedelta(h).total_seconds() / step.total_seconds()
            elif isinstance(h, numbers.Real) and not isinstance(h, bool):
                try:
                    value = float(h)
                except OverflowError:
                    value = math.inf
            else:
                raise TypeError(f"horizon offsets must be numbers or timedeltas, got {h!r}")
            if not np.isfinite(value) or value <= 0:
                shown = repr(h) if len(repr(h)) <= 40 else f"{repr(h)[:20]}... ({value:.3g})"
                raise ValueError(f"horizon offsets must be positive and finite, got {shown}")
            out.append(value)
        return np.asarray(out, dtype=np.float64)

    def describe_unit(self) -> str:
        """The unit numbers are counted in, in words (``"h (hours)"``; ``"the data's own"`` for
        numeric times)."""
        if self.kind == "numeric":
            return "the data's own"
        words = {"W": "weeks", "D": "days", "h": "hours", "min": "minutes", "s": "seconds"}
        return f"{self.unit!r} ({words.get(self.unit, self.unit)})"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "unit": self.unit, "origin": self.origin, "tz": self.tz}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> TimeCodec:
        kind = config.get("kind")
        if kind not in ("numeric", "datetime", "timedelta"):
            raise ValueError(f"invalid time codec kind {kind!r}")
        unit = config.get("unit")
        if kind != "numeric":
            unit = _canonical_unit(str(unit))
        origin, tz = config.get("origin"), config.get("tz")
        if kind == "datetime":
            try:
                stamp = pd.Timestamp(origin)
            except (TypeError, ValueError) as err:
                raise ValueError(f"invalid time codec origin {origin!r}") from err
            if stamp is pd.NaT or stamp.tzinfo is not None:
                raise ValueError(f"invalid time codec origin {origin!r}: expected a naive timestamp")
            if tz is not None:
                try:
                    pd.Timestamp(0, tz=tz)
                except Exception as err:
                    raise ValueError(f"invalid time zone {tz!r} in the time codec") from err
        return cls(kind=kind, unit=unit, origin=origin, tz=tz)


def _decode_coarse(nanos: np.ndarray, origin: pd.Timestamp | None) -> pd.Series:
    """``origin + nanos`` (timedeltas without an origin) at microsecond resolution, for offsets
    beyond the +-292 years of nanosecond timedeltas; a ValueError past what pandas represents."""
    micros = np.round(nanos / 1000)
    too_far = ~(np.abs(micros) < 2.0**63)
    if too_far.any():
        days = nanos[too_far][0] / 86_400e9
        raise ValueError(f"a time {days:.3g} days from the origin can not be represented as a datetime")
    deltas = pd.Series(micros.astype(np.int64).astype("timedelta64[us]"))
    if origin is None:
        return deltas
    try:
        return origin.as_unit("us") + deltas
    except (OverflowError, pd.errors.OutOfBoundsDatetime, pd.errors.OutOfBoundsTimedelta):
        raise ValueError(
            f"times up to {deltas.abs().max()} from {origin} fall outside the range of datetimes"
        ) from None


def _check_no_missing(times: pd.Series, column: str) -> None:
    missing = times.isna().to_numpy()
    if missing.any():
        row = times.index[np.flatnonzero(missing)[0]]
        raise ValueError(f"time column {column!r} has a missing value (NaT) at row {show_label(row)}")


def _infer_unit(times: pd.Series, series_ids: pd.Series) -> str:
    """The largest unit from days down in which the median gap between observations is >= 1."""
    # Ids as codes: ids of types that do not order together (1, "a") still group.
    codes = pd.factorize(series_ids.to_numpy())[0]
    frame = pd.DataFrame({"id": codes, "t": times.to_numpy()}).sort_values(["id", "t"])
    gaps = frame.groupby("id", sort=False)["t"].diff().dropna()
    gaps = gaps[gaps > pd.Timedelta(0)]
    if gaps.empty:
        return "D"
    median = gaps.median()
    for unit, step in TIME_UNITS.items():
        if unit != "W" and median >= step:
            return unit
    return "ns"
