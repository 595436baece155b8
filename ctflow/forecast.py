"""The result of a probabilistic forecast: samples at query points, and views of them."""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .checkpoint import atomic_write

__all__ = [
    "Forecast",
    "check_coverage",
    "check_quantiles",
    "quantile_frame",
    "interval_frame",
    "interval_levels",
    "long_table",
]


def check_quantiles(quantiles: Any) -> list[float]:
    """Quantile levels as floats strictly inside (0, 1)."""
    if isinstance(quantiles, numbers.Real) and not isinstance(quantiles, bool):
        quantiles = [quantiles]
    if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, Sequence | np.ndarray):
        raise TypeError(
            f"quantiles must be a number or a sequence of numbers, got {type(quantiles).__name__}"
        )
    out = []
    for q in quantiles:
        if isinstance(q, bool) or not isinstance(q, numbers.Real):
            raise TypeError(f"quantiles must be numbers, got {q!r}")
        if not 0 < float(q) < 1:
            raise ValueError(f"quantiles must lie strictly between 0 and 1, got {q!r}")
        out.append(float(q))
    if not out:
        raise ValueError("quantiles must hold at least one level")
    return out


def check_coverage(coverage: Any) -> list[float]:
    """Interval coverages (central probability) as floats strictly inside (0, 1)."""
    try:
        return check_quantiles(coverage)
    except (TypeError, ValueError) as err:
        raise type(err)(str(err).replace("quantiles", "coverage")) from None


def _label(level: float) -> str:
    return f"{100 * level:g}"


def _with_columns(queries: pd.DataFrame, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.concat([queries, pd.DataFrame(columns, index=queries.index)], axis=1)


def quantile_frame(
    queries: pd.DataFrame, variables: Sequence[str], levels: Sequence[float], values: np.ndarray
) -> pd.DataFrame:
    """``queries`` plus per variable one column ``{variable}_q{100 q}`` per level, from quantiles
    ``values (len(levels), n_queries, D)``."""
    return _with_columns(
        queries,
        {
            f"{v}_q{_label(lv)}": values[i, :, d]
            for d, v in enumerate(variables)
            for i, lv in enumerate(levels)
        },
    )


def long_table(
    queries: pd.DataFrame,
    variables: Sequence[str],
    mean: np.ndarray,
    levels: Sequence[float],
    values: np.ndarray,
) -> pd.DataFrame:
    """Long frame: the two query columns, ``variable``, ``mean`` and one column ``q{100 q}`` per
    level, from means ``(n_queries, D)`` and quantiles ``values (len(levels), n_queries, D)``."""
    n, d = len(queries), len(variables)
    out = pd.DataFrame({c: np.repeat(queries[c].to_numpy(), d) for c in queries.columns[:2]})
    out["variable"] = np.tile(np.asarray(variables, dtype=object), n)
    out["mean"] = np.asarray(mean).reshape(-1)
    for i, level in enumerate(levels):
        out[f"q{_label(level)}"] = values[i].reshape(-1)
    return out


def interval_levels(coverage: Sequence[float]) -> list[float]:
    """The quantile levels ``[lower_1, upper_1, lower_2, ...]`` of central intervals."""
    return [bound for c in coverage for bound in ((1 - c) / 2, (1 + c) / 2)]


def interval_frame(
    queries: pd.DataFrame, variables: Sequence[str], coverage: Sequence[float], values: np.ndarray
) -> pd.DataFrame:
    """``queries`` plus per variable and coverage ``{variable}_lower_{pct}`` and ``_upper_``, from
    quantiles ``values`` at :func:`interval_levels` ``(2 len(coverage), n_queries, D)``."""
    columns: dict[str, np.ndarray] = {}
    for d, v in enumerate(variables):
        for i, c in enumerate(coverage):
            columns[f"{v}_lower_{_label(c)}"] = values[2 * i, :, d]
            columns[f"{v}_upper_{_label(c)}"] = values[2 * i + 1, :, d]
    return _with_columns(queries, columns)


class Forecast:
    """Samples of the forecast distribution at a set of query points.

    Args:
        queries: frame of the query points (id and time columns), one row per query.
        variables: the ``D`` variable names.
        samples: ``(n_samples, n_queries, D)`` draws in original units; joint over each series'
            queries when ``paths`` (sample paths), else independent marginal draws per query.
        mean: ``(n_queries, D)`` forecast means (default: the sample mean).
        history: the context observations (id, time, variables) for :meth:`plot`.

    >>> import numpy as np, pandas as pd
    >>> queries = pd.DataFrame({"unique_id": [0, 0], "ds": [1.0, 2.0]})
    >>> samples = np.linspace(0.0, 1.0, 101)[:, None, None] + np.array([[0.0], [1.0]])  # (101, 2, 1)
    >>> forecast = Forecast(queries, ["y"], samples)
    >>> forecast
    Forecast(2 queries of 1 series, variables=['y'], n_samples=101, paths=False)
    >>> forecast.interval(0.8)
       unique_id   ds  y_lower_80  y_upper_80
    0          0  1.0         0.1         0.9
    1          0  2.0         1.1         1.9
    """

    def __init__(
        self,
        queries: pd.DataFrame,
        variables: Sequence[str],
        samples: np.ndarray,
        mean: np.ndarray | None = None,
        history: pd.DataFrame | None = None,
        id_col: str = "unique_id",
        time_col: str = "ds",
        paths: bool = False,
    ):
        samples = np.asarray(samples, dtype=np.float64)
        variables = [str(v) for v in variables]
        if samples.ndim != 3 or samples.shape[1:] != (len(queries), len(variables)):
            raise ValueError(
                f"samples must have shape (n_samples, {len(queries)}, {len(variables)}), got {samples.shape}"
            )
        if samples.shape[0] < 1:
            raise ValueError("a forecast needs at least one sample")
        self.queries = queries[[id_col, time_col]].reset_index(drop=True)
        self.variables = variables
        self.samples = samples
        self._mean = samples.mean(0) if mean is None else np.asarray(mean, dtype=np.float64)
        if self._mean.shape != samples.shape[1:]:
            raise ValueError(f"mean must have shape {samples.shape[1:]}, got {self._mean.shape}")
        self.history = history
        self.id_col, self.time_col, self.paths = id_col, time_col, paths

    def __repr__(self) -> str:
        return (
            f"Forecast({len(self.queries)} queries of {self.queries[self.id_col].nunique()} series, "
            f"variables={self.variables}, n_samples={self.samples.shape[0]}, paths={self.paths})"
        )

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def n_samples(self) -> int:
        return self.samples.shape[0]

    def _frame(self, columns: dict[str, np.ndarray]) -> pd.DataFrame:
        return _with_columns(self.queries, columns)

    @property
    def mean(self) -> pd.DataFrame:
        """Forecast means: id, time and one column per variable."""
        return self._frame({v: self._mean[:, d] for d, v in enumerate(self.variables)})

    def quantile_array(self, q: float | Sequence[float]) -> np.ndarray:
        """``(len(q), n_queries, D)`` sample quantiles (linear interpolation)."""
        levels = check_quantiles(q)
        return np.quantile(self.samples, levels, axis=0)

    def quantile(self, q: float | Sequence[float]) -> pd.DataFrame:
        """Quantiles: id, time and per variable one column ``{variable}_q{100 q}`` per level."""
        levels = check_quantiles(q)
        return quantile_frame(self.queries, self.variables, levels, self.quantile_array(levels))

    def interval(self, coverage: float | Sequence[float] = (0.8, 0.95)) -> pd.DataFrame:
        """Central intervals: per variable and coverage, ``{variable}_lower_{pct}`` and ``_upper_``."""
        levels = check_coverage(coverage)
        return interval_frame(
            self.queries, self.variables, levels, self.quantile_array(interval_levels(levels))
        )

    def to_frame(self, quantiles: Sequence[float] = (0.025, 0.1, 0.5, 0.9, 0.975)) -> pd.DataFrame:
        """Long frame: id, time, variable, mean and one column ``q{100 q}`` per quantile level."""
        levels = check_quantiles(quantiles)
        return long_table(self.queries, self.variables, self._mean, levels, self.quantile_array(levels))

    def plot(
        self,
        series_id: Any,
        ax: Any = None,
        variables: Sequence[str] | None = None,
        coverage: Sequence[float] = (0.5, 0.8, 0.95),
        save: str | os.PathLike | None = None,
        parents: bool = False,
    ) -> Any:
        """Plot one series: its history (dots), forecast median (line) and shaded central intervals.

        With ``ax=None`` a new figure gets one panel per variable; a single ``ax`` takes one
        variable (the first of ``variables``). Returns the axes. ``save``: also write the figure
        to this image file (PNG, PDF, SVG, ... by its suffix; atomically, into an existing folder
        unless ``parents``).
        """
        import matplotlib.pyplot as plt

        rows = np.flatnonzero((self.queries[self.id_col] == series_id).to_numpy())
        if len(rows) == 0:
            raise ValueError(f"series {series_id!r} is not in this forecast")
        names = list(variables) if variables is not None else self.variables
        unknown = [v for v in names if v not in self.variables]
        if unknown:
            raise ValueError(f"unknown variable(s) {unknown}; valid: {self.variables}")
        levels = sorted(check_coverage(coverage), reverse=True)
        if ax is None:
            fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.2 * len(names)), sharex=True, squeeze=False)
            axes = list(axes[:, 0])
            fig.suptitle(f"series {series_id}")
        else:
            axes, names = [ax], names[:1]
        order = rows[np.argsort(self.queries[self.time_col].to_numpy()[rows], kind="stable")]
        t = self.queries[self.time_col].to_numpy()[order]
        for a, name in zip(axes, names, strict=True):
            d = self.variables.index(name)
            if self.history is not None and name in self.history:
                h = self.history[self.history[self.id_col] == series_id]
                a.plot(h[self.time_col], h[name], "o", ms=3, color="0.2", label="observed")
            for c in levels:
                lo, hi = self.quantile_array([(1 - c) / 2, (1 + c) / 2])[:, order, d]
                a.fill_between(t, lo, hi, alpha=0.18 + 0.5 * (1 - c), color="C0", lw=0, label=f"{_label(c)}%")
            a.plot(t, self.quantile_array(0.5)[0, order, d], "-o", ms=3, color="C0", label="median")
            a.set_ylabel(name)
        axes[0].legend(loc="best", fontsize=7)
        if save is not None:
            path = Path(save)
            fmt = path.suffix.lstrip(".") or "png"
            figure = axes[0].figure
            figure.tight_layout()
            atomic_write(path, lambda tmp: figure.savefig(tmp, format=fmt, dpi=110), parents)
        return axes if ax is None else ax
