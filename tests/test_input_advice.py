"""Inputs that cannot silently go wrong: empty columns, series descriptors given as targets, and
variables a series has never observed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctflow import Forecaster

TINY = {"max_steps": 2, "val_fraction": 0.0, "random_state": 0}


def _panel(n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [(i, t, rng.normal(), 40.0 + i, 1.0) for i in range(n) for t in range(5)]
    return pd.DataFrame(rows, columns=["unique_id", "ds", "y", "age", "flag"])


def test_an_all_missing_value_column_is_an_error():
    df = _panel().assign(empty=np.nan)
    with pytest.raises(ValueError, match=r"value column\(s\) \['empty'\] have no observed value"):
        Forecaster(**TINY).fit(df)


def test_columns_constant_within_every_series_point_to_static_df(caplog):
    with caplog.at_level("WARNING", logger="ctflow"):
        Forecaster(**TINY).fit(_panel())
    assert "value column(s) ['age', 'flag'] never change within a series" in caplog.text
    assert "pass them as static_df" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ctflow"):
        Forecaster(**TINY).fit(_panel()[["unique_id", "ds", "y"]])
    assert "never change" not in caplog.text


def test_forecasting_a_variable_a_series_never_observed_is_flagged(caplog):
    df = _panel()[["unique_id", "ds", "y", "age"]].assign(age=lambda f: f["age"] + f["ds"])
    model = Forecaster(**TINY).fit(df)
    context = df.copy()
    context.loc[context["unique_id"] == 2, "age"] = np.nan
    with caplog.at_level("WARNING", logger="ctflow"):
        out = model.predict(context, horizon=[1.0])
    assert np.isfinite(out[["y", "age"]].to_numpy()).all()
    assert (
        "1 of 6 series have never observed some variable in the context (e.g. series 2: ['age'])"
        in caplog.text
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="ctflow"):
        model.predict(df, horizon=[1.0])
    assert "never observed" not in caplog.text
