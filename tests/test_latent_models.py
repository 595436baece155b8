"""Latent ODE / latent SDE: bounds against an exact marginal likelihood, flow posteriors, the
zero-diffusion limit, and the forecasting interface."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from ctflow import Forecaster
from ctflow.data import IrregularBatch, load_double_ou
from ctflow.dynamics.odernn import ODERNNEncoder, reverse_series
from ctflow.models import LatentODE, LatentSDE, Posterior
from ctflow.models.emissions import GaussianEmission, MaskedEmission
from ctflow.models.settings import model_settings

RK4 = {"method": "rk4", "step_size": 0.01}


def _batch(times: list[list[float]], values: np.ndarray, mask: np.ndarray) -> IrregularBatch:
    lengths = [len(t) for t in times]
    n = max(lengths)
    t = np.array([ts + [ts[-1]] * (n - len(ts)) for ts in times], dtype=np.float64)
    return IrregularBatch(
        times=torch.tensor(t),
        values=torch.tensor(values * mask),
        mask=torch.tensor(mask),
        lengths=torch.tensor(lengths),
    )


# ---------------------------------------------------------------------------------------------
# Linear-Gaussian latent model: z0 ~ N(0, I), dz/dt = A z, y = C z(t) + N(0, s^2)
# ---------------------------------------------------------------------------------------------
A = np.array([[-0.3, 1.0], [-1.0, -0.3]])
C = np.array([[1.0, 0.0], [0.5, 1.0]])
NOISE_SD = 0.8


def _expm(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eig(m)
    return (v @ np.diag(np.exp(w)) @ np.linalg.inv(v)).real


def _linear_model() -> LatentODE:
    torch.manual_seed(0)
    decoder = nn.Linear(2, 2, bias=False)
    emission = GaussianEmission(2, 2, hidden=())
    model = LatentODE(2, latent_dim=2, hidden_size=8, emission=emission, decoder=decoder, solver=RK4)
    model.double()
    with torch.no_grad():
        decoder.weight.copy_(torch.tensor(A))
        last = emission.net.net[-1]
        last.weight.zero_()
        last.weight[:2].copy_(torch.tensor(C))
        last.bias.zero_()
        last.bias[2:] = 2 * math.log(NOISE_SD)
        # q(z0 | x) = the prior: the bounds are then easy to reason about and far from tight.
        model.posterior.net.weight.zero_()
        model.posterior.net.bias.zero_()
    return model


def _exact_log_marginal(times: list[float], values: np.ndarray, mask: np.ndarray) -> float:
    rows, ys = [], []
    for i, t in enumerate(times):
        m = C @ _expm(A * t)
        for d in range(2):
            if mask[i, d]:
                rows.append(m[d])
                ys.append(values[i, d])
    design, y = np.array(rows), np.array(ys)
    cov = design @ design.T + NOISE_SD**2 * np.eye(len(y))
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (y @ np.linalg.solve(cov, y) + logdet + len(y) * math.log(2 * math.pi)))


@pytest.fixture(scope="module")
def linear_setup():
    rng = np.random.default_rng(3)
    times = [[0.0, 0.4, 1.1, 1.5], [0.2, 0.9, 2.0, 2.0]]
    lengths = [4, 3]
    times[1] = times[1][:3]
    values = np.zeros((2, 4, 2))
    mask = np.zeros((2, 4, 2))
    exact = []
    for b, ts in enumerate(times):
        z0 = rng.normal(size=2)
        for i, t in enumerate(ts):
            values[b, i] = C @ _expm(A * t) @ z0 + NOISE_SD * rng.normal(size=2)
        mask[b, : lengths[b]] = 1.0
    mask[0, 1, 1] = 0.0  # partly observed rows are scored exactly too
    mask[1, 2, 0] = 0.0
    for b, ts in enumerate(times):
        exact.append(_exact_log_marginal(ts, values[b], mask[b]))
    return _linear_model(), _batch(times, values, mask), np.array(exact)


def _mean_bound(model: LatentODE, batch: IrregularBatch, k: int, repeats: int) -> np.ndarray:
    torch.manual_seed(k)
    with torch.no_grad():
        return np.mean([model.iwae_bound(batch, k).numpy() for _ in range(repeats)], axis=0)


def test_decoder_likelihood_matches_closed_form(linear_setup):
    model, batch, exact = linear_setup
    # With q = prior, the IWAE bound with many draws is a plain Monte Carlo estimate of p(x).
    estimate = _mean_bound(model, batch, 20000, 1)
    np.testing.assert_allclose(estimate, exact, atol=0.08)


def test_elbo_below_iwae_below_exact_and_both_approach_it(linear_setup):
    model, batch, exact = linear_setup
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = model.elbo(batch, 20000).numpy()
    iwae = {k: _mean_bound(model, batch, k, r) for k, r in ((10, 200), (100, 50), (1000, 10))}
    for b in range(len(exact)):
        # Expectations: ELBO <= IWAE_10 <= IWAE_100 <= IWAE_1000 <= log p(x); the means over the
        # repeats carry Monte Carlo noise, hence the small tolerance on the last bound.
        assert elbo[b] < iwae[10][b] < iwae[100][b] < exact[b] + 0.1
        assert iwae[1000][b] > iwae[10][b]
        gaps = [exact[b] - elbo[b], exact[b] - iwae[10][b], exact[b] - iwae[100][b]]
        assert all(g1 > g2 for g1, g2 in itertools.pairwise(gaps))
        assert abs(exact[b] - iwae[1000][b]) < 0.25 * gaps[0]


def test_log_marginal_estimate_uses_eval_samples(linear_setup):
    model, batch, exact = linear_setup
    model.eval_samples = 20000
    torch.manual_seed(1)
    with torch.no_grad():
        nll, count = model.nll_terms(batch)
    assert float(count) == float(batch.mask.sum())
    assert abs(-float(nll) - exact.sum()) < 0.15


# ---------------------------------------------------------------------------------------------
# Bimodal posterior: y = z1^2 + noise; a flow posterior beats the diagonal Gaussian
# ---------------------------------------------------------------------------------------------
class SquareEmission(MaskedEmission):
    """``y ~ N(z_1^2, sigma^2)`` (one variable; ``z_2`` is not observed)."""

    def __init__(self, sigma: float = 0.3):
        super().__init__(1, 2)
        self.sigma = sigma

    def log_prob_terms(self, y, mask, context):
        mean = context[..., :1].square()
        resid = (y - mean) / self.sigma
        return (-0.5 * resid.square() - math.log(self.sigma) - 0.5 * math.log(2 * math.pi)) * mask

    def statistics(self, y, mask, context):
        return y.unsqueeze(-1) * mask.unsqueeze(-1)

    def sample(self, context, n=1):
        mean = context[..., :1].square()
        return mean + self.sigma * torch.randn(n, *mean.shape, dtype=mean.dtype)


class ZeroField(nn.Module):
    def forward(self, z):
        return torch.zeros_like(z)


def _fit_posterior(kind: str) -> float:
    torch.manual_seed(0)
    model = LatentODE(
        1,
        latent_dim=2,
        hidden_size=8,
        emission=SquareEmission(),
        decoder=ZeroField(),
        posterior=kind,
        posterior_layers=8,
        posterior_hidden=(32,),
        solver={"method": "euler", "step_size": 1.0},
    )
    torch.manual_seed(1)
    n = 64
    batch = IrregularBatch(
        times=torch.zeros(n, 1),
        values=0.8 + 0.05 * torch.randn(n, 1, 1),
        mask=torch.ones(n, 1, 1),
        lengths=torch.ones(n, dtype=torch.long),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    steps = 500
    for step in range(steps):
        # Likelihood tempering from 0.05 to 1: q starts broad, as the prior, covering both modes.
        weight = min(1.0, 0.05 + step / (0.6 * steps))
        z0, log_q = model.posterior.rsample_and_log_prob(model.encoder(batch), 16)
        log_lik, _ = model.decode(z0, batch)
        loss = -(weight * log_lik + model.prior_log_prob(z0) - log_q).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.manual_seed(2)
    with torch.no_grad():
        return float(model.elbo(batch, 4000).mean())


def test_flow_posterior_beats_gaussian_on_bimodal_posterior():
    gaussian = _fit_posterior("gaussian")
    planar = _fit_posterior("planar")
    # log p(y = 0.8) = -1.08 (quadrature); a unimodal q loses about log 2 or more.
    assert planar > gaussian + 0.3
    assert planar < -1.0


@pytest.mark.parametrize("kind", ["gaussian", "iaf", "planar", "radial", "sylvester", "realnvp"])
def test_posterior_log_prob_is_the_density_of_its_samples(kind):
    """E_q[r(z) / q(z)] = 1 for any density r: checks log q of the samples (2-D latent)."""
    torch.manual_seed(0)
    post = Posterior(2, 3, kind, n_layers=2, hidden=(16,)).double()
    with torch.no_grad():
        for p in post.parameters():
            p.add_(0.1 * torch.randn_like(p))
        context = torch.randn(1, 3, dtype=torch.float64)
        z, log_q = post.rsample_and_log_prob(context, 400_000)
    z, log_q = z[:, 0], log_q[:, 0]
    # r: a Gaussian narrower than q around q's mean, so the ratio r / q stays bounded.
    r = torch.distributions.MultivariateNormal(z.mean(0), 0.25 * torch.cov(z.T))
    ratio = torch.exp(r.log_prob(z) - log_q)
    assert abs(float(ratio.mean()) - 1) < 0.03


# ---------------------------------------------------------------------------------------------
# Latent SDE
# ---------------------------------------------------------------------------------------------
def _double_ou_batch(n: int = 6) -> IrregularBatch:
    from ctflow.data import from_dataframe

    df = load_double_ou(n, seed=0)
    return from_dataframe(df)


def _ode_and_sde(diffusion: float) -> tuple[LatentODE, LatentSDE]:
    torch.manual_seed(0)
    ode = LatentODE(2, latent_dim=4, hidden_size=8, ode_hidden=16, p_hidden=8)
    sde = LatentSDE(
        2, latent_dim=4, hidden_size=8, ode_hidden=16, p_hidden=8, diffusion=diffusion, learn_diffusion=False
    )
    missing, unexpected = sde.load_state_dict(ode.state_dict(), strict=False)
    assert not unexpected
    assert all(k.startswith("dynamics.") for k in missing)
    return ode, sde


def test_latent_sde_with_zero_diffusion_is_the_latent_ode():
    ode, sde = _ode_and_sde(0.0)
    batch = _double_ou_batch()
    times = batch.times.amax(1, keepdim=True) + torch.tensor([[0.5, 1.0, 2.0]])
    preds = []
    for model in (ode, sde):
        torch.manual_seed(5)
        with torch.no_grad():
            state = model.filter(batch)
            pred = model.predict(state, times)
            preds.append((pred.mean(), pred.log_prob(torch.zeros(len(batch), 3, 2)), model.elbo(batch, 3)))
    for a, b in zip(*preds, strict=True):
        torch.testing.assert_close(a, b)


def test_latent_sde_small_diffusion_approaches_ode_paths_and_noise_spreads_them():
    batch = _double_ou_batch()
    times = batch.times.amax(1, keepdim=True) + torch.tensor([[0.5, 1.0, 2.0]])
    torch.manual_seed(0)
    z = torch.randn(32, len(batch), 4)
    t0 = batch.times.amax(1)
    spreads = []
    for g in (1e-4, 0.3):
        ode, sde = _ode_and_sde(g)
        with torch.no_grad():
            ref = ode._trajectories(z, t0, times)
            path = sde._trajectories(z, t0, times)
        spreads.append(float((path - ref).abs().max()))
    assert spreads[0] < 1e-3
    assert spreads[1] > 100 * spreads[0]


def test_latent_sde_path_kl_and_log_ratio():
    _, sde = _ode_and_sde(0.2)
    batch = _double_ou_batch()
    torch.manual_seed(0)
    with torch.no_grad():
        ctx, states = sde.encoder(batch, return_states=True)
        z0, _ = sde.posterior.rsample_and_log_prob(ctx, 8)
        _, kl, log_ratio, _ = sde.decode_posterior(z0, batch, states)
    # The posterior correction starts at zero: posterior = prior, no divergence.
    assert float(kl.abs().max()) == 0.0 and float(log_ratio.abs().max()) == 0.0
    with torch.no_grad():
        sde.dynamics.correction[-1].bias.fill_(0.1)
        torch.manual_seed(0)
        z0, _ = sde.posterior.rsample_and_log_prob(ctx, 2000)
        _, kl, log_ratio, _ = sde.decode_posterior(z0, batch, states)
    # KL = E[1/2 int |u|^2 dt] with u = 0.1 / 0.2 in every dimension: 0.5 * 4 * 0.25 * T.
    t_last = batch.times.amax(1)
    torch.testing.assert_close(kl[0], 0.5 * 4 * 0.25 * t_last, rtol=1e-4, atol=1e-6)
    # E[log dP/dQ] = -KL under the posterior path measure.
    assert torch.allclose(log_ratio.mean(0), -kl[0], atol=0.15 * float(t_last.max()))


def test_latent_sde_trains_and_its_gradients_reach_every_part():
    torch.manual_seed(0)
    sde = LatentSDE(2, latent_dim=4, hidden_size=8, ode_hidden=16, p_hidden=8)
    batch = _double_ou_batch(8)
    with torch.no_grad():
        sde.dynamics.correction[-1].bias.fill_(0.05)
    loss = sde.loss(batch)
    loss.backward()
    for name in (
        "encoder.cell.weight_ih",
        "decoder.net.0.weight",
        "dynamics.raw_diffusion",
        "emission.net.net.0.weight",
    ):
        grad = dict(sde.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------
# Encoder and the Forecaster interface
# ---------------------------------------------------------------------------------------------
def test_reverse_series_and_encoder_states_are_causal_backwards():
    batch = _double_ou_batch(4)
    times, _, mask, dt = reverse_series(batch)
    lengths = batch.lengths
    for b in range(len(batch)):
        n = int(lengths[b])
        np.testing.assert_allclose(times[b, :n].numpy(), batch.times[b, :n].flip(0).numpy())
        assert float(dt[b, n:].abs().sum()) == 0 and float(mask[b, n:].sum()) == 0
        assert bool((dt[b, 1:n] >= 0).all())
    torch.manual_seed(0)
    enc = ODERNNEncoder(2, 8)
    h0, states = enc(batch, return_states=True)
    torch.testing.assert_close(states[:, 0], h0)
    # The state at observation k summarises rows k.. only: changing an earlier row leaves it alone.
    changed = batch.values.clone()
    changed[:, 0] += 5.0
    other = IrregularBatch(batch.times, changed * batch.mask, batch.mask, batch.lengths, validate=False)
    _, states2 = enc(other, return_states=True)
    torch.testing.assert_close(states2[:, 1:], states[:, 1:])
    assert not torch.allclose(states2[:, 0], states[:, 0])


@pytest.mark.parametrize(("model", "posterior"), [("latent_ode", "iaf"), ("latent_sde", "gaussian")])
def test_forecaster_with_latent_models(tmp_path, model, posterior):
    df = load_double_ou(60, seed=1)
    settings = {
        "name": model,
        "posterior": posterior,
        "hidden_size": 8,
        "p_hidden": 8,
        "latent_dim": 4,
        "n_particles": 16,
        "eval_samples": 8,
    }
    est = Forecaster(model=settings, max_epochs=2, random_state=0).fit(df)
    context = df[df["unique_id"] < 5]
    q = est.predict_quantiles(context, horizon=[0.5, 1.0], quantiles=(0.1, 0.5, 0.9))
    assert (q["y1_q10"] <= q["y1_q50"]).all() and (q["y1_q50"] <= q["y1_q90"]).all()
    samples = est.sample(context, horizon=[0.5, 1.0, 2.0], n_samples=11)
    assert samples.shape == (11, 15, 2) and np.isfinite(samples).all()
    assert np.isfinite(est.score(context))
    est.save(tmp_path / "m")
    loaded = Forecaster.load(tmp_path / "m")
    assert loaded.model.get_params() == model_settings(settings).get_params()
    a = est.predict(context, horizon=[0.5])
    b = loaded.predict(context, horizon=[0.5])
    np.testing.assert_allclose(a[["y1", "y2"]].to_numpy(), b[["y1", "y2"]].to_numpy(), rtol=1e-5, atol=1e-6)
