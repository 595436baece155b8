"""Bounded targets: the support bijections, exact densities in the data's units, forecasts in range."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctflow import Forecaster
from ctflow.data.support import Support


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=8),
    st.floats(-5, 5),
    st.floats(0.1, 10),
)
def test_the_bijections_invert_and_their_jacobians_match_finite_differences(ys, low, width):
    support = Support.fit({"a": "positive", "b": (low, low + width)}, ["a", "b", "c"])
    y = np.array([[v, low + width * (v / (1 + v)), -v] for v in ys])
    z = support.forward(y)
    np.testing.assert_allclose(support.inverse(z), y, rtol=1e-9, atol=1e-9 * width)
    eps = 1e-6 * np.maximum(1.0, np.abs(y))
    eps[:, 1] = 1e-7 * width
    numeric = (support.forward(y + eps) - support.forward(y - eps)) / (2 * eps)
    np.testing.assert_allclose(support.log_jacobian(y), np.log(np.abs(numeric)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("support", "message"),
    [
        ("negative", "support must be 'real', 'positive' or a \\(low, high\\) pair"),
        ((1.0, 1.0), "low < high"),
        ({"zz": "positive"}, r"support names \['zz'\], which are not value columns"),
        ({"y": (0, float("inf"))}, r"support\['y'\] must be"),
    ],
)
def test_bad_support_declarations_are_named(support, message):
    with pytest.raises(ValueError, match=message):
        Support.fit(support, ["y"])


def _positive_panel(n: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        level = rng.uniform(0.5, 3.0)
        for t in np.sort(rng.uniform(0, 10, 8)):
            rows.append((i, t, level * np.exp(0.3 * rng.normal()), rng.uniform(0.05, 0.95)))
    return pd.DataFrame(rows, columns=["unique_id", "ds", "conc", "frac"])


TINY = {"max_steps": 30, "eval_every": 10, "val_fraction": 0.0, "random_state": 0, "n_samples": 300}


@pytest.fixture(scope="module")
def bounded():
    df = _positive_panel()
    est = Forecaster(support={"conc": "positive", "frac": (0.0, 1.0)}, **TINY).fit(df)
    return df, est


def test_bounded_forecasts_stay_in_their_support(bounded):
    df, est = bounded
    fc = est.forecast(df, horizon=[1.0, 5.0, 50.0])
    assert (fc.samples[..., 0] > 0).all()
    assert ((fc.samples[..., 1] > 0) & (fc.samples[..., 1] < 1)).all()
    q = est.predict_quantiles(df, horizon=[1.0, 50.0], quantiles=[0.001, 0.5, 0.999])
    assert (q["conc_q0.1"] > 0).all() and (q["frac_q99.9"] < 1).all() and (q["frac_q0.1"] > 0).all()
    # the mean is the mean of the bounded variable (not the bijection of the latent mean)
    mean = est.predict(df, horizon=[5.0])
    draws = est.sample(df, horizon=[5.0], n_samples=4000, paths=False, seed=1)
    np.testing.assert_allclose(mean["conc"], draws[..., 0].mean(0), rtol=0.1)


def test_bounded_densities_are_exact_in_the_data_units(bounded):
    df, est = bounded
    context = df[df["unique_id"] == 3]
    t = float(context["ds"].max()) + 1.0
    grid = np.linspace(1e-4, 30.0, 6000)
    targets = pd.DataFrame({"unique_id": 3, "ds": t, "conc": grid, "frac": np.nan})
    density = np.exp(est.predictive_log_prob(context, targets))
    assert abs(np.trapezoid(density, grid) - 1.0) < 0.02  # integrates to 1 over (0, inf)
    fractions = np.linspace(1e-5, 1 - 1e-5, 6000)
    targets = pd.DataFrame({"unique_id": 3, "ds": t, "conc": np.nan, "frac": fractions})
    density = np.exp(est.predictive_log_prob(context, targets))
    assert abs(np.trapezoid(density, fractions) - 1.0) < 0.02


def test_values_outside_the_support_are_named(bounded):
    df, est = bounded
    bad = df.copy()
    bad.loc[5, "conc"] = 0.0
    with pytest.raises(ValueError, match=r"value 0.0 of column 'conc' at row 5 is not positive"):
        Forecaster(support={"conc": "positive"}, **TINY).fit(bad)
    with pytest.raises(ValueError, match=r"column 'frac' at row 5 is not inside \(0, 1\)"):
        est.predict(
            bad.assign(frac=bad["frac"].where(bad.index != 5, 1.0)).assign(conc=df["conc"]), horizon=[1.0]
        )


def test_save_and_load_keep_the_support(bounded, tmp_path):
    df, est = bounded
    est.save(tmp_path / "m")
    again = Forecaster.load(tmp_path / "m")
    assert again.support_.kinds == ["positive", "interval"]
    pd.testing.assert_frame_equal(
        again.predict_quantiles(df, horizon=[2.0]), est.predict_quantiles(df, horizon=[2.0])
    )


def test_non_negative_columns_are_pointed_out(caplog):
    df = _positive_panel(8)
    with caplog.at_level("WARNING", logger="ctflow"):
        Forecaster(max_steps=2, val_fraction=0.0).fit(df)
    assert "value column(s) ['conc', 'frac'] hold no negative value" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ctflow"):
        Forecaster(max_steps=2, val_fraction=0.0, support={"conc": "positive"}).fit(
            df.assign(frac=df["frac"] - 0.5)
        )
    assert "no negative value" not in caplog.text


def test_the_command_line_declares_supports(tmp_path, capsys):
    import json

    from ctflow.cli import main

    data = tmp_path / "p.csv"
    _positive_panel(8).to_csv(data, index=False)
    model = tmp_path / "m"
    args = ["fit", str(data), "--out", str(model), "--max-steps", "2", "--val-fraction", "0"]
    assert main([*args, "--support", "conc=positive", "frac=0,1"]) == 0
    config = json.loads((model / "config.json").read_text())
    assert config["fitted"]["support"]["kinds"] == ["positive", "interval"]
    assert main([*args, "--support", "conc"]) == 2
    assert "--support 'conc': expected COL=positive or COL=LOW,HIGH" in capsys.readouterr().err
