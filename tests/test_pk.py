"""The simulated PK study: its concentrations solve the model's ODE, its noise and its oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctflow.data import simulate_pk
from ctflow.metrics import crps_samples


@pytest.fixture(scope="module")
def study():
    return simulate_pk(40, seed=3)


def _ode_concentration(doses, cl, v, ka, t_end, step=1e-3):
    """Gut and central amounts integrated by RK4 with the doses as impulses into the gut."""
    ke = cl / v
    grid = np.arange(0.0, t_end + step / 2, step)
    gut, central, out = 0.0, 0.0, np.empty(len(grid))
    pending = sorted(zip(doses["ds"], doses["dose"], strict=True))

    def rate(g, c):
        return -ka * g, ka * g - ke * c

    for i, t in enumerate(grid):
        while pending and pending[0][0] <= t + 1e-12:
            gut += pending.pop(0)[1]
        out[i] = central / v
        k1 = rate(gut, central)
        k2 = rate(gut + step / 2 * k1[0], central + step / 2 * k1[1])
        k3 = rate(gut + step / 2 * k2[0], central + step / 2 * k2[1])
        k4 = rate(gut + step * k3[0], central + step * k3[1])
        gut += step / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        central += step / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    return grid, out


def test_the_layout_of_the_study(study):
    df, static, future, _ = study
    assert list(df.columns) == ["id", "ds", "conc", "dose"] and not df.duplicated(["id", "ds"]).any()
    assert set(static["id"]) == set(df["id"]) and len(static) == 40
    assert (df["conc"].dropna() > 0).all() and df["dose"].dropna().isin([50.0, 100.0, 200.0]).all()
    assert (df[["conc", "dose"]].notna().any(axis=1)).all()
    assert (future["ds"] > 72).all() and len(future) > 0
    merged = future.merge(df, on=["id", "ds"], suffixes=("", "_df"))
    assert len(merged) == len(future) and (merged["dose"] == merged["dose_df"]).all()
    assert (df.groupby("id")["conc"].count() >= 3).all()
    assert simulate_pk(40, seed=3).df.equals(df) and not simulate_pk(40, seed=4).df.equals(df)


def test_concentrations_solve_the_one_compartment_model(study):
    truth = study.truth
    subject = truth.params.index[0]
    doses = truth.doses[truth.doses["id"] == subject]
    cl, v, ka = truth.params.loc[subject, ["cl", "v", "ka"]]
    grid, reference = _ode_concentration(doses, cl, v, ka, 96.0)
    times = np.array([1.0, 5.5, 30.25, 60.0, 95.0])
    exact = truth.concentration(np.array([subject] * len(times)), times)
    np.testing.assert_allclose(exact, np.interp(times, grid, reference), rtol=1e-3)
    assert truth.concentration(np.array([subject]), np.array([0.0]))[0] == 0.0


def test_heavier_subjects_have_larger_volumes_and_clearances():
    big = simulate_pk(400, seed=0)
    weight = big.static_df.set_index("id")["weight"]
    params = big.truth.params.loc[weight.index]
    assert np.corrcoef(np.log(weight), np.log(params["v"]))[0, 1] > 0.3
    assert np.corrcoef(np.log(weight), np.log(params["cl"]))[0, 1] > 0.1


def test_observation_noise_and_the_oracle_predictive(study):
    df, _, _, truth = study
    rows = df.dropna(subset=["conc"])
    ids, times, y = rows["id"].to_numpy(), rows["ds"].to_numpy(), rows["conc"].to_numpy()
    log_error = np.log(y / truth.concentration(ids, times))
    assert abs(log_error.mean()) < 0.03 and abs(log_error.std() - truth.sigma) < 0.02
    below = (y <= truth.quantile(ids, times, 0.9)).mean()
    assert 0.85 < below < 0.95
    draws = truth.sample(ids, times, 8000, seed=1)
    by_samples = crps_samples(torch.from_numpy(draws), torch.from_numpy(y.copy()), reduce=False).numpy()
    exact = truth.crps(ids, times, y)
    np.testing.assert_allclose(exact, by_samples, rtol=0.1, atol=2e-3)  # Monte Carlo error per value
    assert abs(exact.mean() / by_samples.mean() - 1) < 0.01


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_subjects": 0}, ValueError, "n_subjects must be a positive int"),
        (
            {"cutoff": 100.0},
            ValueError,
            r"cutoff must lie before the study's end \(duration=96.0\), got 100.0",
        ),
        ({"sigma": -1.0}, ValueError, "sigma must be a positive"),
        ({"duration": "long"}, TypeError, "duration must be a positive"),
    ],
)
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        simulate_pk(**kwargs)
