"""The solver table of ctflow.ode: validation, step planning, fixed-step accuracy and NFE counting."""

import itertools
import math

import pytest
import torch
from torch import nn

from ctflow import ode
from ctflow.ode import (
    SOLVERS,
    NFECounter,
    SolverOptions,
    fixed_step_plan,
    integrate,
    integrate_intervals,
    solver_spec,
)

FIXED = [name for name, spec in SOLVERS.items() if spec.fixed_step]
TORCHDIFFEQ_FIXED = [name for name in FIXED if not SOLVERS[name].interval_only]
ADAPTIVE = [name for name, spec in SOLVERS.items() if not spec.fixed_step]
F64 = torch.float64


class Decay(nn.Module):
    """``dh/dt = -rate * h`` (autonomous, as integrate_intervals wants), counting its evaluations."""

    def __init__(self, rate: float = 1.0):
        super().__init__()
        self.rate = nn.Parameter(torch.tensor(rate, dtype=F64))
        self.calls = 0

    def forward(self, h):
        self.calls += 1
        return -self.rate * h

    def rate_and_target(self, h):  # the relaxation form exp_euler needs
        self.calls += 1
        return self.rate.expand_as(h), torch.zeros_like(h)


class TimedDecay(nn.Module):
    """``dy/dt = -y`` as a field ``f(t, y)`` of :func:`integrate`."""

    def forward(self, t, y):
        return -y


def _options(method: str, step_size: float = 0.1, **kwargs) -> SolverOptions:
    return SolverOptions(method=method, step_size=step_size, **kwargs)


# ------------------------------------------------------------------------------ the table


@pytest.mark.parametrize("method", list(SOLVERS))
def test_every_method_of_the_table_validates(method):
    options = _options(method)
    spec = options.spec
    assert spec is SOLVERS[method] is solver_spec(method) and spec.name == method
    assert spec.order >= 1 and (spec.stages is None or spec.stages >= 1)
    assert not spec.interval_only or spec.fixed_step
    assert ("norm" in options._torchdiffeq_options()) == (not spec.fixed_step)
    assert ("step_size" in options._torchdiffeq_options()) == spec.fixed_step


def test_former_names_are_views_of_the_table():
    names = ode.FIXED_STEP + ode.ADAPTIVE + ode.INTERVAL_ONLY
    assert sorted(names) == sorted(SOLVERS) and len(set(names)) == len(names)
    assert set(ode.FIXED_STEP) == set(TORCHDIFFEQ_FIXED) and set(ode.ADAPTIVE) == set(ADAPTIVE)
    assert {"heun3", "explicit_adams", "implicit_adams"} <= set(ode.FIXED_STEP)
    assert ode.INTERVAL_ONLY == ("exp_euler",)
    for name, stages in ode.FIXED_STEP_STAGES.items():
        assert SOLVERS[name].fixed_step and SOLVERS[name].stages == stages
    assert set(ode._FUSED_STEPS) <= set(FIXED)


def test_invalid_options():
    with pytest.raises(ValueError, match="unknown ODE method 'rk5'; valid: dopri5, dopri8"):
        SolverOptions(method="rk5")
    with pytest.raises(ValueError, match="step_size must be a positive"):
        SolverOptions(method="heun3", step_size=0.0)
    with pytest.raises(ValueError, match="max_steps must be a positive int or None, got 0"):
        SolverOptions(method="euler", step_size=0.1, max_steps=0)
    with pytest.raises(ValueError, match="rtol"):
        SolverOptions(rtol=-1.0)
    with pytest.raises(TypeError, match="atol must be a positive number, got 'tight'"):
        SolverOptions(atol="tight")
    with pytest.raises(ValueError, match="unknown error norm 'l1'; valid: rms, max"):
        SolverOptions(norm="l1")
    with pytest.raises(ValueError, match="aux_atol"):
        SolverOptions(aux_atol=0.0)
    assert SolverOptions(aux_atol=math.inf).aux_atol == math.inf


def test_method_defaults_and_extra():
    assert _options("explicit_adams")._torchdiffeq_options()["max_order"] == 5
    assert _options("explicit_adams", extra={"max_order": 8})._torchdiffeq_options()["max_order"] == 8
    assert "max_order" not in _options("implicit_adams")._torchdiffeq_options()


def test_interval_only_methods_are_refused_by_integrate():
    y0, t = torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match="between observations only"):
        integrate(TimedDecay(), y0, t, _options("exp_euler"))


# ------------------------------------------------------------------------------ step planning


@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_plan_counts_steps_of_at_most_step_size(method):
    dts = torch.tensor([[1.0, 0.35, 0.0, 0.1], [0.5, 0.1, 0.0, 0.05]], dtype=F64)
    assert fixed_step_plan(dts, _options(method)) == [10, 4, 0, 1]
    assert fixed_step_plan(dts, _options(method, step_size=0.25)) == [4, 2, 0, 1]
    assert fixed_step_plan(dts, _options(method, max_steps=3)) == [3, 3, 0, 1]
    with pytest.raises(ValueError, match="precede"):
        fixed_step_plan(-dts, _options(method))
    with pytest.raises(ValueError, match="needs step_size"):
        fixed_step_plan(dts, SolverOptions(method=method))


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_methods_have_no_plan(method):
    dts = torch.tensor([[1.0, 0.0]], dtype=F64)
    assert fixed_step_plan(dts, SolverOptions(method=method)) == [None, None]


@pytest.mark.parametrize("method", FIXED)
def test_interval_solve_takes_the_planned_steps(method):
    """Every fixed-step method takes ceil(max dt / step_size) equal steps per interval."""
    field, counter = Decay(), NFECounter()
    h0 = torch.ones(3, 2, dtype=F64)
    dt = torch.tensor([1.0, 0.5, 0.0], dtype=F64)
    options = _options(method)
    out = integrate_intervals(field, h0, dt, options, counter=counter)
    assert counter.nfe_forward == field.calls > 0 and counter.nfe_backward == 0
    spec = SOLVERS[method]
    if spec.stages is not None:
        assert field.calls == 10 * spec.stages
    assert torch.equal(out[2], h0[2])  # a row with dt = 0 stays put
    (n_steps,) = fixed_step_plan(dt.unsqueeze(1), options)
    assert n_steps == 10
    torch.testing.assert_close(integrate_intervals(field, h0, dt, options, n_steps=n_steps), out)
    exact = torch.exp(-dt).unsqueeze(1).expand_as(h0)
    torch.testing.assert_close(out, exact, atol=0.25 * 0.1**spec.order, rtol=0)


@pytest.mark.parametrize("method", TORCHDIFFEQ_FIXED)
def test_step_size_means_the_same_in_interval_and_plain_solves(method):
    """A row of length T advanced by integrate_intervals takes the steps of integrate over [0, T]:
    the same number of evaluations and, for every method but RK4, the same arithmetic (the fused
    loop takes the classic RK4 step, torchdiffeq its 3/8-rule variant: both fourth order, so
    they agree to the step's local error)."""
    t = torch.tensor([0.0, 1.3], dtype=F64)
    y0 = torch.ones(1, 2, dtype=F64)
    plain_counter = NFECounter(TimedDecay())
    plain = integrate(plain_counter, y0, t, _options(method), counter=plain_counter)[-1]
    counter = NFECounter()
    lockstep = integrate_intervals(Decay(), y0, t[1:], _options(method), counter=counter)
    tolerance = 1e-6 if method == "rk4" else 1e-12
    torch.testing.assert_close(lockstep, plain, rtol=tolerance, atol=tolerance)
    assert counter.nfe_forward == plain_counter.nfe_forward


@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_error_shrinks_with_the_order(method):
    """``dy/dt = -y`` on [0, 1]: the error is at most C h^order at every step size h."""
    order = SOLVERS[method].order
    errors = []
    for step in (0.1, 0.05, 0.025):
        out = integrate_intervals(
            Decay(), torch.ones(1, 1, dtype=F64), torch.ones(1, dtype=F64), _options(method, step)
        )
        errors.append(abs(float(out.detach()) - math.exp(-1)))
        assert errors[-1] <= 0.25 * step**order
    if SOLVERS[method].stages is not None and method != "exp_euler":  # exp_euler is exact here
        assert math.log2(errors[0] / errors[1]) > order - 0.3


@pytest.mark.parametrize("method", ["heun3", "explicit_adams"])
def test_heun3_and_explicit_adams_converge_at_their_order(method):
    t = torch.tensor([0.0, 1.0], dtype=F64)
    errors = [
        abs(
            float(integrate(TimedDecay(), torch.ones(1, dtype=F64), t, _options(method, h))[-1])
            - math.exp(-1)
        )
        for h in (0.1, 0.05, 0.025, 0.0125)
    ]
    order = SOLVERS[method].order
    assert all(e <= 0.25 * h**order for e, h in zip(errors, (0.1, 0.05, 0.025, 0.0125), strict=True))
    assert all(math.log2(a / b) > order - 0.3 for a, b in itertools.pairwise(errors))


@pytest.mark.parametrize("method", ["heun3", "explicit_adams", "dopri5"])
def test_interval_gradients_match_the_exact_one(method):
    """Backpropagation through the solver and the adjoint solve both give ``d/da sum_b exp(-a dt_b)``
    to the accuracy of the method."""
    dt, rate = torch.tensor([1.0, 0.4], dtype=F64), 0.7
    exact = float(-(dt * torch.exp(-rate * dt)).sum())
    tol = 0.25 * 0.1 ** SOLVERS[method].order if SOLVERS[method].fixed_step else 1e-6
    for adjoint in (False, True):
        field = Decay(rate)
        options = _options(method, adjoint=adjoint, rtol=1e-9, atol=1e-9)
        out = integrate_intervals(field, torch.ones(2, 1, dtype=F64), dt, options)
        (grad,) = torch.autograd.grad(out.sum(), field.rate)
        assert float(grad) == pytest.approx(exact, abs=tol)


# ------------------------------------------------------------------------------ NFE counting


def test_counter_without_a_field():
    counter = NFECounter()
    assert isinstance(counter, nn.Module) and counter.state_dict() == {}
    counter.add(3)
    counter.add(2, n_backward=4)
    assert (counter.nfe_forward, counter.nfe_backward) == (5, 4)
    counter.reset()
    assert (counter.nfe_forward, counter.nfe_backward) == (0, 0)
    with pytest.raises(RuntimeError, match="add"):
        counter(torch.zeros(()), torch.zeros(1))


def test_counter_found_as_a_submodule_of_a_model():
    model = nn.Module()
    model.nfe = NFECounter()
    integrate_intervals(
        Decay(),
        torch.ones(1, 1),
        torch.ones(1),
        SolverOptions(method="rk4", step_size=0.5),
        counter=model.nfe,
    )
    (found,) = [m for m in model.modules() if isinstance(m, NFECounter)]
    assert found.nfe_forward == 8


def test_adaptive_interval_solve_counts_its_evaluations():
    field, counter = Decay(), NFECounter()
    integrate_intervals(
        field, torch.ones(2, 1, dtype=F64), torch.ones(2, dtype=F64), SolverOptions(), counter=counter
    )
    assert counter.nfe_forward == field.calls > 6
