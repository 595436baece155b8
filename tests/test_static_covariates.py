"""Static covariates: their encoding, the Forecaster's static_df, and what they are worth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctflow import Forecaster
from ctflow.data.covariates import StaticEncoder
from ctflow.models.settings import GRUODEBayesSettings, LatentODESettings, LatentSDESettings


def _static(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "unique_id": np.arange(n),
            "weight": np.linspace(50.0, 100.0, n),
            "group": pd.Categorical(["a", "b", "c"] * (n // 3)),
            "treated": [True, False] * (n // 2),
        }
    )


def test_the_encoder_standardises_numbers_and_one_hot_encodes_categories():
    static = _static()
    encoder = StaticEncoder.fit(static, "unique_id")
    assert encoder.feature_names == [
        "weight",
        "group=a",
        "group=b",
        "group=c",
        "treated=False",
        "treated=True",
    ]
    x = encoder.transform(static, [5, 0], "static_df")
    np.testing.assert_allclose(x[:, 0], [1.46385, -1.46385], rtol=1e-4)
    np.testing.assert_array_equal(x[:, 1:], [[0, 0, 1, 1, 0], [1, 0, 0, 0, 1]])
    again = StaticEncoder.from_dict(encoder.to_dict())
    np.testing.assert_array_equal(again.transform(static, [5, 0]), x)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda s: s[s["unique_id"] != 3], ValueError, r"static_df has no row for series \[3\]"),
        (
            lambda s: pd.concat([s, s.iloc[[2]].assign(weight=1.0)]),
            ValueError,
            r"static_df: series 2 has several different rows; static covariates must not change",
        ),
        (
            lambda s: s.assign(group=["a", "b", "d", "a", "b", "c"]),
            ValueError,
            r"column 'group' has categories \['d'\] not seen in training \(series \[2\]\)",
        ),
        (
            lambda s: s.assign(weight=[1.0, np.nan, 2, 3, 4, 5]),
            ValueError,
            r"'weight' is missing for series 1",
        ),
        (lambda s: s.drop(columns="treated"), ValueError, r"lacks the static column\(s\) \['treated'\]"),
        (lambda s: s.drop(columns="unique_id"), ValueError, r"static_df has no id column 'unique_id'"),
    ],
)
def test_bad_static_frames_name_what_is_wrong(change, error, message):
    static = _static()
    encoder = StaticEncoder.fit(static, "unique_id")
    encoder.transform(static, list(range(6)))  # the valid frame is accepted
    with pytest.raises(error, match=message):
        encoder.transform(change(static.copy()), list(range(6)))


def test_columns_of_other_kinds_are_refused():
    static = _static().assign(when=pd.date_range("2024-01-01", periods=6))
    with pytest.raises(TypeError, match=r"column 'when' must be numeric, categorical, text or boolean"):
        StaticEncoder.fit(static, "unique_id")
    with pytest.raises(TypeError, match="static_df must be a pandas DataFrame, got list"):
        StaticEncoder.fit([1, 2], "unique_id")


def _grouped_panel(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Short series whose level is set by a static group: the first value of a series can only
    be forecast from it."""
    rng = np.random.default_rng(seed)
    group = rng.choice(["low", "high"], n)
    level = np.where(group == "high", 3.0, -3.0)
    rows = [
        (i, t, level[i] + 0.3 * rng.normal()) for i in range(n) for t in np.cumsum(rng.uniform(0.5, 1.5, 2))
    ]
    df = pd.DataFrame(rows, columns=["unique_id", "ds", "y"])
    return df, pd.DataFrame({"unique_id": np.arange(n), "group": group})


TINY = {"max_steps": 150, "eval_every": 50, "val_fraction": 0.0, "random_state": 0}


def _model() -> Forecaster:
    return Forecaster(model=GRUODEBayesSettings(hidden_size=8, p_hidden=8, prep_hidden=4), **TINY)


def test_static_covariates_forecast_what_the_series_cannot_show(tmp_path):
    df, static = _grouped_panel(60, seed=0)
    test_df, test_static = _grouped_panel(30, seed=1)
    test_df["unique_id"] += 100
    test_static["unique_id"] += 100
    with_static = _model().fit(df, static_df=static)
    without = _model().fit(df)
    assert with_static.model_.static_dim == 2
    # Each series' first value is scored from the initial state: only the static group tells it.
    assert with_static.score(test_df, static_df=test_static) > without.score(test_df) + 0.5
    saved = with_static.save(tmp_path / "m")
    loaded = Forecaster.load(saved)
    pd.testing.assert_frame_equal(
        loaded.predict(test_df, horizon=[1.0], static_df=test_static),
        with_static.predict(test_df, horizon=[1.0], static_df=test_static),
    )
    with pytest.raises(ValueError, match=r"fitted with static covariates \['group'\]: pass static_df"):
        with_static.predict(test_df, horizon=[1.0])
    with pytest.raises(ValueError, match="static_df was given, but this model was fitted without"):
        without.predict(test_df, horizon=[1.0], static_df=test_static)
    with pytest.raises(ValueError, match=r"static_df has no row for series \[100\]"):
        with_static.predict(test_df, horizon=[1.0], static_df=test_static.iloc[1:])


@pytest.mark.parametrize(
    "settings",
    [LatentODESettings(hidden_size=4, latent_dim=2), LatentSDESettings(hidden_size=4, latent_dim=2)],
)
def test_latent_models_take_static_covariates(settings):
    df, static = _grouped_panel(12, seed=0)
    model = Forecaster(model=settings, **{**TINY, "max_steps": 5}).fit(df, static_df=static)
    assert model.model_.static_dim == model.static_encoder_.n_features
    out = model.predict(df, horizon=[1.0], static_df=static)
    assert np.isfinite(out.drop(columns=["unique_id", "ds"]).to_numpy()).all()
    with pytest.raises(ValueError, match="pass static_df"):
        model.predict(df, horizon=[1.0])


def test_the_command_line_takes_static_covariates(tmp_path):
    from ctflow.cli import main

    df, static = _grouped_panel(20, seed=0)
    df.to_csv(tmp_path / "train.csv", index=False)
    static.to_csv(tmp_path / "static.csv", index=False)
    fit = ["fit", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m"), "--max-steps", "20"]
    assert main([*fit, "--static", str(tmp_path / "static.csv"), "--val-fraction", "0"]) == 0
    out = tmp_path / "fc.csv"
    forecast = [
        "forecast",
        str(tmp_path / "m"),
        str(tmp_path / "train.csv"),
        "--horizon",
        "1",
        "-o",
        str(out),
    ]
    assert main(forecast) == 2 and not out.exists()  # the static covariates are required
    assert main([*forecast, "--static", str(tmp_path / "static.csv")]) == 0
    assert len(pd.read_csv(out)) == 20
    evaluate = ["evaluate", str(tmp_path / "m"), str(tmp_path / "train.csv"), "--horizon", "1"]
    assert main([*evaluate, "--static", str(tmp_path / "static.csv")]) == 0


def test_gru_ode_bayes_emission_sees_the_static_covariates():
    import torch

    from ctflow.data import from_dataframe, load_double_ou
    from ctflow.models import GRUODEBayes

    batch = from_dataframe(load_double_ou(3, seed=0))
    static = torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]])
    batch = batch._replace(static=static, static_names=["a", "b"])
    model = GRUODEBayes(
        2, hidden_size=8, p_hidden=8, prep_hidden=4, static_dim=2, carry_forward=True, trend=True
    )
    state = model.filter(batch)
    assert torch.equal(state.static, static)
    h = state.h.unsqueeze(1).expand(-1, 4, -1)  # four query times per series
    context = model.context(h, state, state.time.unsqueeze(1) + torch.arange(4.0))
    assert context.shape == (3, 4, 8 + 2 + 6 * 2)
    assert torch.equal(context[:, :, 8:10], static.unsqueeze(1).expand(-1, 4, -1))
    paths = model.sample_paths(state, state.time.unsqueeze(1) + torch.tensor([0.5, 1.0]), n=5)
    assert paths.shape == (5, 3, 2, 2) and torch.isfinite(paths).all()
