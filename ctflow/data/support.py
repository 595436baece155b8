"""Bounded targets: each variable's support and the fixed bijection onto the real line.

Concentrations, counts, weights and proportions live on part of the real line; a Gaussian (or any
real-valued) emission puts mass outside it. A variable declared ``"positive"`` is modelled as
``z = log y``, one in ``(low, high)`` as ``z = logit((y - low) / (high - low))``; the model's
density of ``z`` becomes a density of ``y`` by the change of variables ``p(y) = p(z) |dz/dy|``, so
likelihoods stay exact and in the data's units, and samples and quantiles (monotone maps) land
inside the support.

>>> import numpy as np
>>> support = Support.fit({"conc": "positive", "frac": (0.0, 1.0)}, ["conc", "frac", "temp"])
>>> support.kinds
['positive', 'interval', 'real']
>>> z = support.forward(np.array([[1.0, 0.5, -3.0]]))
>>> z.round(6).tolist()
[[0.0, 0.0, -3.0]]
>>> support.inverse(z).tolist()
[[1.0, 0.5, -3.0]]
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .irregular import show_label

__all__ = ["Support"]

KINDS = ("real", "positive", "interval")


def _spec(value: Any, where: str) -> tuple[str, float, float]:
    """``(kind, low, high)`` of one support declaration."""
    if value is None or (isinstance(value, str) and value == "real"):
        return "real", -np.inf, np.inf
    if isinstance(value, str) and value == "positive":
        return "positive", 0.0, np.inf
    if isinstance(value, (tuple, list)) and len(value) == 2:
        low, high = value
        ok = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (low, high))
        if ok and np.isfinite(low) and np.isfinite(high) and low < high:
            return "interval", float(low), float(high)
    raise ValueError(
        f"{where} must be 'real', 'positive' or a (low, high) pair of finite numbers with low < high, "
        f"got {value!r}"
    )


@dataclass(frozen=True)
class Support:
    """Each variable's support (``kinds``: ``"real"``, ``"positive"``, ``"interval"`` with
    ``lows``/``highs``) and the bijection ``forward`` (data to real line) / ``inverse``."""

    kinds: list[str]
    lows: np.ndarray
    highs: np.ndarray

    @classmethod
    def fit(cls, support: Any, variables: Sequence[str]) -> Support:
        """From ``support``: None or one declaration for every variable, or a mapping from
        variable names to declarations (the others real)."""
        variables = list(variables)
        if isinstance(support, Mapping):
            unknown = [k for k in support if k not in variables]
            if unknown:
                raise ValueError(f"support names {unknown}, which are not value columns {variables}")
            specs = [_spec(support.get(v), f"support[{v!r}]") for v in variables]
        else:
            specs = [_spec(support, "support")] * len(variables)
        kinds, lows, highs = zip(*specs, strict=True) if specs else ((), (), ())
        return cls(list(kinds), np.array(lows, dtype=np.float64), np.array(highs, dtype=np.float64))

    @property
    def bounded(self) -> bool:
        return any(k != "real" for k in self.kinds)

    @property
    def interior_point(self) -> np.ndarray:
        """A value inside each variable's support ``(D,)`` (0, 1 or the interval's middle)."""
        points = {"real": 0.0, "positive": 1.0}
        pairs = zip(self.kinds, self.lows, self.highs, strict=True)
        return np.array([points[k] if k in points else (lo + hi) / 2 for k, lo, hi in pairs])

    def check(self, values: np.ndarray, variables: Sequence[str], rows: Sequence[Any], name: str) -> None:
        """ValueError naming the first observed value outside its variable's open support."""
        observed = ~np.isnan(values)
        outside = observed & ~((values > self.lows) & (values < self.highs))
        if outside.any():
            r, d = np.argwhere(outside)[0]
            what = (
                "positive" if self.kinds[d] == "positive" else f"inside ({self.lows[d]:g}, {self.highs[d]:g})"
            )
            raise ValueError(
                f"{name}: value {float(values[r, d])!r} of column {variables[d]!r} at row "
                f"{show_label(rows[r])} is not {what}, as its declared support requires"
            )

    def unbounded_nonnegative(self, values: np.ndarray, variables: Sequence[str]) -> list[str]:
        """The real variables whose observed ``values`` are all >= 0 (candidates for a bound)."""
        out = []
        for d, kind in enumerate(self.kinds):
            column = values[:, d]
            column = column[~np.isnan(column)]
            if kind == "real" and column.size and (column >= 0).all():
                out.append(variables[d])
        return out

    def transform_frame(self, df: pd.DataFrame, variables: Sequence[str], name: str = "df") -> pd.DataFrame:
        """``df`` with its value columns checked and mapped to the real line (``df`` itself when
        every variable is real)."""
        if not self.bounded:
            return df
        values = df[list(variables)].to_numpy(dtype=np.float64, na_value=np.nan)
        self.check(values, variables, df.index, name)
        out = df.copy()
        mapped = self.forward(values)
        for d, col in enumerate(variables):
            out[col] = mapped[:, d]
        return out

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Data ``(..., D)`` to the real line (NaN stays NaN)."""
        out = np.array(values, dtype=np.float64, copy=True)
        for d, kind in enumerate(self.kinds):
            if kind == "positive":
                out[..., d] = np.log(out[..., d])
            elif kind == "interval":
                u = (out[..., d] - self.lows[d]) / (self.highs[d] - self.lows[d])
                out[..., d] = np.log(u) - np.log1p(-u)
        return out

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """The real line back to the data's support."""
        out = np.array(values, dtype=np.float64, copy=True)
        for d, kind in enumerate(self.kinds):
            if kind == "positive":
                with np.errstate(over="ignore"):
                    out[..., d] = np.exp(out[..., d])
            elif kind == "interval":
                u = 0.5 * (1.0 + np.tanh(0.5 * out[..., d]))  # the logistic function, overflow-free
                out[..., d] = self.lows[d] + (self.highs[d] - self.lows[d]) * u
        return out

    def log_jacobian(self, values: np.ndarray) -> np.ndarray:
        """``log |dz/dy|`` per entry of data ``values (..., D)`` (0 for real variables, NaN stays)."""
        out = np.zeros_like(np.asarray(values, dtype=np.float64))
        for d, kind in enumerate(self.kinds):
            y = values[..., d]
            if kind == "positive":
                out[..., d] = -np.log(y)
            elif kind == "interval":
                low, high = self.lows[d], self.highs[d]
                out[..., d] = np.log(high - low) - np.log(y - low) - np.log(high - y)
        return np.where(np.isnan(values), np.nan, out)

    def to_dict(self) -> dict[str, Any]:
        return {"kinds": list(self.kinds), "lows": self.lows.tolist(), "highs": self.highs.tolist()}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> Support:
        kinds = [str(k) for k in config["kinds"]]
        if any(k not in KINDS for k in kinds):
            raise ValueError(f"unknown support kinds {kinds}")
        lows = np.array([float(v) for v in config["lows"]], dtype=np.float64)
        highs = np.array([float(v) for v in config["highs"]], dtype=np.float64)
        return cls(kinds, lows, highs)
