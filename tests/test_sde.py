"""SDE integration over per-series intervals (ctflow.sde, re-exported by ctflow.ode)."""

import pytest
import torch

from ctflow import ode, sde
from ctflow.ode import NFECounter, SolverOptions, integrate_intervals
from ctflow.sde import NOISE_TYPES, SDE_METHODS, integrate_sde_intervals

F64 = torch.float64


def _decay(y):
    return -y


def test_ode_reexports_the_sde_names():
    assert ode.integrate_sde_intervals is sde.integrate_sde_intervals
    assert ode.SDE_METHODS is sde.SDE_METHODS == ("euler", "milstein", "srk")
    assert {"integrate_sde_intervals", "SDE_METHODS"} <= set(ode.__all__)


def test_bad_method_or_noise_type():
    y, dt = torch.ones(2, 1), torch.ones(2)
    with pytest.raises(ValueError, match="unknown SDE method 'heun'; valid: euler, milstein, srk"):
        integrate_sde_intervals(_decay, torch.zeros_like, y, dt, 2, method="heun")
    with pytest.raises(ValueError, match="unknown noise_type 'scalar'; valid: diagonal, general"):
        integrate_sde_intervals(_decay, torch.zeros_like, y, dt, 2, noise_type="scalar")


def test_zero_steps_return_the_state():
    y = torch.randn(3, 2)
    assert integrate_sde_intervals(_decay, torch.ones_like, y, torch.ones(3), 0) is y


@pytest.mark.parametrize("method", SDE_METHODS)
def test_without_noise_euler_matches_the_ode_solve(method):
    """With ``g = 0`` the SDE is the ODE: Euler-Maruyama takes Euler's steps, and every scheme
    lands near ``exp(-dt)``; rows keep their own durations, a row with ``dt = 0`` stays put."""
    y0 = torch.ones(3, 2, dtype=F64)
    dt = torch.tensor([1.0, 0.5, 0.0], dtype=F64)
    counter = NFECounter()
    out = integrate_sde_intervals(_decay, torch.zeros_like, y0, dt, 10, method=method, counter=counter)
    assert torch.equal(out[2], y0[2])
    assert counter.nfe_forward >= 10 and counter.nfe_backward == 0
    exact = torch.exp(-dt).unsqueeze(1).expand_as(y0)
    torch.testing.assert_close(out, exact, atol=0.02, rtol=0)
    if method == "euler":
        # torchsde adds a step of rounding length when ten steps of 0.1 fall short of 1
        assert 10 <= counter.nfe_forward <= 12
        euler = integrate_intervals(_decay, y0, dt, SolverOptions(method="euler", step_size=0.1))
        torch.testing.assert_close(out, euler, rtol=1e-12, atol=1e-12)


def test_seeded_runs_repeat_and_noise_spreads_the_rows():
    y0, dt = torch.zeros(2000, 1, dtype=F64), torch.full((2000,), 0.5, dtype=F64)
    torch.manual_seed(0)
    a = integrate_sde_intervals(_decay, torch.ones_like, y0, dt, 5)
    torch.manual_seed(0)
    b = integrate_sde_intervals(_decay, torch.ones_like, y0, dt, 5)
    assert torch.equal(a, b)
    # Ornstein-Uhlenbeck from 0: variance (1 - exp(-2 t)) / 2 = 0.316 at t = 0.5 (Euler: 0.33).
    assert 0.28 < float(a.var()) < 0.37


def test_general_noise():
    """``g(y)`` of shape (B, K, m): one Brownian motion driving both components."""
    y0, dt = torch.zeros(1000, 2, dtype=F64), torch.ones(1000, dtype=F64)
    torch.manual_seed(1)
    out = integrate_sde_intervals(
        torch.zeros_like,
        lambda y: torch.ones(y.shape[0], 2, 1, dtype=y.dtype),
        y0,
        dt,
        4,
        noise_type="general",
    )
    assert "general" in NOISE_TYPES
    torch.testing.assert_close(out[:, 0], out[:, 1])
    assert 0.85 < float(out[:, 0].var()) < 1.15
