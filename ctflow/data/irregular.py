"""Irregularly sampled multivariate series as padded tensors, and the bridge to long DataFrames.

A set of ``B`` series, each with its own observation times and any subset of ``D`` variables
observed at each time, is held in an :class:`IrregularBatch`:

* ``times (B, N)``: observation times of each series, non-decreasing along a row;
* ``values (B, N, D)`` and ``mask (B, N, D)`` (1 = observed, 0 = not measured);
* ``lengths (B,)``: the number of observation rows of each series.

Rows past a series' length are padding: ``mask`` 0, ``values`` 0 and ``times`` repeating the
series' last observation time (0 for a series with no rows). Repeating the last time makes every
padded step a zero-length interval, so a solver that integrates all series in lockstep between
their own consecutive times does nothing once a series has ended, and ``times`` stays
non-decreasing across the whole row.

The long DataFrame format (one row per series and time, one column per variable, NaN = not
measured) is converted by :func:`from_dataframe` and restored by :func:`to_dataframe`. Apart from
the estimator, this module is the only place that speaks pandas.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import InitVar, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..checks import in_interval, positive_int

__all__ = [
    "IrregularBatch",
    "collate",
    "from_dataframe",
    "holdout_last",
    "iterate_batches",
    "split_series",
    "to_dataframe",
    "truncate",
]

SeriesIndex = int | slice | Sequence[int] | np.ndarray | Tensor


@dataclass(eq=False)
class IrregularBatch:
    """A padded batch of irregularly sampled multivariate series.

    Args:
        times: ``(B, N)`` floating observation times.
        values: ``(B, N, D)`` observed values; finite everywhere (0 where not observed).
        mask: ``(B, N, D)`` 1 where a value is observed, 0 otherwise (bool masks are converted to
            the dtype of ``values``).
        lengths: ``(B,)`` number of observation rows of each series (converted to long).
        ids: series identifiers, length ``B``, unique (default ``0 .. B-1``); stored as a numpy array.
        variables: names of the ``D`` value columns (default ``y0 .. y{D-1}``).
        static: optional ``(B, S)`` per-series covariates.
        static_names: names of the ``S`` static columns (default ``s0 .. s{S-1}``).
        inputs: optional ``(B, N, E)`` exogenous inputs at the rows' times (doses, treatments):
            conditioned on, never scored; a row may hold only inputs (its ``mask`` all 0).
        input_mask: ``(B, N, E)`` 1 where an input is given (required with ``inputs``).
        input_names: names of the ``E`` inputs (default ``u0 .. u{E-1}``).
        id_col, time_col: column names used by :func:`to_dataframe`.
        id_dtype: dtype of the id column restored by :func:`to_dataframe` (None: inferred).
        validate: check the invariants below (internal operations that preserve them skip it).

    Invariants (checked unless ``validate=False``, each violation is a ``ValueError`` naming it):
    consistent shapes and one device; ``0 <= lengths <= N``; masks hold only 0/1 and are 0 on
    padding; values are finite (NaN where ``mask`` is 1 is reported as such); times are finite and
    non-decreasing within each series, and padding times repeat the series' last time (0 for an
    empty series); static covariates are finite; inputs follow the rules of values and mask; ids
    are unique.
    """

    times: Tensor
    values: Tensor
    mask: Tensor
    lengths: Tensor
    ids: Any = None
    variables: list[str] | None = None
    static: Tensor | None = None
    static_names: list[str] | None = None
    inputs: Tensor | None = None
    input_mask: Tensor | None = None
    input_names: list[str] | None = None
    id_col: str = "unique_id"
    time_col: str = "ds"
    id_dtype: Any = dataclasses.field(default=None, repr=False)
    validate: InitVar[bool] = True

    def __post_init__(self, validate: bool) -> None:
        for name in ("times", "values", "mask", "lengths"):
            if not isinstance(getattr(self, name), Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        if self.times.ndim != 2:
            raise ValueError(f"times must have shape (B, N), got {tuple(self.times.shape)}")
        if self.values.ndim != 3:
            raise ValueError(f"values must have shape (B, N, D), got {tuple(self.values.shape)}")
        batch, _, dim = self.values.shape
        if self.ids is None:
            self.ids = np.arange(batch)
        elif not isinstance(self.ids, np.ndarray):
            self.ids = _as_id_array(self.ids)
        if self.variables is None:
            self.variables = [f"y{i}" for i in range(dim)]
        else:
            self.variables = [str(v) for v in self.variables]
        if self.mask.dtype == torch.bool:
            self.mask = self.mask.to(self.values.dtype)
        if self.lengths.dtype != torch.long and not self.lengths.is_floating_point():
            self.lengths = self.lengths.long()
        if self.static is not None and self.static_names is None:
            self.static_names = [f"s{i}" for i in range(self.static.shape[-1])]
        elif self.static_names is not None:
            self.static_names = [str(s) for s in self.static_names]
        if self.inputs is not None and self.input_names is None:
            self.input_names = [f"u{i}" for i in range(self.inputs.shape[-1])]
        elif self.input_names is not None:
            self.input_names = [str(s) for s in self.input_names]
        if self.input_mask is not None and self.input_mask.dtype == torch.bool and self.inputs is not None:
            self.input_mask = self.input_mask.to(self.inputs.dtype)
        if validate:
            self._check()

    # ------------------------------------------------------------------ validation
    def _check(self) -> None:
        """Raise a ValueError naming the first invariant (see the class docstring) that fails."""
        self._check_shapes()
        self._check_static()
        self._check_inputs()
        self._check_device()
        self._check_mask_and_values()
        self._check_times()
        if len(pd.unique(self.ids)) != len(self):
            dup = pd.Series(self.ids)[pd.Series(self.ids).duplicated()].iloc[0]
            raise ValueError(f"series ids must be unique; {show_label(dup)} appears more than once")

    def _check_shapes(self) -> None:
        """Check the shapes of the tensors, ids and variable names, and the tensor dtypes."""
        batch, n_rows, dim = self.values.shape
        if tuple(self.times.shape) != (batch, n_rows):
            raise ValueError(
                f"times has shape {tuple(self.times.shape)} but values has (B, N) = {(batch, n_rows)}"
            )
        if self.mask.shape != self.values.shape:
            raise ValueError(f"mask has shape {tuple(self.mask.shape)}, values {tuple(self.values.shape)}")
        if tuple(self.lengths.shape) != (batch,):
            raise ValueError(f"lengths must have shape ({batch},), got {tuple(self.lengths.shape)}")
        if self.lengths.dtype != torch.long:
            raise ValueError(f"lengths must be an integer tensor, got {self.lengths.dtype}")
        if len(self.ids) != batch or self.ids.ndim != 1:
            raise ValueError(f"ids must be 1-D with {batch} entries, got shape {self.ids.shape}")
        if len(self.variables) != dim:
            raise ValueError(f"variables has {len(self.variables)} names for D = {dim} value columns")
        for name in ("times", "values", "mask"):
            if not getattr(self, name).is_floating_point():
                raise ValueError(f"{name} must be a floating tensor, got {getattr(self, name).dtype}")

    def _check_static(self) -> None:
        """Check the static covariates: a finite floating ``(B, S)`` tensor with ``S`` names."""
        batch = self.values.shape[0]
        if self.static is None:
            if self.static_names is not None:
                raise ValueError("static_names given without static covariates")
            return
        if not isinstance(self.static, Tensor) or self.static.ndim != 2 or self.static.shape[0] != batch:
            shape = tuple(self.static.shape) if isinstance(self.static, Tensor) else type(self.static)
            raise ValueError(f"static must be a (B, S) = ({batch}, S) tensor, got {shape}")
        if not self.static.is_floating_point():
            raise ValueError(f"static must be a floating tensor, got {self.static.dtype}")
        if self.static_names is None or len(self.static_names) != self.static.shape[1]:
            raise ValueError(
                f"static_names must name the {self.static.shape[1]} static columns, got {self.static_names}"
            )
        if not torch.isfinite(self.static).all():
            row = int(torch.nonzero(~torch.isfinite(self.static))[0, 0])
            series = show_label(self.ids[row])
            raise ValueError(f"static covariates must be finite; series {series} has NaN/inf")

    def _check_inputs(self) -> None:
        """Check the inputs: ``(B, N, E)`` finite values with a 0/1 mask that is 0 on padding."""
        if self.inputs is None:
            if self.input_mask is not None or self.input_names is not None:
                raise ValueError("input_mask or input_names given without inputs")
            return
        shape = tuple(self.values.shape[:2])
        for name in ("inputs", "input_mask"):
            x = getattr(self, name)
            if not isinstance(x, Tensor) or x.ndim != 3 or tuple(x.shape[:2]) != shape:
                got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"{name} must be a (B, N, E) = {(*shape, 'E')} tensor, got {got}")
            if not x.is_floating_point():
                raise ValueError(f"{name} must be a floating tensor, got {x.dtype}")
        if self.input_mask.shape != self.inputs.shape:
            raise ValueError(
                f"input_mask has shape {tuple(self.input_mask.shape)}, inputs {tuple(self.inputs.shape)}"
            )
        if len(self.input_names) != self.inputs.shape[-1]:
            raise ValueError(
                f"input_names must name the {self.inputs.shape[-1]} inputs, got {self.input_names}"
            )
        if not ((self.input_mask == 0) | (self.input_mask == 1)).all():
            raise ValueError("input_mask must contain only 0 and 1")
        if ((self.input_mask == 1) & ~self.pad_mask[..., None]).any():
            raise ValueError("input_mask must be 0 on padding rows past the length")
        bad = ~torch.isfinite(self.inputs)
        if bad.any():
            b, i, e = (int(v) for v in torch.nonzero(bad)[0])
            raise ValueError(
                f"inputs must be finite (0 where not given); series {show_label(self.ids[b])}, row {i}, "
                f"input {self.input_names[e]!r} is {float(self.inputs[b, i, e])}"
            )

    def _check_device(self) -> None:
        """Check that every tensor lies on one device."""
        tensors = [self.times, self.values, self.mask, self.lengths]
        tensors += [t for t in (self.static, self.inputs, self.input_mask) if t is not None]
        devices = {t.device for t in tensors}
        if len(devices) > 1:
            raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")

    def _check_mask_and_values(self) -> None:
        """Check the lengths, that the mask is 0/1 and 0 on padding, and that values are finite."""
        batch, n_rows, _ = self.values.shape
        lengths = self.lengths
        if batch and (lengths.min() < 0 or lengths.max() > n_rows):
            raise ValueError(f"lengths must lie in [0, N = {n_rows}], got {lengths.min()}..{lengths.max()}")
        if not ((self.mask == 0) | (self.mask == 1)).all():
            raise ValueError("mask must contain only 0 and 1")
        pad = self.pad_mask
        observed = self.mask == 1
        if (observed & ~pad[..., None]).any():
            b = int(torch.nonzero(observed & ~pad[..., None])[0, 0])
            series = show_label(self.ids[b])
            raise ValueError(f"mask must be 0 on padding rows past the length (series {series})")
        nan_obs = torch.isnan(self.values) & observed
        if nan_obs.any():
            b, i, d = (int(v) for v in torch.nonzero(nan_obs)[0])
            raise ValueError(
                f"values are NaN where mask is 1: series {show_label(self.ids[b])}, row {i}, variable "
                f"{self.variables[d]!r}"
            )
        bad = ~torch.isfinite(self.values)
        if bad.any():
            b, i, d = (int(v) for v in torch.nonzero(bad)[0])
            where = "observed" if observed[b, i, d] else "unobserved (use 0 as placeholder)"
            raise ValueError(
                f"values must be finite; {where} entry of series {show_label(self.ids[b])}, row {i}, "
                f"variable {self.variables[d]!r} is {float(self.values[b, i, d])}"
            )

    def _check_times(self) -> None:
        """Check that times are finite, non-decreasing, and repeat the last time on padding."""
        pad = self.pad_mask
        if not torch.isfinite(self.times[pad]).all():
            b = int(torch.nonzero(~torch.isfinite(self.times) & pad)[0, 0])
            raise ValueError(f"times must be finite (series {show_label(self.ids[b])})")
        if self.values.shape[1] > 1:
            step_valid = pad[:, 1:]
            decreasing = (self.times[:, 1:] < self.times[:, :-1]) & step_valid
            if decreasing.any():
                b, i = (int(v) for v in torch.nonzero(decreasing)[0])
                raise ValueError(
                    "times must be non-decreasing within each series: series "
                    f"{show_label(self.ids[b])} goes from "
                    f"{float(self.times[b, i])} to {float(self.times[b, i + 1])} at row {i + 1}"
                )
        expected = _padded_times(self.times, self.lengths)
        wrong = (self.times != expected) & ~pad
        if wrong.any():
            b = int(torch.nonzero(wrong)[0, 0])
            raise ValueError(
                "padding times (rows past the length) must repeat the series' last time "
                f"(0 for an empty series); series {show_label(self.ids[b])} does not"
            )

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def n_series(self) -> int:
        """Number of series ``B``."""
        return self.values.shape[0]

    @property
    def max_length(self) -> int:
        """Padded length ``N``."""
        return self.values.shape[1]

    @property
    def n_variables(self) -> int:
        """Number of variables ``D``."""
        return self.values.shape[2]

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def pad_mask(self) -> Tensor:
        """``(B, N)`` bool, True on the valid (non-padding) rows."""
        rows = torch.arange(self.values.shape[1], device=self.lengths.device)
        return rows[None, :] < self.lengths[:, None]

    @property
    def n_inputs(self) -> int:
        """Number of exogenous inputs ``E`` (0 without)."""
        return 0 if self.inputs is None else self.inputs.shape[-1]

    @property
    def n_observed(self) -> int:
        """Total number of observed values (sum of the mask)."""
        return int(self.mask.sum().item())

    def __repr__(self) -> str:
        static = "" if self.static is None else f", static={self.static_names}"
        if self.inputs is not None:
            static += f", inputs={self.input_names}"
        return (
            f"IrregularBatch(series={self.n_series}, max_length={self.max_length}, "
            f"variables={self.variables}, observed={self.n_observed}{static}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    # ------------------------------------------------------------------ transformations
    def _replace(self, **changes: Any) -> IrregularBatch:
        return dataclasses.replace(self, validate=False, **changes)

    def to(
        self,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        non_blocking: bool = False,
    ) -> IrregularBatch:
        """A copy on ``device`` (and with floating tensors cast to ``dtype`` if given)."""
        if dtype is not None:
            _check_dtype(dtype)

        def move(t: Tensor | None, floating: bool = True) -> Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if floating else None, non_blocking=non_blocking)

        return self._replace(
            times=move(self.times),
            values=move(self.values),
            mask=move(self.mask),
            lengths=move(self.lengths, floating=False),
            static=move(self.static),
            inputs=move(self.inputs),
            input_mask=move(self.input_mask),
        )

    def select(self, idx: SeriesIndex, trim: bool = False) -> IrregularBatch:
        """The series at ``idx`` (ints, slice, bool mask, array or tensor), in that order.

        ``trim=True`` also cuts the padded length to the longest selected series.
        """
        index = _as_index(idx, len(self))
        if len(np.unique(index)) != len(index):
            raise ValueError("select: indices must not repeat (series ids must stay unique)")
        t_index = torch.as_tensor(index, dtype=torch.long, device=self.values.device)
        out = self._replace(
            times=self.times[t_index],
            values=self.values[t_index],
            mask=self.mask[t_index],
            lengths=self.lengths[t_index.to(self.lengths.device)],
            ids=self.ids[index],
            static=None if self.static is None else self.static[t_index],
            inputs=None if self.inputs is None else self.inputs[t_index],
            input_mask=None if self.inputs is None else self.input_mask[t_index],
        )
        return out.trim() if trim else out

    def trim(self) -> IrregularBatch:
        """Cut the padded length ``N`` to the longest series."""
        n_rows = int(self.lengths.max()) if len(self) else 0
        if n_rows == self.max_length:
            return self
        inputs = {}
        if self.inputs is not None:
            inputs = {"inputs": self.inputs[:, :n_rows], "input_mask": self.input_mask[:, :n_rows]}
        return self._replace(
            times=self.times[:, :n_rows], values=self.values[:, :n_rows], mask=self.mask[:, :n_rows], **inputs
        )


# ---------------------------------------------------------------------- helpers
def _as_id_array(ids: Any) -> np.ndarray:
    if isinstance(ids, Tensor):
        return ids.detach().cpu().numpy()
    if isinstance(ids, (pd.Index, pd.Series, pd.api.extensions.ExtensionArray)):
        return np.asarray(ids)
    arr = np.asarray(ids)
    if arr.ndim != 1:
        arr = np.empty(len(ids), dtype=object)
        arr[:] = list(ids)
    return arr


def plain_label(value: Any) -> Any:
    """A label (id, row, category) with numpy scalars as the plain Python value: 5, not np.int64(5)."""
    return value.item() if isinstance(value, np.generic) else value


def show_label(value: Any) -> str:
    """``repr`` of :func:`plain_label`, for messages."""
    return repr(plain_label(value))


def _concat_ids(parts: list[np.ndarray]) -> np.ndarray:
    if len({p.dtype for p in parts}) == 1:
        return np.concatenate(parts)
    return np.concatenate([p.astype(object) for p in parts])


def _as_index(idx: SeriesIndex, n: int) -> np.ndarray:
    if isinstance(idx, Tensor):
        idx = idx.detach().cpu().numpy()
    if isinstance(idx, slice):
        return np.arange(n)[idx]
    if isinstance(idx, numbers.Integral):
        idx = [int(idx)]
    arr = np.asarray(idx)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"a boolean index must have length {n}, got {arr.shape}")
        return np.nonzero(arr)[0]
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"series indices must be integers or booleans, got {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    if (arr < -n).any() or (arr >= n).any():
        raise IndexError(f"series index out of range for {n} series")
    return np.where(arr < 0, arr + n, arr)


def _padded_times(times: Tensor, lengths: Tensor) -> Tensor:
    """``times`` with every row past the length replaced by the last valid time (0 if none)."""
    n_rows = times.shape[1]
    if n_rows == 0:
        return times
    last = (lengths - 1).clamp(min=0).to(times.device)
    last_time = times.gather(1, last[:, None])
    last_time = torch.where(lengths.to(times.device)[:, None] > 0, last_time, torch.zeros_like(last_time))
    rows = torch.arange(n_rows, device=times.device)
    return torch.where(rows[None, :] < lengths.to(times.device)[:, None], times, last_time)


def _gather_rows(batch: IrregularBatch, start: Tensor, count: Tensor) -> IrregularBatch:
    """Rows ``start .. start + count - 1`` of each series, re-padded canonically."""
    n_new = int(count.max()) if len(batch) else 0
    device = batch.values.device
    rows = torch.arange(n_new, device=device)
    src = (start[:, None] + rows[None, :]).clamp(max=max(batch.max_length - 1, 0))
    valid = rows[None, :] < count[:, None]

    def rows_of(x: Tensor) -> Tensor:
        if batch.max_length == 0:
            return x.new_zeros((len(batch), n_new, x.shape[-1]))
        return x.gather(1, src[..., None].expand(-1, -1, x.shape[-1])) * valid[..., None]

    if batch.max_length == 0:
        times = torch.zeros((len(batch), n_new), dtype=batch.times.dtype, device=device)
    else:
        times = batch.times.gather(1, src)
    times = _padded_times(torch.where(valid, times, torch.zeros_like(times)), count)
    inputs = {}
    if batch.inputs is not None:
        inputs = {"inputs": rows_of(batch.inputs), "input_mask": rows_of(batch.input_mask)}
    return batch._replace(
        times=times, values=rows_of(batch.values), mask=rows_of(batch.mask), lengths=count.clone(), **inputs
    )


def _check_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype, got {dtype!r}")


# ---------------------------------------------------------------------- DataFrame bridge
def _numeric_check(df: pd.DataFrame, col: str, role: str) -> None:
    dtype = df[col].dtype
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        raise TypeError(
            f"{role} column {col!r} has dtype {dtype}; convert it to float first, e.g. "
            f"(df[{col!r}] - df[{col!r}].min()) / pd.Timedelta('1D') "
            "(ctflow.Forecaster does this for you with its time_unit argument)"
        )
    if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_complex_dtype(dtype):
        raise TypeError(f"{role} column {col!r} must be numeric (int/float/bool), got dtype {dtype}")


def from_dataframe(
    df: pd.DataFrame,
    id_col: str = "unique_id",
    time_col: str = "ds",
    value_cols: Sequence[str] | str | None = None,
    static_cols: Sequence[str] | str | None = None,
    dtype: torch.dtype = torch.float32,
    input_cols: Sequence[str] | str | None = None,
) -> IrregularBatch:
    """Convert a long DataFrame (one row per series and time, NaN = not measured) to a batch.

    Rows are sorted by id (in sorted id order when the ids can be ordered, else in order of first
    appearance) and then by time. Rows whose value columns are all NaN are dropped: an observation
    row with nothing observed carries no information (a series left with no row disappears).

    Args:
        df: the long frame.
        id_col, time_col: series identifier and (numeric) time columns. Datetime or timedelta
            times are a TypeError here: convert them to numbers first (the estimator does).
        value_cols: the variables; None means every column except id, time, static and input
            columns.
        static_cols: per-series covariates, constant within each series and never missing.
        dtype: floating dtype of the tensors.
        input_cols: exogenous inputs given at their rows' times (NaN where not given); a row
            may hold only inputs.

    Raises:
        ValueError: missing or overlapping columns, duplicated (id, time) pairs, NaN ids or times,
            infinite values, non-constant or missing static covariates, distinct times that collide
            once cast to ``dtype``, no observed value at all.
        TypeError: non-numeric value/static/time columns.

    The round trip is exact: ``to_dataframe(from_dataframe(df))`` equals ``df`` sorted, with
    all-NaN rows dropped, columns ordered id, time, values, static, and times/values/static as
    float64 (provided the numbers are representable in ``dtype``, always true for float64).

    >>> import numpy as np, pandas as pd
    >>> from ctflow.data import from_dataframe
    >>> df = pd.DataFrame({"unique_id": ["b", "a", "a"], "ds": [0.5, 1.5, 0.0],
    ...                    "y": [2.0, np.nan, 1.0], "z": [np.nan, 3.0, 4.0]})
    >>> batch = from_dataframe(df)
    >>> batch.ids.tolist(), batch.lengths
    (['a', 'b'], tensor([2, 1]))
    >>> batch.times  # series "b" is padded with its last time
    tensor([[0.0000, 1.5000],
            [0.5000, 0.5000]])
    >>> batch.mask[0]  # series "a": one row per time, one column per variable (y, z)
    tensor([[1., 1.],
            [0., 1.]])
    """
    _check_dtype(dtype)
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    input_list = [input_cols] if isinstance(input_cols, str) else list(input_cols or [])
    value_list, static_list = _frame_columns(df, id_col, time_col, value_cols, static_cols, input_list)
    values, times, static, ids, row_labels = _frame_arrays(
        df, id_col, time_col, [*value_list, *input_list], static_list
    )
    values, times, static, ids, row_labels = _observed_rows(values, times, static, ids, row_labels)
    codes, id_values, order = _sort_rows(ids, times)
    times, values, row_labels = times[order], values[order], row_labels[order]
    static = static[order] if static is not None else None
    counts = np.bincount(codes, minlength=len(id_values))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    cast = _cast_times(times, codes, id_values, row_labels, dtype)
    static_t = None
    if static is not None:
        first = _static_per_series(static, static_list, codes, starts, id_values, row_labels)
        static_t = torch.from_numpy(first.astype(cast.dtype))
    times_pad, values_pad, mask_pad = _pad_rows(values, cast, codes, counts, starts)
    n_values = len(value_list)
    inputs = {}
    if input_list:
        inputs = {
            "inputs": torch.from_numpy(values_pad[..., n_values:].copy()),
            "input_mask": torch.from_numpy(mask_pad[..., n_values:].copy()),
            "input_names": [str(c) for c in input_list],
        }

    return IrregularBatch(
        times=torch.from_numpy(times_pad),
        values=torch.from_numpy(values_pad[..., :n_values].copy()),
        mask=torch.from_numpy(mask_pad[..., :n_values].copy()),
        **inputs,
        lengths=torch.from_numpy(counts.astype(np.int64)),
        ids=id_values,
        variables=[str(c) for c in value_list],
        static=static_t,
        static_names=[str(c) for c in static_list] if static_list else None,
        id_col=id_col,
        time_col=time_col,
        id_dtype=df[id_col].dtype,
        validate=False,
    )


def _frame_columns(
    df: pd.DataFrame,
    id_col: str,
    time_col: str,
    value_cols: Sequence[str] | str | None,
    static_cols: Sequence[str] | str | None,
    input_list: list | None = None,
) -> tuple[list, list]:
    """Resolve and check the value and static columns of :func:`from_dataframe`."""
    input_list = input_list or []
    value_cols = [value_cols] if isinstance(value_cols, str) else value_cols
    static_cols = [static_cols] if isinstance(static_cols, str) else static_cols
    static_list = list(static_cols) if static_cols is not None else []
    if value_cols is None:
        taken = {id_col, time_col, *static_list, *input_list}
        value_list = [c for c in df.columns if c not in taken]
    else:
        value_list = list(value_cols)
    wanted = [id_col, time_col, *value_list, *static_list, *input_list]
    missing = [c for c in dict.fromkeys(wanted) if c not in df.columns]
    if missing:
        raise ValueError(f"columns not found in the DataFrame: {missing}")
    if not value_list:
        raise ValueError("no value columns: pass value_cols or give the frame columns besides id/time")
    if len(set(wanted)) != len(wanted):
        dup = sorted({str(c) for c in wanted if wanted.count(c) > 1})
        raise ValueError(f"a column may have only one role (id, time, value, static, input); repeated: {dup}")
    if df.columns.duplicated().any():
        dup = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
        raise ValueError(f"duplicated column names in the DataFrame: {dup}")
    _numeric_check(df, time_col, "time")
    for col in value_list:
        _numeric_check(df, col, "value")
    for col in static_list:
        _numeric_check(df, col, "static")
    for col in input_list:
        _numeric_check(df, col, "input")
    return value_list, static_list


def _frame_arrays(
    df: pd.DataFrame, id_col: str, time_col: str, value_list: list, static_list: list
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, pd.Series, pd.Index]:
    """The float64 values, times and static columns, the ids and row labels; no inf, NaN time or id."""
    values = df[value_list].to_numpy(dtype=np.float64, na_value=np.nan)
    times = df[time_col].to_numpy(dtype=np.float64, na_value=np.nan)
    static = df[static_list].to_numpy(dtype=np.float64, na_value=np.nan) if static_list else None
    ids = df[id_col]
    row_labels = df.index
    inf = np.isinf(values)
    if inf.any():
        r, c = np.argwhere(inf)[0]
        raise ValueError(f"infinite value in column {value_list[c]!r} at row {show_label(row_labels[r])}")
    bad_time = ~np.isfinite(times)
    if bad_time.any():
        r = np.flatnonzero(bad_time)[0]
        raise ValueError(
            f"time column {time_col!r} has a missing or infinite value at row {show_label(row_labels[r])}"
        )
    if ids.isna().any():
        r = np.flatnonzero(ids.isna().to_numpy())[0]
        raise ValueError(f"id column {id_col!r} has a missing value at row {show_label(row_labels[r])}")
    return values, times, static, ids, row_labels


def _observed_rows(
    values: np.ndarray, times: np.ndarray, static: np.ndarray | None, ids: pd.Series, row_labels: pd.Index
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, pd.Series, pd.Index]:
    """Drop the rows whose values are all NaN; raise if no row is left."""
    keep = ~np.isnan(values).all(axis=1)
    if not keep.all():
        values, times, row_labels = values[keep], times[keep], row_labels[keep]
        ids = ids[keep]
        static = static[keep] if static is not None else None
    if len(values) == 0:
        raise ValueError("the DataFrame has no observed value (every row is all-NaN or it is empty)")
    return values, times, static, ids, row_labels


def _sort_rows(ids: pd.Series, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Series codes (sorted ids, else first appearance), unique ids, and the row order by id then time."""
    try:
        with warnings.catch_warnings():  # ids that pandas can only order with a warning stay unsorted
            warnings.simplefilter("error")
            codes, uniques = pd.factorize(ids, sort=True)
    except (TypeError, Warning):
        codes, uniques = pd.factorize(ids, sort=False)
    order = np.lexsort((times, codes))
    return codes[order], np.asarray(uniques), order


def _cast_times(
    times: np.ndarray, codes: np.ndarray, id_values: np.ndarray, row_labels: pd.Index, dtype: torch.dtype
) -> np.ndarray:
    """The sorted times cast to ``dtype``; raise if a series repeats a time or two collide in ``dtype``."""
    same_series = codes[1:] == codes[:-1]
    dup = same_series & (times[1:] == times[:-1])
    if dup.any():
        r = np.flatnonzero(dup)[0] + 1
        raise ValueError(
            f"duplicated (id, time) pair: series {show_label(id_values[codes[r]])} has two rows at time "
            f"{show_label(times[r])} (rows {show_label(row_labels[r - 1])} and {show_label(row_labels[r])}); "
            f"{int(dup.sum())} duplicated pair(s) in all"
        )
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    cast = times.astype(np_dtype)
    collide = same_series & (cast[1:] <= cast[:-1])
    if collide.any():
        r = np.flatnonzero(collide)[0] + 1
        raise ValueError(
            f"distinct times {show_label(times[r - 1])} and {show_label(times[r])} of series "
            f"{show_label(id_values[codes[r]])} become equal in {dtype}; pass dtype=torch.float64 or "
            "shift/rescale the times"
        )
    return cast


def _static_per_series(
    static: np.ndarray,
    static_list: list,
    codes: np.ndarray,
    starts: np.ndarray,
    id_values: np.ndarray,
    row_labels: pd.Index,
) -> np.ndarray:
    """The ``(B, S)`` static covariates of each series; raise if one is missing or varies in a series."""
    nan_static = np.isnan(static)
    if nan_static.any():
        r, c = np.argwhere(nan_static)[0]
        raise ValueError(
            f"static column {static_list[c]!r} is missing for series {show_label(id_values[codes[r]])} "
            f"(row {show_label(row_labels[r])})"
        )
    first = static[starts]
    varying = static != first[codes]
    if varying.any():
        r, c = np.argwhere(varying)[0]
        raise ValueError(
            f"static column {static_list[c]!r} is not constant within series "
            f"{show_label(id_values[codes[r]])}"
        )
    return first


def _pad_rows(
    values: np.ndarray, cast: np.ndarray, codes: np.ndarray, counts: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Padded ``(times, values, mask)`` arrays of the sorted rows, in the dtype of ``cast``."""
    n_series, n_rows = len(counts), int(counts.max())
    pos = np.arange(len(codes)) - starts[codes]
    mask = ~np.isnan(values)
    values_pad = np.zeros((n_series, n_rows, values.shape[1]), dtype=cast.dtype)
    mask_pad = np.zeros((n_series, n_rows, values.shape[1]), dtype=cast.dtype)
    values_pad[codes, pos] = np.where(mask, values, 0.0)
    mask_pad[codes, pos] = mask
    last_time = cast[starts + counts - 1]
    times_pad = np.repeat(last_time[:, None], n_rows, axis=1)
    times_pad[codes, pos] = cast
    return times_pad, values_pad, mask_pad


def to_dataframe(
    batch: IrregularBatch, include_static: bool = True, include_inputs: bool = True
) -> pd.DataFrame:
    """The batch as a long DataFrame: id, time, one float64 column per variable (NaN where not
    observed), if present and ``include_inputs`` one per input (NaN where not given) and, if
    present and ``include_static``, the static covariates repeated per row.

    Rows are the valid (non-padding) rows, ordered by series then time, with a fresh RangeIndex;
    without the inputs, rows that held only inputs are left out.
    """
    if not include_inputs and batch.inputs is not None:
        kept = batch._replace(inputs=None, input_mask=None, input_names=None)
        frame = to_dataframe(kept, include_static)
        return frame[frame[batch.variables].notna().any(axis=1).to_numpy()].reset_index(drop=True)
    pad = batch.pad_mask.cpu().numpy()
    lengths = batch.lengths.cpu().numpy()
    times = batch.times.detach().cpu().double().numpy()[pad]
    values = batch.values.detach().cpu().double().numpy()[pad]
    mask = batch.mask.detach().cpu().numpy()[pad] > 0
    ids = np.repeat(batch.ids, lengths)
    id_series = pd.Series(ids)
    if batch.id_dtype is not None:
        id_series = id_series.astype(batch.id_dtype)
    columns: dict[str, Any] = {batch.id_col: id_series.to_numpy() if batch.id_dtype is None else id_series}
    columns[batch.time_col] = times
    for d, name in enumerate(batch.variables):
        columns[name] = np.where(mask[:, d], values[:, d], np.nan)
    if batch.inputs is not None:
        given = batch.input_mask.detach().cpu().numpy()[pad] > 0
        inputs = batch.inputs.detach().cpu().double().numpy()[pad]
        for e, name in enumerate(batch.input_names):
            columns[name] = np.where(given[:, e], inputs[:, e], np.nan)
    if include_static and batch.static is not None:
        static = batch.static.detach().cpu().double().numpy()
        for s, name in enumerate(batch.static_names):
            columns[name] = np.repeat(static[:, s], lengths)
    out = pd.DataFrame(columns)
    out.index = pd.RangeIndex(len(out))
    return out


# ---------------------------------------------------------------------- batching
def collate(batches: Sequence[IrregularBatch]) -> IrregularBatch:
    """Concatenate batches along the series axis, padding to the longest series.

    All batches must share variables, static columns, dtype and device; ids must stay unique.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("collate needs at least one batch")
    first = batches[0]
    for b in batches[1:]:
        if b.variables != first.variables:
            raise ValueError(f"cannot collate batches with variables {first.variables} and {b.variables}")
        if (b.static is None) != (first.static is None) or b.static_names != first.static_names:
            raise ValueError("cannot collate batches with different static covariates")
        if b.input_names != first.input_names:
            raise ValueError(f"cannot collate batches with inputs {first.input_names} and {b.input_names}")
        if b.dtype != first.dtype or b.device != first.device:
            raise ValueError("cannot collate batches with different dtypes or devices")
    n_rows = max(b.max_length for b in batches)

    def pad(b: IrregularBatch) -> IrregularBatch:
        extra = n_rows - b.max_length
        if extra == 0:
            return b
        last = b.times[:, -1:] if b.max_length else b.times.new_zeros((len(b), 1))
        times = torch.cat([b.times, last.expand(-1, extra)], dim=1)
        zeros = b.values.new_zeros((len(b), extra, b.n_variables))
        inputs = {}
        if b.inputs is not None:
            none = b.inputs.new_zeros((len(b), extra, b.n_inputs))
            inputs = {
                "inputs": torch.cat([b.inputs, none], 1),
                "input_mask": torch.cat([b.input_mask, none], 1),
            }
        return b._replace(
            times=times,
            values=torch.cat([b.values, zeros], 1),
            mask=torch.cat([b.mask, zeros], 1),
            **inputs,
        )

    padded = [pad(b) for b in batches]
    id_dtype = first.id_dtype if all(b.id_dtype == first.id_dtype for b in batches) else None
    return IrregularBatch(
        times=torch.cat([b.times for b in padded]),
        values=torch.cat([b.values for b in padded]),
        mask=torch.cat([b.mask for b in padded]),
        lengths=torch.cat([b.lengths for b in padded]),
        ids=_concat_ids([b.ids for b in padded]),
        variables=list(first.variables),
        static=None if first.static is None else torch.cat([b.static for b in padded]),
        static_names=first.static_names,
        inputs=None if first.inputs is None else torch.cat([b.inputs for b in padded]),
        input_mask=None if first.inputs is None else torch.cat([b.input_mask for b in padded]),
        input_names=first.input_names,
        id_col=first.id_col,
        time_col=first.time_col,
        id_dtype=id_dtype,
    )


def iterate_batches(
    batch: IrregularBatch,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | int | None = None,
    drop_last: bool = False,
) -> Iterator[IrregularBatch]:
    """Yield sub-batches of ``batch_size`` series, each trimmed to its longest series.

    With ``shuffle`` the series order is a random permutation drawn from ``generator`` (a
    ``torch.Generator`` or an int seed); every series appears exactly once per pass (the last
    sub-batch is smaller unless ``drop_last``).
    """
    batch_size = positive_int(batch_size, "batch_size")
    n = len(batch)
    if shuffle:
        if isinstance(generator, numbers.Integral):
            generator = torch.Generator().manual_seed(int(generator))
        order = torch.randperm(n, generator=generator).numpy()
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield batch.select(order[start : start + batch_size], trim=True)


def split_series(
    batch: IrregularBatch, fractions: float | Sequence[float] = 0.2, seed: int | None = 0
) -> tuple[IrregularBatch, ...]:
    """Split the series at random into disjoint parts (whole series, never rows).

    ``fractions`` is either the validation fraction (returns ``(train, val)``) or a sequence of
    fractions summing to 1 (returns one part each). Part sizes are the fractions of ``B`` rounded
    by largest remainder; a part that would be empty is a ValueError. Within a part the series keep
    their original order; each part is trimmed to its longest series.
    """
    if isinstance(fractions, numbers.Real):
        val = in_interval(fractions, "the validation fraction", 0, 1, closed="neither")
        fracs = np.array([1.0 - val, val])
    else:
        fracs = np.asarray(list(fractions), dtype=np.float64)
        if fracs.ndim != 1 or len(fracs) < 2 or (fracs <= 0).any() or abs(fracs.sum() - 1) > 1e-6:
            raise ValueError(f"fractions must be >= 2 positive numbers summing to 1, got {list(fractions)}")
    n = len(batch)
    exact = fracs * n
    sizes = np.floor(exact).astype(np.int64)
    remainder = n - sizes.sum()
    sizes[np.argsort(-(exact - sizes), kind="stable")[:remainder]] += 1
    if (sizes == 0).any():
        raise ValueError(f"{n} series are too few to split by fractions {fracs.tolist()} (a part is empty)")
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    return tuple(batch.select(np.sort(perm[bounds[k] : bounds[k + 1]]), trim=True) for k in range(len(sizes)))


def truncate(
    batch: IrregularBatch,
    t_max: float | Tensor,
    n_targets: int = 1,
    drop_no_target: bool = True,
) -> tuple[IrregularBatch, IrregularBatch]:
    """Split each series at ``t_max`` for forecasting evaluation.

    Returns ``(context, target)``: ``context`` holds every observation at times ``<= t_max`` (a
    series may have none: length 0), ``target`` the first ``n_targets`` observation rows after
    ``t_max``. ``t_max`` is a scalar or a ``(B,)`` tensor (one cut per series). With
    ``drop_no_target`` the series with no observation after ``t_max`` are removed from both.
    """
    n_targets = positive_int(n_targets, "n_targets")
    cut = torch.as_tensor(t_max, dtype=batch.times.dtype, device=batch.times.device)
    if cut.ndim == 0:
        cut = cut.expand(len(batch))
    elif tuple(cut.shape) != (len(batch),):
        raise ValueError(f"t_max must be a scalar or have shape ({len(batch)},), got {tuple(cut.shape)}")
    lengths = batch.lengths.to(batch.times.device)
    n_context = ((batch.times <= cut[:, None]) & batch.pad_mask).sum(1)
    n_target = (lengths - n_context).clamp(max=int(n_targets))
    context = _gather_rows(batch, torch.zeros_like(n_context), n_context)
    target = _gather_rows(batch, n_context, n_target)
    if drop_no_target:
        keep = (n_target > 0).cpu().numpy()
        if not keep.all():
            context, target = context.select(keep, trim=True), target.select(keep, trim=True)
    return context, target


def holdout_last(
    batch: IrregularBatch, fraction: float = 0.2, min_context: int = 2
) -> tuple[IrregularBatch, IrregularBatch, Tensor]:
    """Hold out the last observation rows of every series, for validation by forecasting.

    Each series with more than ``min_context`` rows keeps its first rows as context and gives
    its last ``round(fraction * length)`` rows (at least 1, at most ``length - min_context``) as
    targets; shorter series are all context. Returns ``(context, target, has_target)``:
    ``context`` holds every series (the rows that training may see), ``target`` the held-out rows
    of every series (length 0 where none) and ``has_target (B,)`` a bool mask of the series with
    targets. Unlike :func:`split_series`, every series contributes to both parts, so validation
    stays meaningful with a handful of series.
    """
    fraction = in_interval(fraction, "fraction", 0, 1, closed="neither")
    min_context = positive_int(min_context, "min_context")
    lengths = batch.lengths.to(batch.times.device)
    n_hold = torch.round(lengths.to(torch.float64) * float(fraction)).long().clamp_min(1)
    n_hold = torch.minimum(n_hold, (lengths - int(min_context)).clamp_min(0))
    n_context = lengths - n_hold
    context = _gather_rows(batch, torch.zeros_like(n_context), n_context)
    target = _gather_rows(batch, n_context, n_hold)
    return context.trim(), target.trim(), (n_hold > 0).cpu()
