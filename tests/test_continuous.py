"""Continuous normalizing flows: exact and stochastic traces, inverse, adjoint, NFE, regularisers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import brute_force_logabsdet, perturb
from torch import nn

from ctflow.flows import CNF, Compose, Flow, MaskedAffineAutoregressive, VectorField, build
from ctflow.ode import NFECounter, SolverOptions, integrate

TIGHT = SolverOptions(rtol=1e-10, atol=1e-10)


class LinearField(nn.Module):
    """dz/dt = A z."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, t, z, context=None):
        return z @ self.a.T


def _linear_cnf(trace="exact", noise="gaussian", end_time=0.7, solver=TIGHT, **kw):
    g = torch.Generator().manual_seed(0)
    a = 0.5 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    return CNF(
        3, field=LinearField(a), trace=trace, noise=noise, end_time=end_time, solver=solver, **kw
    ).double(), a


def test_linear_field_exact_trace():
    cnf, a = _linear_cnf()
    x = torch.randn(8, 3, dtype=torch.float64)
    z, ladj = cnf(x)
    torch.testing.assert_close(
        ladj, torch.full((8,), 0.7 * torch.trace(a).item(), dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(z, x @ torch.linalg.matrix_exp(0.7 * a).T, atol=1e-7, rtol=0)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_linear_field_hutchinson_is_unbiased(noise):
    cnf, a = _linear_cnf("hutchinson", noise, solver=SolverOptions(rtol=1e-7, atol=1e-7))
    x = torch.randn(1, 3, dtype=torch.float64).expand(4000, 3)  # one noise draw per row
    _, ladj = cnf(x)
    exact = 0.7 * torch.trace(a).item()
    se = ladj.std().item() / math.sqrt(ladj.numel())
    assert ladj.std() > 1e-3  # it is an estimate, not the exact value
    assert abs(ladj.mean().item() - exact) < 3 * se


def test_bottleneck_trace_is_unbiased():
    torch.manual_seed(0)
    field = perturb(VectorField(4, hidden=(32, 2, 32), activation="tanh").double(), 0.3)
    exact_cnf = CNF(4, field=field, trace="exact", solver=SolverOptions(rtol=1e-7, atol=1e-7)).double()
    bottleneck_cnf = CNF(
        4, field=field, trace="bottleneck", solver=SolverOptions(rtol=1e-7, atol=1e-7)
    ).double()
    assert field.bottleneck_width == 2
    x = torch.randn(1, 4, dtype=torch.float64).expand(3000, 4)
    with torch.no_grad():
        _, exact = exact_cnf(x[:1])
        _, est = bottleneck_cnf(x)
    se = est.std().item() / math.sqrt(est.numel())
    assert est.std() > 1e-4
    assert abs(est.mean().item() - exact.item()) < 3 * se


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_inverse_of_forward(trace):
    torch.manual_seed(0)
    cnf = perturb(
        CNF(2, 3, hidden=(16, 16), trace=trace, solver=SolverOptions(rtol=1e-8, atol=1e-8)).double(), 0.3
    )
    x = torch.randn(10, 2, dtype=torch.float64)
    c = torch.randn(10, 3, dtype=torch.float64)
    z, ladj = cnf(x, c)
    x_back, ladj_inv = cnf.inverse(z, c)
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=0)
    if trace == "exact":
        torch.testing.assert_close(ladj_inv, -ladj, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("layer", "time_embedding"),
    [
        ("concat", "linear"),
        ("concatsquash", "linear"),
        ("gated", "linear"),
        ("input", "linear"),
        ("input", "fourier"),
    ],
)
def test_exact_logdet_matches_jacobian_of_the_solution(layer, time_embedding):
    torch.manual_seed(0)
    cnf = CNF(3, 2, hidden=(12,), layer=layer, time_embedding=time_embedding, activation="tanh", solver=TIGHT)
    cnf = perturb(cnf.double(), 0.4)
    x = torch.randn(4, 3, dtype=torch.float64)
    c = torch.randn(4, 2, dtype=torch.float64)
    z, ladj = cnf(x, c)
    assert (z - x).abs().max() > 1e-2
    torch.testing.assert_close(ladj, brute_force_logabsdet(lambda v: cnf(v, c)[0], x), rtol=1e-6, atol=1e-8)
    z2, _ = cnf(x, c + 1.0)
    assert (z2 - z).abs().max() > 1e-4  # the context is used


def test_adjoint_and_direct_gradients_agree():
    torch.manual_seed(0)
    direct = perturb(CNF(2, 1, hidden=(16,), solver=SolverOptions(rtol=1e-8, atol=1e-8)).double(), 0.3)
    adjoint = CNF(2, 1, hidden=(16,), solver=SolverOptions(rtol=1e-8, atol=1e-8, adjoint=True)).double()
    adjoint.load_state_dict(direct.state_dict())
    x = torch.randn(16, 2, dtype=torch.float64)
    c = torch.randn(16, 1, dtype=torch.float64, requires_grad=True)
    grads = []
    for model in (direct, adjoint):
        flow = Flow(model, 2, context_dim=1).double()
        c.grad = None
        loss = -flow.log_prob(x, c).mean()
        params = [p for p in model.parameters() if p.requires_grad]
        grads.append(torch.autograd.grad(loss, [*params, c]))
    for g_direct, g_adjoint in zip(*grads, strict=True):
        torch.testing.assert_close(g_adjoint, g_direct, rtol=1e-3, atol=1e-7)
    assert adjoint.nfe_backward > 0


def test_nfe_counters():
    cnf = CNF(2, hidden=(8,), solver=SolverOptions(method="rk4", step_size=0.25))
    x = torch.randn(5, 2, requires_grad=True)
    z, ladj = cnf(x)
    assert cnf.nfe_forward == 16  # 4 steps x 4 stages
    assert cnf.nfe_backward == 0
    (z.sum() + ladj.sum()).backward()
    assert cnf.nfe_backward == 16  # every recorded evaluation is differentiated once
    cnf.reset_nfe()
    assert (cnf.nfe_forward, cnf.nfe_backward) == (0, 0)
    adaptive = CNF(2, hidden=(8,), solver=SolverOptions(rtol=1e-6, atol=1e-6, adjoint=True))
    perturb(adaptive, 0.5)
    z, ladj = adaptive(x)
    forward_nfe = adaptive.nfe_forward
    (z.sum() + ladj.sum()).backward()
    assert forward_nfe > 6 and adaptive.nfe_forward == forward_nfe and adaptive.nfe_backward > 6


def test_integrate_counts_and_validates():
    counter = NFECounter(LinearField(torch.eye(2)))
    y = integrate(
        counter,
        torch.ones(1, 2),
        torch.tensor([0.0, 1.0]),
        SolverOptions(method="euler", step_size=0.1),
        counter,
    )
    torch.testing.assert_close(y[-1], torch.full((1, 2), 1.1**10))
    assert counter.nfe_forward == 10
    with pytest.raises(ValueError, match="unknown ODE method"):
        SolverOptions(method="leapfrog")
    with pytest.raises(ValueError, match="rtol"):
        SolverOptions(rtol=0)


def test_kinetic_regulariser_matches_its_integral():
    cnf, a = _linear_cnf(kinetic=1.0, end_time=1.0, solver=SolverOptions(rtol=1e-9, atol=1e-9))
    cnf.train()
    x = torch.randn(6, 3, dtype=torch.float64)
    cnf(x)
    reg = cnf.regularization()
    ts = torch.linspace(0, 1, 2001, dtype=torch.float64)
    speed = torch.stack([(x @ torch.linalg.matrix_exp(t * a).T @ a.T).square().sum(1) for t in ts])
    expected = torch.trapezoid(speed, ts, dim=0).mean()
    torch.testing.assert_close(reg, expected, rtol=1e-5, atol=0)
    assert cnf.regularization() is None  # consumed
    cnf.eval()
    cnf(x)
    assert cnf.regularization() is None  # only in training


def test_jacobian_regulariser_estimates_frobenius_norm():
    cnf, a = _linear_cnf(jacobian=1.0, end_time=1.0, solver=SolverOptions(rtol=1e-7, atol=1e-7))
    cnf.train()
    cnf(torch.randn(4000, 3, dtype=torch.float64))
    torch.testing.assert_close(cnf.regularization(), a.square().sum(), rtol=0.05, atol=0)


def test_learned_end_time_gets_gradients():
    cnf = CNF(2, hidden=(8,), learn_end_time=True, end_time=0.5)
    assert cnf.end_time.item() == pytest.approx(0.5)
    perturb(cnf.field, 0.3)
    z, ladj = cnf(torch.randn(8, 2))
    (z.square().sum() - ladj.sum()).backward()
    assert cnf.log_end_time.grad is not None and cnf.log_end_time.grad.abs() > 0


def test_cnf_composes_with_discrete_transforms():
    torch.manual_seed(0)
    t = Compose([MaskedAffineAutoregressive(2, hidden=(8,)), CNF(2, hidden=(8,), solver=TIGHT)]).double()
    perturb(t, 0.3)
    x = torch.randn(5, 2, dtype=torch.float64)
    z, ladj = t(x)
    torch.testing.assert_close(t.inverse(z)[0], x, atol=1e-6, rtol=0)
    torch.testing.assert_close(ladj, brute_force_logabsdet(lambda v: t(v)[0], x), rtol=1e-6, atol=1e-8)


def test_build_cnf_blocks_and_errors():
    flow = build("cnf", 2, n_layers=2, hidden=(8,), trace="hutchinson", noise="rademacher")
    assert len(flow.transform) == 2 and flow.sample(3).shape == (3, 2)
    with pytest.raises(ValueError, match="trace"):
        CNF(2, trace="stochastic")
    with pytest.raises(ValueError, match="layer"):
        CNF(2, layer="hyper")
    with pytest.raises(ValueError, match="end_time"):
        CNF(2, end_time=0.0)
