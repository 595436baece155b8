"""Static covariates: one row per series, encoded into the numbers a model conditions on.

A :class:`StaticEncoder` is fitted on the training ``static_df`` (an id column plus covariate
columns): numeric columns are standardised with the training mean and standard deviation,
categorical, text and boolean columns are one-hot encoded over the categories seen in training.
It remembers all of that (``to_dict`` / ``from_dict``), so forecasts encode new series the same
way, and every defect is a ``ValueError``/``TypeError`` naming the column, the series and what
was expected.

>>> import pandas as pd
>>> static = pd.DataFrame({"id": ["a", "b", "c"], "weight": [60.0, 70.0, 80.0], "sex": ["F", "M", "F"]})
>>> encoder = StaticEncoder.fit(static, "id")
>>> encoder.feature_names
['weight', 'sex=F', 'sex=M']
>>> encoder.transform(static, ["c", "a"], "static_df").round(3).tolist()
[[1.225, 1.0, 0.0], [-1.225, 1.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .irregular import plain_label, show_label

__all__ = ["StaticEncoder"]


def _is_categorical(column: pd.Series) -> bool:
    dtype = column.dtype
    return (
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_object_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
    )


@dataclass
class StaticEncoder:
    """Standardised numeric columns and one-hot categorical columns of a per-series frame."""

    id_col: str
    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)  # column -> (mean, sd)
    categories: dict[str, list[Any]] = field(default_factory=dict)  # column -> training categories
    columns: list[str] = field(default_factory=list)  # covariate columns in their frame order

    @property
    def feature_names(self) -> list[str]:
        names: list[str] = []
        for col in self.columns:
            if col in self.numeric:
                names.append(col)
            else:
                names += [f"{col}={c}" for c in self.categories[col]]
        return names

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @classmethod
    def fit(
        cls, static_df: Any, id_col: str, name: str = "static_df", ids: Sequence[Any] | None = None
    ) -> StaticEncoder:
        """Learn the encoding from the rows of ``static_df`` (only those of series ``ids``, the
        training series, when given)."""
        frame = _check_frame(static_df, id_col, name)
        if ids is not None:
            frame = frame[frame[id_col].isin(ids)].reset_index(drop=True)
        encoder = cls(id_col, columns=[c for c in frame.columns if c != id_col])
        if not encoder.columns:
            raise ValueError(f"{name} has no covariate column besides the id column {id_col!r}")
        for col in encoder.columns:
            values = frame[col]
            _check_complete(values, col, frame[id_col], name)
            if _is_categorical(values):
                encoder.categories[col] = sorted(pd.unique(values).tolist(), key=str)
            elif pd.api.types.is_numeric_dtype(values.dtype):
                x = values.to_numpy(dtype=np.float64)
                if not np.isfinite(x).all():
                    bad = frame[id_col].to_numpy()[~np.isfinite(x)][0]
                    raise ValueError(f"{name}: column {col!r} is not finite for series {show_label(bad)}")
                sd = float(x.std())
                encoder.numeric[col] = (float(x.mean()), sd if sd > 0 else 1.0)
            else:
                raise TypeError(
                    f"{name}: column {col!r} must be numeric, categorical, text or boolean, "
                    f"got dtype {values.dtype}"
                )
        return encoder

    def transform(self, static_df: Any, ids: Sequence[Any], name: str = "static_df") -> np.ndarray:
        """Features ``(len(ids), n_features)`` of the series ``ids``, in that order."""
        frame = _check_frame(static_df, self.id_col, name)
        missing_cols = [c for c in self.columns if c not in frame.columns]
        if missing_cols:
            raise ValueError(f"{name} lacks the static column(s) {missing_cols} the model was fitted with")
        rows = frame.set_index(self.id_col)
        absent = [i for i in ids if i not in rows.index]
        if absent:
            raise ValueError(
                f"{name} has no row for series {[plain_label(i) for i in absent[:5]]}"
                f"{' ...' if len(absent) > 5 else ''}: every series needs its static covariates"
            )
        picked = rows.loc[list(ids)]
        blocks = []
        for col in self.columns:
            _check_complete(picked[col].reset_index(drop=True), col, pd.Series(list(ids)), name)
            blocks.append(self._encode(picked[col], col, ids, name))
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(ids), 0))

    def _encode(self, values: pd.Series, col: str, ids: Sequence[Any], name: str) -> np.ndarray:
        if col in self.numeric:
            try:
                x = values.to_numpy(dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise TypeError(f"{name}: column {col!r} must be numeric as in training ({err})") from None
            mean, sd = self.numeric[col]
            return ((x - mean) / sd)[:, None]
        known = self.categories[col]
        unknown = sorted({v for v in values.tolist() if v not in known}, key=str)
        if unknown:
            where = [plain_label(i) for i, v in zip(ids, values.tolist(), strict=True) if v in unknown][:5]
            raise ValueError(
                f"{name}: column {col!r} has categories {unknown} not seen in training "
                f"(series {where}); known: {known}"
            )
        return np.stack([(values.to_numpy() == c).astype(np.float64) for c in known], axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id_col": self.id_col,
            "columns": list(self.columns),
            "numeric": {k: list(v) for k, v in self.numeric.items()},
            "categories": {k: [plain_label(c) for c in v] for k, v in self.categories.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StaticEncoder:
        return cls(
            d["id_col"],
            numeric={k: (float(v[0]), float(v[1])) for k, v in d["numeric"].items()},
            categories={k: list(v) for k, v in d["categories"].items()},
            columns=list(d["columns"]),
        )


def _check_frame(static_df: Any, id_col: str, name: str) -> pd.DataFrame:
    """A frame with ``id_col`` and one row per series (repeated identical rows are merged)."""
    if not isinstance(static_df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(static_df).__name__}")
    if id_col not in static_df.columns:
        raise ValueError(
            f"{name} has no id column {id_col!r}; columns are {list(map(str, static_df.columns))}"
        )
    frame = static_df.drop_duplicates()
    repeated = frame[id_col][frame[id_col].duplicated()]
    if len(repeated):
        raise ValueError(
            f"{name}: series {show_label(repeated.iloc[0])} has several different rows; static "
            "covariates must not change within a series"
        )
    return frame.reset_index(drop=True)


def _check_complete(values: pd.Series, col: str, ids: pd.Series, name: str) -> None:
    missing = values.isna().to_numpy()
    if missing.any():
        first = show_label(ids.to_numpy()[missing][0])
        raise ValueError(f"{name}: column {col!r} is missing for series {first}")
