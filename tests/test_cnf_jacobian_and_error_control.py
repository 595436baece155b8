"""CNF Jacobian products (forward vs reverse mode) and the solver's error-control options."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import perturb
from torch import nn

from ctflow.flows import CNF, Flow, VectorField
from ctflow.flows.continuous import activation_jvp
from ctflow.flows.nets import ACTIVATIONS
from ctflow.ode import SolverOptions

TIGHT = SolverOptions(rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_jvp_matches_autograd(name):
    act = ACTIVATIONS[name]()
    tangent_map = activation_jvp(act)
    assert tangent_map is not None
    pre = (3 * torch.randn(5, 7, dtype=torch.float64)).requires_grad_()
    v = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    post = act(pre)
    out = tangent_map(pre, post, v)
    ref = torch.autograd.grad(act(pre).sum(), pre, create_graph=True)[0] * v
    torch.testing.assert_close(out, ref)
    # Differentiable like the reference (what backpropagation through the solver needs).
    w = torch.randn(5, 7, dtype=torch.float64)
    for got, want in zip(
        torch.autograd.grad((out * w).sum(), (pre, v)),
        torch.autograd.grad((ref * w).sum(), (pre, v)),
        strict=True,
    ):
        torch.testing.assert_close(got, want)
    # A tangent shared by all rows broadcasts.
    shared = torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close(tangent_map(pre, post, shared), tangent_map(pre, post, shared.expand(5, 7)))


def test_unknown_activation_falls_back_to_reverse_mode():
    assert activation_jvp(nn.ReLU(inplace=True)) is None
    assert activation_jvp(nn.Hardswish()) is None
    field = VectorField(2, hidden=(8,))
    field.activations[0] = nn.Hardswish()
    assert not field.supports_jvp
    cnf = CNF(2, field=field)  # "auto" takes reverse mode
    _, ladj = cnf(torch.randn(3, 2))
    assert torch.isfinite(ladj).all()
    with pytest.raises(ValueError, match="forward"):
        CNF(2, field=field, jacobian_products="forward")
    with pytest.raises(ValueError, match="forward"):
        CNF(2, trace="bottleneck", jacobian_products="forward")
    with pytest.raises(ValueError, match="jacobian_products"):
        CNF(2, jacobian_products="sideways")


def _pair(layer, trace, activation, context_dim=2, **kw):
    torch.manual_seed(0)
    common = dict(
        hidden=(12, 10),
        layer=layer,
        activation=activation,
        time_embedding="fourier",
        trace=trace,
        solver=TIGHT,
    )
    fwd = CNF(3, context_dim, jacobian_products="forward", **common, **kw).double()
    perturb(fwd, 0.3)
    rev = CNF(3, context_dim, jacobian_products="reverse", **common, **kw).double()
    rev.load_state_dict(fwd.state_dict())
    return fwd, rev


@pytest.mark.parametrize("layer", ["concat", "concatsquash", "gated", "input"])
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_forward_and_reverse_mode_agree(layer, trace):
    fwd, rev = _pair(layer, trace, "softplus" if layer != "gated" else "tanh", learn_end_time=True)
    x = torch.randn(6, 3, dtype=torch.float64)
    c = torch.randn(6, 2, dtype=torch.float64)
    results = []
    for cnf in (fwd, rev):
        torch.manual_seed(7)  # the same Hutchinson noise for both
        z, ladj = cnf(x, c)
        loss = z.square().sum() + ladj.sum()
        results.append((z, ladj, torch.autograd.grad(loss, list(cnf.parameters()))))
    (z1, l1, g1), (z2, l2, g2) = results
    torch.testing.assert_close(z1, z2, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(l1, l2, rtol=1e-6, atol=1e-8)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_forward_mode_field_jvp_is_the_jacobian():
    torch.manual_seed(0)
    field = perturb(
        VectorField(3, hidden=(9,), context_dim=1, layer="gated", activation="gelu").double(), 0.3
    )
    z = torch.randn(4, 3, dtype=torch.float64)
    c = torch.randn(4, 1, dtype=torch.float64)
    t = torch.tensor(0.4, dtype=torch.float64)
    v = torch.randn(4, 3, dtype=torch.float64)
    f, (jv, col) = field.jvp(t, z, [v, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)], c)
    torch.testing.assert_close(f, field(t, z, c))
    jac = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda r: field(t, r[None], c[b : b + 1])[0], z[b])
            for b in range(4)
        ]
    )
    torch.testing.assert_close(jv, torch.einsum("bij,bj->bi", jac, v))
    torch.testing.assert_close(col, jac[:, :, 1])


def test_forward_mode_regularisers():
    fwd, rev = _pair("concatsquash", "exact", "tanh", context_dim=0, kinetic=1.0, jacobian=1.0)
    # Tolerances far below the comparisons' (1e-6 and 10%), at a quarter of TIGHT's solver steps.
    fwd.solver = rev.solver = SolverOptions(rtol=1e-7, atol=1e-7)
    fwd.train()
    rev.train()
    x = torch.randn(2000, 3, dtype=torch.float64)
    regs = []
    for cnf in (fwd, rev):
        cnf.kinetic, cnf.jacobian = 1.0, 0.0
        cnf(x)
        kinetic = cnf.regularization()
        cnf.kinetic, cnf.jacobian = 0.0, 1.0
        cnf(x)
        regs.append((kinetic, cnf.regularization()))
    torch.testing.assert_close(regs[0][0], regs[1][0], rtol=1e-6, atol=0)
    # Two unbiased estimates of the same Frobenius integral (forward |J e|^2, reverse |e^T J|^2).
    torch.testing.assert_close(regs[0][1], regs[1][1], rtol=0.1, atol=0)


def test_solver_options_validate():
    with pytest.raises(ValueError, match="norm"):
        SolverOptions(norm="l2")
    with pytest.raises(ValueError, match="aux_atol"):
        SolverOptions(aux_atol=0.0)
    with pytest.raises(ValueError, match="norm"):
        SolverOptions(extra={"norm": lambda x: x.abs().max()})
    assert SolverOptions(aux_atol=math.inf).to_dict()["aux_atol"] == math.inf


def _nfe_and_logdet(solver: SolverOptions, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    torch.manual_seed(0)
    cnf = perturb(CNF(2, hidden=(16, 16), solver=solver).double(), 0.5)
    with torch.no_grad():
        _, ladj = cnf(x)
    return cnf.nfe_forward, ladj


def test_error_norms_and_aux_tolerance():
    x = torch.randn(64, 2, dtype=torch.float64)
    _, reference = _nfe_and_logdet(SolverOptions(rtol=1e-11, atol=1e-11), x)
    nfe_rms, ladj_rms = _nfe_and_logdet(SolverOptions(rtol=1e-6, atol=1e-6), x)
    nfe_max, ladj_max = _nfe_and_logdet(SolverOptions(rtol=1e-6, atol=1e-6, norm="max"), x)
    nfe_loose, ladj_loose = _nfe_and_logdet(SolverOptions(rtol=1e-6, atol=1e-6, norm="max", aux_atol=1e-3), x)
    nfe_state, _ = _nfe_and_logdet(SolverOptions(rtol=1e-6, atol=1e-6, norm="max", aux_atol=math.inf), x)
    # The max norm holds every element to the tolerance: more steps than the RMS norm.
    assert nfe_max > nfe_rms
    assert (ladj_max - reference).abs().max() <= (ladj_rms - reference).abs().max()
    # A looser log-det tolerance never needs more steps; leaving it out of control needs fewest.
    assert nfe_state <= nfe_loose <= nfe_max
    assert (ladj_loose - reference).abs().max() < 1e-3


def test_adjoint_seminorm_gradients_agree():
    torch.manual_seed(0)
    direct = perturb(CNF(2, hidden=(16,), solver=SolverOptions(rtol=1e-8, atol=1e-8)).double(), 0.3)
    models = {"direct": direct}
    for seminorm in (False, True):
        solver = SolverOptions(
            rtol=1e-8, atol=1e-8, adjoint=True, adjoint_seminorm=seminorm, norm="max", aux_atol=1e-6
        )
        m = CNF(2, hidden=(16,), solver=solver).double()
        m.load_state_dict(direct.state_dict())
        models[f"adjoint seminorm={seminorm}"] = m
    x = torch.randn(16, 2, dtype=torch.float64)
    grads, nfe = {}, {}
    for name, m in models.items():
        loss = -Flow(m, 2).log_prob(x).mean()
        grads[name] = torch.autograd.grad(loss, [p for p in m.parameters() if p.requires_grad])
        nfe[name] = m.nfe_backward
    for name in models:
        for a, b in zip(grads[name], grads["direct"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-7)
    assert 0 < nfe["adjoint seminorm=True"] <= nfe["adjoint seminorm=False"]


def test_step_size_selection_is_not_differentiated():
    # Backpropagating through the solver reaches the field only through the accepted steps: the
    # first-step heuristic's probe evaluation and rejected steps are not part of the gradient.
    torch.manual_seed(0)
    cnf = perturb(CNF(2, hidden=(8,), solver=SolverOptions(rtol=1e-6, atol=1e-6, norm="max")), 1.0)
    rejected = []
    cnf.counter.callback_reject_step = lambda t0, y0, dt: rejected.append(float(dt))
    z, ladj = cnf(3 * torch.randn(32, 2))
    (z.sum() + ladj.sum()).backward()
    assert rejected  # this field is stiff enough for the controller to reject some steps
    assert cnf.nfe_backward == cnf.nfe_forward - 1 - 6 * len(rejected)


def test_reverse_mode_exact_trace_per_dimension_fallback():
    fwd, rev = _pair("concat", "exact", "tanh")
    x = torch.randn(5, 3, dtype=torch.float64)
    c = torch.randn(5, 2, dtype=torch.float64)
    _, batched = rev(x, c)
    rev.counter.func.batched_vjp = False  # what a field without batching support falls back to
    _, looped = rev(x, c)
    _, forward = fwd(x, c)
    torch.testing.assert_close(looped, batched, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(forward, batched, rtol=1e-7, atol=1e-9)
