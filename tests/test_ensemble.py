"""Deep ensembles: the mixture predictive against its members, training, and the Forecaster's
``n_members``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import linear_growth_panel

from ctflow import Forecaster
from ctflow.data.irregular import IrregularBatch
from ctflow.models import DeepEnsemble, EnsemblePredictive, GRUODEBayes, PredictiveDistribution
from ctflow.models.emissions import make_emission
from ctflow.models.latent_ode import MixturePredictive
from ctflow.models.settings import GRUODEBayesSettings, LatentODESettings

EMISSIONS = ["gaussian", "mixlogistic", "maf"]


def _members(name: str, n: int = 3, particles: bool = False) -> list:
    out = []
    for i in range(n):
        torch.manual_seed(i)
        em = make_emission(name, 2, 4).double()
        with torch.no_grad():
            for p in em.parameters():
                p.mul_(2.0)
        if particles:
            out.append(MixturePredictive(em, torch.randn(5, 3, 2, 4, dtype=torch.float64)))
        else:
            out.append(PredictiveDistribution(em, torch.randn(3, 2, 4, dtype=torch.float64)))
    return out


@pytest.mark.parametrize("name", EMISSIONS)
@pytest.mark.parametrize("particles", [False, True])
def test_mixture_quantiles_invert_the_average_cdf(name, particles):
    members = _members(name, particles=particles)
    mix = EnsemblePredictive(members)
    with torch.no_grad():
        for level in (0.05, 0.5, 0.9):
            q = mix.quantile(level)
            assert q.shape == (3, 2, 2)
            average = torch.stack([m.cdf(q) for m in members]).mean(0)
            torch.testing.assert_close(average, torch.full_like(q, level), atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", EMISSIONS)
def test_mixture_moments_and_draws_agree(name):
    members = _members(name)
    mix = EnsemblePredictive(members)
    with torch.no_grad():
        mean, var = mix.mean(), mix.variance()
        torch.testing.assert_close(mean, torch.stack([m.mean() for m in members]).mean(0))
        torch.manual_seed(0)
        draws = mix.sample(150_000)
    assert draws.shape == (150_000, 3, 2, 2)
    assert ((draws.mean(0) - mean).abs() < 5 * (var / 150_000).sqrt()).all()
    torch.testing.assert_close(draws.var(0), var, rtol=0.03, atol=1e-3)
    # The draws follow the mixture's CDF (Kolmogorov distance at a few points).
    q = mix.quantile(0.3)
    with torch.no_grad():
        frac = (draws <= q).double().mean(0)
    torch.testing.assert_close(frac, torch.full_like(frac, 0.3), atol=0.01, rtol=0)


def test_mixture_log_prob_is_the_log_of_the_average_density():
    members = _members("mixlogistic")
    mix = EnsemblePredictive(members)
    y = torch.randn(3, 2, 2, dtype=torch.float64)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(3, 2, 2)
    with torch.no_grad():
        expected = torch.stack([m.log_prob(y, mask).exp() for m in members]).mean(0).log()
        torch.testing.assert_close(mix.log_prob(y, mask), expected)
        single = EnsemblePredictive(members[:1])
        torch.testing.assert_close(single.quantile(0.2), members[0].quantile(0.2))


def _batch(n: int = 6, length: int = 5, seed: int = 0) -> IrregularBatch:
    g = torch.Generator().manual_seed(seed)
    times = torch.cumsum(torch.rand(n, length, generator=g) + 0.1, 1)
    values = torch.randn(n, length, 2, generator=g)
    mask = (torch.rand(n, length, 2, generator=g) > 0.3).float()
    mask[:, :, 0] = 1.0
    return IrregularBatch(times, values, mask, torch.full((n,), length))


def test_ensemble_loss_is_the_members_sum_and_each_gets_its_own_gradient():
    torch.manual_seed(0)
    ens = DeepEnsemble([GRUODEBayes(2, hidden_size=8, p_hidden=8) for _ in range(2)])
    a, b = ens.members
    # Independent initialisations.
    assert not torch.equal(a.bayes.cell.weight_ih, b.bayes.cell.weight_ih)
    batch = _batch()
    ens.eval()
    with torch.no_grad():
        torch.testing.assert_close(ens.loss(batch), a.loss(batch) + b.loss(batch))
        total, count = ens.nll_terms(batch)
        torch.testing.assert_close(total, (a.nll_terms(batch)[0] + b.nll_terms(batch)[0]) / 2)
        assert float(count) == float(batch.mask.sum())
    ens.loss(batch).backward()
    a_only = GRUODEBayes(2, hidden_size=8, p_hidden=8)
    a_only.load_state_dict(a.state_dict())
    a_only.eval()
    a_only.loss(batch).backward()
    for p, q in zip(a.parameters(), a_only.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_ensemble_forecasts_are_the_mixture_of_the_members():
    torch.manual_seed(0)
    ens = DeepEnsemble([GRUODEBayes(2, hidden_size=8, p_hidden=8, emission="mixlogistic") for _ in range(3)])
    ens.eval()
    batch = _batch()
    times = batch.times[:, -1:] + torch.tensor([[0.5, 1.5]])
    with torch.no_grad():
        state = ens.filter(batch)
        pred = ens.predict(state, times)
        own = [m.predict(m.filter(batch), times) for m in ens.members]
        torch.testing.assert_close(pred.mean(), torch.stack([p.mean() for p in own]).mean(0))
        paths = ens.sample_paths(state, times, 7)
    assert paths.shape == (7, 6, 2, 2) and torch.isfinite(paths).all()
    with pytest.raises(ValueError, match="n must be a positive int"):
        ens.sample_paths(state, times, 0)
    with pytest.raises(ValueError, match="at least one member"):
        DeepEnsemble([])
    with pytest.raises(TypeError, match=r"member 1 must be a ctflow SequenceModel, got"):
        DeepEnsemble([GRUODEBayes(2), "model"])


def _panel(n_series: int = 16, seed: int = 0) -> pd.DataFrame:
    return linear_growth_panel(n_series, 8, seed, falling=False).rename(columns={"a": "y"})


@pytest.mark.parametrize("model", ["gru_ode_bayes", "latent_ode"])
def test_forecaster_with_members_fits_forecasts_and_round_trips(model, tmp_path):
    df = _panel()
    sizes = {"hidden_size": 8, "p_hidden": 8, **({"latent_dim": 4} if model == "latent_ode" else {})}
    params = dict(model={"name": model, **sizes}, max_steps=10, eval_every=5)
    est = Forecaster(n_members=2, random_state=0, **params).fit(df)
    assert isinstance(est.model_, DeepEnsemble) and len(est.model_) == 2
    q = est.predict_quantiles(df, horizon=[1.0], quantiles=(0.1, 0.5, 0.9))
    assert (q["y_q10"] < q["y_q50"]).all() and (q["y_q50"] < q["y_q90"]).all()
    assert math.isfinite(est.score(df))
    paths = est.sample(df, horizon=[1.0, 2.0], n_samples=4)
    assert paths.shape == (4, 2 * df["unique_id"].nunique(), 1) and np.isfinite(paths).all()
    est.save(tmp_path / "m")
    back = Forecaster.load(tmp_path / "m")
    assert back.n_members == 2
    if model == "gru_ode_bayes":  # deterministic filter: identical forecasts after loading
        np.testing.assert_allclose(back.predict(df, horizon=[1.0])["y"], est.predict(df, horizon=[1.0])["y"])


def test_n_members_is_validated():
    with pytest.raises(ValueError, match="n_members must be a positive int, got 0"):
        Forecaster(n_members=0).fit(_panel())


def test_latent_model_with_a_joint_flow_validates_on_held_out_rows():
    """The particle mixture scores held-out rows with an emission that takes 2-D contexts only."""
    df = _panel(seed=1)
    df["z"] = df["y"] * 0.5 + 1.0
    tiny = {"max_steps": 6, "eval_every": 3, "random_state": 0}
    model = LatentODESettings(emission="maf", hidden_size=8, latent_dim=4)
    est = Forecaster(model=model, **tiny).fit(df)
    assert est.validation_report_ is not None
    assert math.isfinite(est.validation_report_["model_nll"])


def test_refit_ensemble_keeps_the_chosen_model_beside_the_refitted_one(tmp_path):
    df = _panel(seed=2)
    common = dict(
        model=GRUODEBayesSettings(hidden_size=8, p_hidden=8), max_steps=12, eval_every=4, random_state=0
    )
    plain = Forecaster(**common).fit(df)
    both = Forecaster(refit="ensemble", **common).fit(df)
    assert isinstance(both.model_, DeepEnsemble) and both.n_models_ == 2
    # Same seed, same training: the refitted member is the plain refit's model.
    refitted = both.model_.members[1]
    for p, q in zip(refitted.parameters(), plain.model_.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert both.validation_report_ == pytest.approx(plain.validation_report_)
    both.save(tmp_path / "m")
    back = Forecaster.load(tmp_path / "m")
    assert back.n_models_ == 2
    np.testing.assert_allclose(back.predict(df, horizon=[1.0])["y"], both.predict(df, horizon=[1.0])["y"])
    stacked = Forecaster(refit="ensemble", n_members=2, **common).fit(df)
    assert stacked.n_models_ == 4
    with pytest.raises(ValueError, match="refit must be True, False or 'ensemble', got 'both'"):
        Forecaster(refit="both").fit(df)
