"""Time is never implicit: the inferred unit is reported, horizons say what they were counted in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctflow import Forecaster
from ctflow.data import load_double_ou


@pytest.fixture(scope="module")
def hourly():
    df = load_double_ou(12, seed=0)
    df["ds"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(df["ds"] * 6, unit="h")
    return df


def test_the_inferred_unit_is_reported(hourly, caplog):
    with caplog.at_level("INFO", logger="ctflow"):
        model = Forecaster(max_steps=2, val_fraction=0.0, random_state=0).fit(hourly)
    assert model.time_unit_ == "h"
    assert "time column 'ds' counted in 'h' (hours), inferred from the typical gap" in caplog.text
    assert repr(model).endswith("# fitted: 12 series, variables ['y1', 'y2'], time unit 'h' (hours)")
    numeric = Forecaster(max_steps=2, val_fraction=0.0).fit(load_double_ou(6, seed=0))
    assert numeric.time_unit_ is None and "time unit" not in repr(numeric)
    assert "fitted" not in repr(Forecaster())


def test_text_horizons_work_in_python_and_numbers_say_their_unit(hourly, caplog):
    model = Forecaster(max_steps=2, val_fraction=0.0, random_state=0).fit(hourly)
    spans = model.predict(hourly, horizon=["12h", "2D"])
    numbers = model.predict(hourly, horizon=[12.0, 48.0])
    pd.testing.assert_frame_equal(spans, numbers)
    last = hourly.groupby("unique_id")["ds"].max()
    offsets = spans["ds"].to_numpy() - last.reindex(spans["unique_id"]).to_numpy()
    assert set(pd.to_timedelta(offsets)) == {pd.Timedelta("12h"), pd.Timedelta("2D")}
    with caplog.at_level("INFO", logger="ctflow"):
        model.predict(hourly, horizon=[3])
    assert "horizon [3] counted in the model's time unit 'h' (hours)" in caplog.text
    with pytest.raises(ValueError, match="horizon offset 'soon' is not a time span such as '12h'"):
        model.predict(hourly, horizon=["soon"])
    plain = Forecaster(max_steps=2, val_fraction=0.0).fit(load_double_ou(6, seed=0))
    with pytest.raises(
        TypeError, match="horizon offset '12h' is a time span, but the model's times are plain"
    ):
        plain.predict(load_double_ou(6, seed=0), horizon=["12h"])
    assert np.isfinite(numbers[["y1", "y2"]].to_numpy()).all()
