"""Neural flows: identity at t = 0, invertible in h, Lipschitz-bounded residuals, and a GRU-ODE-Bayes
that uses them between observations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ctflow import Forecaster, cross_validation
from ctflow.baselines import LastValueBaseline
from ctflow.data import from_dataframe, load_double_ou
from ctflow.dynamics.neural_flows import FLOWS, build_flow
from ctflow.metrics import evaluate
from ctflow.models import GRUODEBayes, LatentODE, LatentSDE


def _perturbed(name: str, dim: int = 6):
    torch.manual_seed(0)
    flow = build_flow(name, dim).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn_like(p))  # far from the initialisation: the bounds must still hold
    return flow


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_flows_are_the_identity_at_zero_and_invertible(name):
    flow = _perturbed(name)
    h = torch.randn(64, 6, dtype=torch.float64)
    t = 5 * torch.rand(64, dtype=torch.float64)
    assert torch.equal(flow(h, torch.zeros(64, dtype=torch.float64)), h)
    y = flow(h, t)
    assert (y - h).abs().max() > 1e-3  # it does move
    torch.testing.assert_close(flow.inverse(y, t), h, rtol=1e-9, atol=1e-9)
    h.requires_grad_(True)
    flow(h, t).square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters() if p.grad is not None)
    assert torch.isfinite(h.grad).all()


@pytest.mark.parametrize("name", ["resnet_flow", "gru_flow"])
def test_residual_flows_keep_their_lipschitz_bound_below_one(name):
    flow = _perturbed(name)
    h = 3 * torch.randn(500, 6, dtype=torch.float64)
    other = h + 0.5 * torch.randn_like(h)
    t = 10 * torch.rand(500, dtype=torch.float64)
    with torch.no_grad():
        change = (flow(h, t) - h) - (flow(other, t) - other)
    assert float((change.norm(dim=1) / (h - other).norm(dim=1)).max()) < 1.0


def test_a_flow_model_runs_series_in_lockstep_as_one_by_one():
    batch = from_dataframe(load_double_ou(6, seed=0, t_max=3.0), dtype=torch.float64)
    torch.manual_seed(0)
    model = GRUODEBayes(2, hidden_size=8, p_hidden=8, prep_hidden=4, dynamics="gru_flow").double().eval()
    together = model.nll_terms(batch)[0]
    alone = sum(model.nll_terms(batch.select([i], trim=True))[0] for i in range(len(batch)))
    torch.testing.assert_close(together, alone, rtol=1e-12, atol=1e-12)  # no solver steps to differ
    with pytest.raises(
        ValueError, match="unknown dynamics 'euler_flow'; valid: ode, resnet_flow, gru_flow, coupling_flow"
    ):
        GRUODEBayes(2, dynamics="euler_flow")


def test_a_fitted_gru_flow_model_beats_persistence_on_double_ou():
    train, test = load_double_ou(100, seed=0), load_double_ou(30, seed=1)
    settings = {"name": "gru_ode_bayes", "dynamics": "gru_flow", "hidden_size": 16, "p_hidden": 16}
    model = Forecaster(model=settings, max_steps=100, val_fraction=0.0, random_state=0).fit(train)
    assert model.model_.dynamics == "gru_flow" and not hasattr(model.model_, "ode")
    ours = evaluate(cross_validation(model, test, horizon=1.0, n_samples=100), by=())
    naive = LastValueBaseline(random_state=0).fit(train)
    theirs = evaluate(cross_validation(naive, test, horizon=1.0, n_samples=100), by=())
    assert float(ours["crps"].iloc[0]) < 0.85 * float(theirs["crps"].iloc[0])
    assert np.isfinite(model.score(test))


@pytest.mark.parametrize("name", ["gru_flow", "coupling_flow"])
def test_a_latent_ode_with_flow_decoder_and_encoder_needs_no_solver(name):
    batch = from_dataframe(load_double_ou(6, seed=0, t_max=3.0), dtype=torch.float64)
    torch.manual_seed(0)
    model = LatentODE(2, latent_dim=4, hidden_size=8, ode_hidden=8, p_hidden=8, n_samples=2, dynamics=name)
    model = model.double()
    assert not hasattr(model, "decoder") and model.encoder.field is None
    z0 = torch.randn(3, len(batch), 4, dtype=torch.float64)
    together, _ = model.decode(z0, batch)
    singles = [batch.select([i], trim=True) for i in range(len(batch))]
    alone = torch.cat([model.decode(z0[:, i : i + 1], one)[0] for i, one in enumerate(singles)], dim=1)
    torch.testing.assert_close(together, alone, rtol=1e-12, atol=1e-12)
    encoded = torch.cat([model.encoder(one) for one in singles])
    torch.testing.assert_close(model.encoder(batch), encoded, rtol=1e-12, atol=1e-12)
    loss = model.loss(batch)
    loss.backward()
    grads = [p.grad for p in [*model.flow.parameters(), *model.encoder.flow.parameters()]]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    assert model.nfe.nfe_forward == 0 and model.encoder.nfe.nfe_forward == 0
    with pytest.raises(ValueError, match="the flow decodes"):
        LatentODE(2, decoder=torch.nn.Linear(16, 16), dynamics=name)
    with pytest.raises(ValueError, match="neural flows replace ODEs"):
        LatentSDE(2, dynamics=name)


def test_a_flow_latent_ode_fits_and_is_saved_and_loaded(tmp_path):
    train = load_double_ou(60, seed=0, t_max=4.0)
    settings = {
        "name": "latent_ode",
        "dynamics": "gru_flow",
        "latent_dim": 4,
        "hidden_size": 8,
        "ode_hidden": 16,
    }
    model = Forecaster(model=settings, max_steps=60, eval_every=10, val_fraction=0.0, random_state=0).fit(
        train
    )
    assert model.model_.flow_dynamics == "gru_flow"
    losses = model.history_["train_loss"]
    assert losses[-1] < losses[0]  # it learns
    model.save(tmp_path / "flow")
    loaded = Forecaster.load(tmp_path / "flow")
    assert loaded.model_.flow_dynamics == "gru_flow"
    context = train[train["unique_id"] < 5]
    first = model.predict(context, horizon=[0.5, 1.0])
    again = loaded.predict(context, horizon=[0.5, 1.0])
    pd.testing.assert_frame_equal(first, again)
