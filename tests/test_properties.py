"""Property tests over batch sizes, dimensions, contexts and input magnitudes up to 1e4."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import perturb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctflow.flows import FLOW_NAMES, build

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def _flow(name: str, dim: int, context_dim: int):
    torch.manual_seed(dim * 10 + context_dim)
    # A fixed-step solver keeps CNF cost bounded for inputs far from the data.
    options = {"solver": {"method": "rk4", "step_size": 0.25}} if name == "cnf" else {}
    flow = build(name, dim, context_dim=context_dim, n_layers=3, hidden=(16, 16), seed=0, **options)
    flow.train()
    ctx = torch.randn(128, context_dim) if context_dim else None
    flow.log_prob(torch.randn(128, dim), ctx)  # data-dependent initialisation
    perturb(flow, 0.2, seed=dim)
    return flow.eval()


# The whole message, so that a rejection for another reason (or a bare error) does not pass.
NOT_FINITE = (
    r"^log_prob is not finite: the input has NaN/inf entries or magnitudes the flow cannot "
    r"represent in this dtype \(rescale the data or use float64\)$"
)


@pytest.mark.parametrize("name", FLOW_NAMES)
@SETTINGS
@given(
    batch=st.integers(1, 64),
    dim=st.integers(1, 6),
    context_dim=st.sampled_from([0, 2]),
    log_magnitude=st.floats(-3, 4),
    seed=st.integers(0, 2**16),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
    where=st.tuples(st.integers(0, 63), st.integers(0, 5)),
)
def test_log_prob_is_finite_and_non_finite_input_a_clear_error(
    name, batch, dim, context_dim, log_magnitude, seed, bad, where
):
    """Inputs up to 1e4 in magnitude: finite log-densities of the right shape; the same input with
    one NaN/inf entry: a ValueError saying the input is not finite."""
    flow = _flow(name, dim, context_dim).float()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=g) * 10**log_magnitude
    ctx = torch.randn(batch, context_dim, generator=g) if context_dim else None
    with torch.no_grad():
        lp = flow.log_prob(x, ctx)
        assert lp.shape == (batch,)
        assert torch.isfinite(lp).all()
        x_bad = x.clone()
        x_bad[where[0] % batch, where[1] % dim] = bad
        with pytest.raises(ValueError, match=NOT_FINITE):
            flow.log_prob(x_bad, ctx)


@pytest.mark.parametrize("name", ["maf", "realnvp", "nice", "glow"])
@SETTINGS
@given(batch=st.integers(1, 64), dim=st.integers(1, 6), magnitude=st.sampled_from([1.0, 1e2, 1e4]))
def test_round_trip_over_shapes_and_magnitudes(name, batch, dim, magnitude):
    """Latent -> data -> latent recovers the latent (float64: intermediate values reach ~1e8)."""
    flow = _flow(name, dim, 0).double()
    z = torch.randn(batch, dim, dtype=torch.float64) * magnitude
    with torch.no_grad():
        x, _ = flow.transform.inverse(z)
        z_back, _ = flow.transform(x)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(z_back, z, rtol=1e-6, atol=1e-8 * magnitude)


@pytest.mark.parametrize("name", FLOW_NAMES)
@SETTINGS
@given(n=st.integers(1, 50), context_rows=st.sampled_from(["shared_1d", "shared_2d", "per_row"]))
def test_sample_shapes(name, n, context_rows):
    flow = _flow(name, 3, 2).float()
    ctx = {"shared_1d": torch.randn(2), "shared_2d": torch.randn(1, 2), "per_row": torch.randn(n, 2)}[
        context_rows
    ]
    x = flow.sample(n, context=ctx)
    assert x.shape == (n, 3)
    assert torch.isfinite(x).all()
