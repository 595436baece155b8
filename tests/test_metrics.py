"""Scoring rules against reference implementations and brute-force formulas.

``crps_samples`` is the ensemble CRPS with ``1/n^2`` normalisation of the spread term (the
"non-fair" estimator ``E|X - y| - E|X - X'| / 2`` over the empirical distribution of the samples),
which is what ``properscoring.crps_ensemble`` computes; the comparison is exact up to rounding.
"""

from __future__ import annotations

import numpy as np
import properscoring
import pytest
import torch

from ctflow.metrics import crps_samples, energy_score, interval_coverage, mae, masked_mean, mse, nll


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("n", [1, 2, 7, 200])
def test_crps_matches_properscoring(n):
    rng = _rng(n)
    samples = rng.normal(size=(n, 4, 3)) * rng.uniform(0.1, 3, size=(4, 3)) + rng.normal(size=(4, 3))
    y = rng.normal(size=(4, 3))
    expected = properscoring.crps_ensemble(y, np.moveaxis(samples, 0, -1))
    got = crps_samples(torch.from_numpy(samples), torch.from_numpy(y), reduce=False)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    mean = crps_samples(torch.from_numpy(samples), torch.from_numpy(y))
    assert mean.item() == pytest.approx(expected.mean(), rel=1e-12)


def test_crps_with_ties_masks_and_point_forecasts():
    samples = torch.tensor([[0.0, 1.0], [0.0, 1.0], [2.0, 1.0], [2.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 3.0], dtype=torch.float64)
    ref = properscoring.crps_ensemble(y.numpy(), samples.T.numpy())
    np.testing.assert_allclose(crps_samples(samples, y, reduce=False).numpy(), ref, rtol=1e-12)
    # A point forecast (all samples equal) scores its absolute error.
    assert crps_samples(samples, y, reduce=False)[1].item() == pytest.approx(2.0)
    mask = torch.tensor([0.0, 1.0])
    assert crps_samples(samples, y, mask=mask).item() == pytest.approx(ref[1])
    with pytest.raises(ValueError, match="no entry"):
        crps_samples(samples, y, mask=torch.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        crps_samples(samples, y[:1])


def test_crps_of_a_gaussian_ensemble_approaches_the_closed_form():
    rng = _rng(1)
    sigma, y = 1.5, 0.7
    samples = torch.from_numpy(rng.normal(0, sigma, size=(40_000, 1)))
    exact = properscoring.crps_gaussian(y, 0, sigma)
    assert crps_samples(samples, torch.tensor([y], dtype=torch.float64)).item() == pytest.approx(
        exact, rel=0.02
    )


def _energy_brute_force(samples: np.ndarray, y: np.ndarray, beta: float) -> np.ndarray:
    n = samples.shape[0]
    out = np.empty(y.shape[:-1])
    for idx in np.ndindex(*y.shape[:-1]):
        x = samples[(slice(None), *idx)]
        first = np.mean([np.linalg.norm(x[i] - y[idx]) ** beta for i in range(n)])
        pairs = np.mean([np.linalg.norm(x[i] - x[j]) ** beta for i in range(n) for j in range(n)])
        out[idx] = first - 0.5 * pairs
    return out


@pytest.mark.parametrize("beta", [1.0, 0.5, 1.7])
def test_energy_score_matches_brute_force(beta):
    rng = _rng(2)
    samples, y = rng.normal(size=(30, 5, 3)), rng.normal(size=(5, 3))
    expected = _energy_brute_force(samples, y, beta)
    got = energy_score(torch.from_numpy(samples), torch.from_numpy(y), beta=beta)
    assert got.item() == pytest.approx(expected.mean(), rel=1e-9)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    got = energy_score(torch.from_numpy(samples), torch.from_numpy(y), mask=mask, beta=beta)
    assert got.item() == pytest.approx(expected[[0, 2]].mean(), rel=1e-9)


def test_energy_score_in_one_dimension_is_the_crps():
    rng = _rng(3)
    samples, y = torch.from_numpy(rng.normal(size=(50, 6, 1))), torch.from_numpy(rng.normal(size=(6, 1)))
    assert energy_score(samples, y).item() == pytest.approx(crps_samples(samples, y).item(), rel=1e-9)


def test_energy_score_gradients_are_finite_with_identical_samples():
    samples = torch.zeros(5, 2, 3, requires_grad=True)
    energy_score(samples, torch.ones(2, 3)).backward()
    assert torch.isfinite(samples.grad).all()


def test_interval_coverage_counts_closed_intervals():
    lower = torch.tensor([0.0, 0.0, 0.0, 0.0])
    upper = torch.tensor([1.0, 1.0, 1.0, 1.0])
    y = torch.tensor([0.0, 1.0, 1.5, -0.1])
    assert interval_coverage(lower, upper, y).item() == pytest.approx(0.5)
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert interval_coverage(lower, upper, y, mask=mask).item() == pytest.approx(1.0)
    # Calibrated central intervals of a Gaussian cover about their level.
    rng = _rng(4)
    y = torch.from_numpy(rng.normal(size=20_000))
    z80 = 1.2815515655446004
    coverage = interval_coverage(torch.full_like(y, -z80), torch.full_like(y, z80), y)
    assert coverage.item() == pytest.approx(0.8, abs=0.01)


def test_nll_mse_mae_average_over_observed_entries():
    rng = _rng(5)
    pred, y = torch.from_numpy(rng.normal(size=(4, 6))), torch.from_numpy(rng.normal(size=(4, 6)))
    mask = torch.from_numpy(rng.uniform(size=(4, 6)) < 0.5).double()
    m = mask.numpy().astype(bool)
    diff = (pred - y).numpy()
    assert mse(pred, y, mask).item() == pytest.approx((diff[m] ** 2).mean(), rel=1e-12)
    assert mae(pred, y, mask).item() == pytest.approx(np.abs(diff[m]).mean(), rel=1e-12)
    assert mse(pred, y).item() == pytest.approx((diff**2).mean(), rel=1e-12)
    log_prob = torch.from_numpy(rng.normal(size=(4, 6)))
    assert nll(log_prob, mask).item() == pytest.approx(-log_prob.numpy()[m].mean(), rel=1e-12)
    assert nll(log_prob).item() == pytest.approx(-log_prob.numpy().mean(), rel=1e-12)
    # Unobserved entries may hold anything finite, they do not count.
    noisy = torch.where(mask.bool(), y, torch.full_like(y, 1e6))
    assert mse(pred, noisy, mask).item() == pytest.approx(mse(pred, y, mask).item(), rel=1e-12)
    with pytest.raises(ValueError, match="no entry"):
        masked_mean(log_prob, torch.zeros_like(log_prob))


def test_energy_score_in_float32_has_no_diagonal_rounding_bias():
    rng = _rng(6)
    samples, y = rng.normal(size=(200, 5, 3)), rng.normal(size=(5, 3))
    exact = energy_score(torch.from_numpy(samples), torch.from_numpy(y), beta=0.5).item()
    single = energy_score(torch.from_numpy(samples).float(), torch.from_numpy(y).float(), beta=0.5).item()
    assert single == pytest.approx(exact, rel=2e-6)
