"""Model settings: the objects behind ``Forecaster(model=...)``: the models they build, their
defaults, scikit-learn nesting (clone, ``model__`` parameters, grids), persistence and checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import ParameterGrid

from ctflow import Forecaster
from ctflow.models import GRUODEBayes, LatentODE, LatentSDE
from ctflow.models.settings import (
    SETTINGS,
    GRUODEBayesSettings,
    LatentODESettings,
    LatentSDESettings,
    model_settings,
)

LATENT_DEFAULTS = {
    "latent_dim": 16,
    "hidden_size": 32,
    "ode_hidden": 64,
    "p_hidden": 32,
    "posterior_layers": 4,
    "emission": "gaussian",
    "posterior": "gaussian",
    "n_samples": 4,
    "eval_samples": 32,
    "n_particles": 64,
    "solver": {"method": "euler", "step_size": 1.0, "max_steps": 2},
}
# The constructor arguments of each model under its default settings.
DEFAULT_KWARGS = {
    GRUODEBayesSettings: {
        "hidden_size": 32,
        "p_hidden": 32,
        "prep_hidden": 16,
        "emission": "gaussian",
        "emission_options": {"linear_skip": "features"},
        "solver": {"method": "exp_euler", "step_size": 1.0, "max_steps": 2},
        "post_jump_weight": 0.0,
        "carry_forward": True,
        "trend": True,
        "forecast_cut": 0.5,
        "update_dropout": 0.0,
    },
    LatentODESettings: {**LATENT_DEFAULTS, "objective": "iwae"},
    LatentSDESettings: {
        **LATENT_DEFAULTS,
        "objective": "elbo",
        "diffusion": 0.1,
        "learn_diffusion": True,
        "sde_method": "euler",
    },
}
MODEL_CLASSES = {GRUODEBayesSettings: GRUODEBayes, LatentODESettings: LatentODE, LatentSDESettings: LatentSDE}


def tiny_frame(n_series: int = 6, n_obs: int = 6, seed: int = 0) -> pd.DataFrame:
    """Short noisy lines at random times, one variable."""
    rng = np.random.default_rng(seed)
    rows = [
        (f"s{i}", t, 0.5 * t + rng.normal(0, 0.2))
        for i in range(n_series)
        for t in np.sort(rng.uniform(0, 5, n_obs))
    ]
    return pd.DataFrame(rows, columns=["unique_id", "ds", "y"])


TINY = {"max_steps": 2, "val_fraction": 0.0, "random_state": 0}


# ---------------------------------------------------------------- building models
@pytest.mark.parametrize("cls", list(DEFAULT_KWARGS), ids=lambda c: c.name)
def test_settings_build_their_model_with_the_checked_arguments(cls, monkeypatch):
    real = MODEL_CLASSES[cls]
    assert cls.model_class is real and SETTINGS[cls.name] is cls
    seen = []

    class Recording(real):
        def __init__(self, n_variables, **kwargs):
            seen.append((n_variables, kwargs))
            super().__init__(n_variables, **kwargs)

    monkeypatch.setattr(cls, "model_class", Recording)
    settings = cls()
    assert settings.get_params() == cls.defaults()
    model = settings.build(n_variables=3)
    assert isinstance(model, real)
    assert seen == [(3, settings.model_kwargs())]
    assert settings.model_kwargs() == DEFAULT_KWARGS[cls]
    assert model.n_variables == 3
    size = "hidden_size" if cls is GRUODEBayesSettings else "latent_dim"
    assert getattr(model, size) == DEFAULT_KWARGS[cls][size]


@pytest.mark.parametrize("cls", list(DEFAULT_KWARGS), ids=lambda c: c.name)
def test_name_dict_and_object_forms_give_the_same_settings(cls):
    by_name = model_settings(cls.name)
    assert type(by_name) is cls and by_name.get_params() == cls().get_params()
    by_dict = model_settings({"name": cls.name, "hidden_size": 8, "emission": "maf"})
    assert by_dict.get_params() == cls(hidden_size=8, emission="maf").get_params()
    same = cls(hidden_size=8)
    assert model_settings(same) is same


def test_settings_options_reach_the_model():
    settings = GRUODEBayesSettings(
        hidden_size=6, p_hidden=5, prep_hidden=3, solver="rk4", step_size=0.5, max_steps_per_interval=3
    )
    kwargs = settings.model_kwargs()
    assert kwargs["solver"] == {"method": "rk4", "step_size": 0.5, "max_steps": 3}
    model = settings.build(2)
    assert (model.hidden_size, model.n_variables) == (6, 2)
    sde = LatentSDESettings(latent_dim=3, diffusion=0.3, learn_diffusion=False).model_kwargs()
    assert (sde["latent_dim"], sde["diffusion"], sde["learn_diffusion"]) == (3, 0.3, False)


# ---------------------------------------------------------------- scikit-learn nesting
def test_clone_gives_equal_but_distinct_settings():
    est = Forecaster(model=GRUODEBayesSettings(hidden_size=8, emission_options={"linear_skip": True}))
    copy = clone(est)
    assert type(copy.model) is GRUODEBayesSettings
    assert copy.model is not est.model
    assert copy.model.get_params() == est.model.get_params()
    assert copy.model.emission_options is not est.model.emission_options
    copy.set_params(model__hidden_size=4)
    assert (copy.model.hidden_size, est.model.hidden_size) == (4, 8)


def test_nested_set_params_on_the_default_forecaster():
    est = Forecaster()
    assert est.model == "gru_ode_bayes"
    assert est.set_params(model__hidden_size=8) is est
    assert type(est.model) is GRUODEBayesSettings
    params = est.get_params(deep=True)
    assert params["model__hidden_size"] == 8
    assert params["model__p_hidden"] == GRUODEBayesSettings().p_hidden  # the rest keep their defaults
    latent = Forecaster(model="latent_ode").set_params(model__latent_dim=4, lr=0.01)
    assert type(latent.model) is LatentODESettings and latent.model.latent_dim == 4 and latent.lr == 0.01
    # A new model and its options in one call: the model is set first.
    both = Forecaster().set_params(model=LatentSDESettings(), model__diffusion=0.2)
    assert type(both.model) is LatentSDESettings and both.model.diffusion == 0.2
    with pytest.raises(ValueError, match="nope"):
        Forecaster().set_params(model__nope=1)


def test_parameter_grid_over_model_settings():
    df = tiny_frame()
    base = Forecaster(model=GRUODEBayesSettings(p_hidden=4, prep_hidden=2), **TINY)
    sizes = []
    for params in ParameterGrid({"model__hidden_size": [4, 8]}):
        est = clone(base).set_params(**params).fit(df)
        sizes.append(est.model_.hidden_size)
        assert est.model_kwargs_["hidden_size"] == params["model__hidden_size"]
        assert est.model_kwargs_["p_hidden"] == 4
    assert sizes == [4, 8]
    assert base.model.hidden_size == GRUODEBayesSettings().hidden_size  # the template is untouched


# ---------------------------------------------------------------- persistence
def test_non_default_settings_survive_save_and_load(tmp_path):
    df = tiny_frame(seed=1)
    settings = GRUODEBayesSettings(
        hidden_size=6,
        p_hidden=5,
        prep_hidden=3,
        emission="mixlogistic",
        emission_options={"n_components": 3},
        solver="euler",
        step_size=0.5,
        max_steps_per_interval=3,
        post_jump_weight=0.2,
        trend=False,
        forecast_cut=0.25,
    )
    est = Forecaster(model=settings, **TINY).fit(df)
    loaded = Forecaster.load(est.save(tmp_path / "m"))
    assert type(loaded.model) is GRUODEBayesSettings
    assert loaded.model.get_params() == settings.get_params()
    assert loaded.model_kwargs_ == est.model_kwargs_
    pd.testing.assert_frame_equal(loaded.predict(df, horizon=[0.5, 1.0]), est.predict(df, horizon=[0.5, 1.0]))
    np.testing.assert_array_equal(
        loaded.forecast(df, horizon=[1.0], n_samples=8, seed=0).samples,
        est.forecast(df, horizon=[1.0], n_samples=8, seed=0).samples,
    )


# ---------------------------------------------------------------- checks
@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        (GRUODEBayesSettings(hidden_size=0), ValueError, "hidden_size must be a positive int, got 0"),
        (LatentODESettings(hidden_size=0), ValueError, "hidden_size"),
        (GRUODEBayesSettings(emission="nope"), ValueError, "unknown emission 'nope'"),
        (LatentODESettings(posterior="nope"), ValueError, "unknown posterior 'nope'"),
        (GRUODEBayesSettings(solver="nope"), ValueError, "unknown solver 'nope'"),
        (LatentSDESettings(solver="nope"), ValueError, "unknown solver 'nope'"),
        (GRUODEBayesSettings(forecast_cut=2.0), ValueError, "forecast_cut"),
        (GRUODEBayesSettings(carry_forward="yes"), TypeError, "carry_forward must be True or False"),
        (GRUODEBayesSettings(carry_forward=False), ValueError, "trend=True needs carry_forward=True"),
        (GRUODEBayesSettings(step_size=0.0), ValueError, "step_size"),
        (GRUODEBayesSettings(emission_options=[1]), TypeError, "emission_options"),
        (LatentSDESettings(sde_method="nope"), ValueError, "sde_method"),
    ],
    ids=[
        "hidden_size",
        "latent-hidden_size",
        "emission",
        "posterior",
        "solver",
        "sde-solver",
        "forecast_cut",
        "carry_forward",
        "trend",
        "step_size",
        "emission_options",
        "sde_method",
    ],
)
def test_bad_settings_name_the_parameter(settings, error, match):
    with pytest.raises(error, match=match):
        settings.model_kwargs()
    with pytest.raises(error, match=match):
        Forecaster(model=settings, **TINY).fit(tiny_frame())


def test_trend_without_carry_forward_is_fine_when_trend_is_off():
    kwargs = GRUODEBayesSettings(carry_forward=False, trend=False).model_kwargs()
    assert (kwargs["carry_forward"], kwargs["trend"]) == (False, False)


@pytest.mark.parametrize(
    ("model", "error", "match"),
    [
        ("nope", ValueError, "unknown model 'nope'; valid: gru_ode_bayes, latent_ode, latent_sde"),
        ({"name": "gru_ode_bayes", "latent_dim": 3}, ValueError, "latent_dim"),
        ({"name": "latent_ode", "prep_hidden": 3}, ValueError, "prep_hidden"),
        ({"hidden_size": 8}, TypeError, "model must be a model name"),
        (3, TypeError, "model must be a model name"),
    ],
)
def test_bad_model_specifications(model, error, match):
    with pytest.raises(error, match=match):
        model_settings(model)
    with pytest.raises(error, match=match):
        Forecaster(model=model, **TINY).fit(tiny_frame())
