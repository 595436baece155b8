"""A simulated population pharmacokinetic study: repeated oral doses, sparse concentrations.

Each subject follows a one-compartment model with first-order absorption (Bateman 1910; the
standard model of population PK, e.g. Gabrielsson & Weiner, "Pharmacokinetic and
Pharmacodynamic Data Analysis"): a dose ``D`` taken at time ``s`` gives the concentration

    C(t) = D ka / (V (ka - ke)) * (exp(-ke (t - s)) - exp(-ka (t - s))),   t > s,  ke = CL / V,

and doses add up. Clearance and volume scale allometrically with body weight
(``CL ~ (WT / 70)^0.75``, ``V ~ WT / 70``), clearance is lower for one sex, and every subject
has its own log-normal deviations of ``CL``, ``V`` and ``ka`` (between-subject variability).
Doses come at irregular times around a dosing interval; concentrations are sampled sparsely at
random times with log-normal (proportional) error. The study is cut at ``cutoff``: the doses
after it are the planned, known-future inputs, the concentrations after it the targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from ..checks import in_interval, positive_int, real_number

__all__ = ["PKData", "PKTruth", "simulate_pk"]

POPULATION = {"cl": 5.0, "v": 40.0, "ka": 1.2}  # L/h, L, 1/h for a 70 kg subject
BETWEEN_SUBJECT_SD = {"cl": 0.3, "v": 0.2, "ka": 0.3}  # log scale
FEMALE_CLEARANCE = 0.8
DOSES = (50.0, 100.0, 200.0)  # mg


@dataclass(frozen=True)
class PKTruth:
    """The simulator's own predictive: each subject's true parameters and the error model.

    ``concentration(ids, times)`` is the noise-free concentration (a dose taken at ``t`` counts
    from just after ``t``); an observation is log-normal
    around it with log-scale ``sigma``. ``quantile``, ``sample`` and ``crps`` give the oracle
    forecast that knows every subject's parameters and doses (a lower bound for any model).
    """

    params: pd.DataFrame  # index: subject id; columns cl, v, ka
    doses: pd.DataFrame  # id, ds, dose (every dose, planned ones included)
    sigma: float

    def concentration(self, ids: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Noise-free concentrations (mg/L) of subjects ``ids`` at ``times``."""
        ids, times = np.asarray(ids), np.asarray(times, dtype=np.float64)
        out = np.zeros(len(times))
        by_subject = self.doses.groupby("id")
        for subject in np.unique(ids):
            rows = np.flatnonzero(ids == subject)
            cl, v, ka = self.params.loc[subject, ["cl", "v", "ka"]]
            dosing = by_subject.get_group(subject)
            out[rows] = _bateman(times[rows], dosing["ds"].to_numpy(), dosing["dose"].to_numpy(), cl, v, ka)
        return out

    def quantile(self, ids: np.ndarray, times: np.ndarray, q: float) -> np.ndarray:
        """The oracle predictive's ``q``-quantile of an observation."""
        q = in_interval(q, "q", 0, 1, closed="neither")
        z = float(torch.special.ndtri(torch.tensor(q, dtype=torch.float64)))
        return self.concentration(ids, times) * math.exp(self.sigma * z)

    def sample(self, ids: np.ndarray, times: np.ndarray, n: int, seed: int | None = 0) -> np.ndarray:
        """``(n, len(times))`` draws of observations from the oracle predictive."""
        noise = np.random.default_rng(seed).normal(0.0, self.sigma, (n, len(times)))
        return self.concentration(ids, times) * np.exp(noise)

    def crps(self, ids: np.ndarray, times: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Exact CRPS of the oracle's log-normal predictive at observations ``y`` (Baran & Lerch
        2015, "Log-normal distribution based ensemble model output statistics models")."""
        median = self.concentration(ids, times)
        mu, s = np.log(median), self.sigma
        y = np.asarray(y, dtype=np.float64)
        w = (np.log(y) - mu) / s
        cdf = _normal_cdf(w)
        mean = np.exp(mu + s**2 / 2)
        return y * (2 * cdf - 1) - 2 * mean * (_normal_cdf(w - s) + _normal_cdf(s / math.sqrt(2)) - 1)


class PKData(NamedTuple):
    """What :func:`simulate_pk` returns."""

    df: pd.DataFrame  # id, ds, conc (target), dose (input): every row up to the study's end
    static_df: pd.DataFrame  # id, weight, sex
    future_df: pd.DataFrame  # id, ds, dose: the doses after the cutoff (known in advance)
    truth: PKTruth


def _bateman(t: np.ndarray, dose_times: np.ndarray, amounts: np.ndarray, cl: float, v: float, ka: float):
    """Superposed one-compartment, first-order-absorption concentrations at times ``t``."""
    ke = cl / v
    elapsed = t[:, None] - dose_times[None, :]
    after = elapsed > 0
    elapsed = np.where(after, elapsed, 0.0)
    shape = np.exp(-ke * elapsed) - np.exp(-ka * elapsed)
    return (amounts * ka / (v * (ka - ke)) * np.where(after, shape, 0.0)).sum(1)


def _normal_cdf(x: np.ndarray | float) -> np.ndarray:
    return torch.special.ndtr(torch.as_tensor(x, dtype=torch.float64)).numpy()


def _subjects(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Static covariates and individual parameters of ``n`` subjects."""
    ids = np.array([f"s{i:03d}" for i in range(n)])
    sex = rng.choice(np.array(["F", "M"]), n)
    weight = np.round(np.exp(rng.normal(math.log(70.0), 0.2, n)), 1)
    eta = {k: rng.normal(0.0, sd, n) for k, sd in BETWEEN_SUBJECT_SD.items()}
    cl = POPULATION["cl"] * (weight / 70.0) ** 0.75 * np.where(sex == "F", FEMALE_CLEARANCE, 1.0)
    params = pd.DataFrame(
        {
            "cl": cl * np.exp(eta["cl"]),
            "v": POPULATION["v"] * (weight / 70.0) * np.exp(eta["v"]),
            "ka": POPULATION["ka"] * np.exp(eta["ka"]),
        },
        index=ids,
    )
    static = pd.DataFrame({"id": ids, "weight": weight, "sex": pd.Categorical(sex, categories=["F", "M"])})
    return static, params


def _dosing(ids: np.ndarray, duration: float, interval: float, rng: np.random.Generator) -> pd.DataFrame:
    """Doses at irregular times: the first at 0, then every ``interval`` hours +-25%."""
    rows = []
    for subject in ids:
        t = 0.0
        while t < duration:
            rows.append((subject, round(t, 2), float(rng.choice(DOSES))))
            t += interval * rng.uniform(0.75, 1.25)
    return pd.DataFrame(rows, columns=["id", "ds", "dose"])


def _sampling(ids: np.ndarray, duration: float, per_day: float, rng: np.random.Generator) -> pd.DataFrame:
    """Sparse sampling times: a Poisson number per subject (at least 3), uniform over the study."""
    rows = []
    for subject in ids:
        count = max(3, int(rng.poisson(per_day * duration / 24.0)))
        for t in np.sort(rng.uniform(0.25, duration, count)):
            rows.append((subject, round(float(t), 2)))
    return pd.DataFrame(rows, columns=["id", "ds"])


def simulate_pk(
    n_subjects: int = 60,
    duration: float = 96.0,
    cutoff: float = 72.0,
    dosing_interval: float = 12.0,
    samples_per_day: float = 3.0,
    sigma: float = 0.15,
    seed: int | None = 0,
) -> PKData:
    """A population PK study of ``n_subjects`` over ``duration`` hours, cut at ``cutoff``.

    Returns :class:`PKData` ``(df, static_df, future_df, truth)``: ``df`` has one row per dose
    (``dose`` in mg, ``conc`` NaN) and per concentration sample (``conc`` in mg/L, ``dose`` NaN)
    over the whole study, columns ``id, ds, conc, dose`` (hours); ``static_df`` one row per
    subject (``weight`` in kg, categorical ``sex``); ``future_df`` the doses after ``cutoff``
    (what a forecast from the data up to ``cutoff`` may know in advance); ``truth`` the
    simulator's own predictive (:class:`PKTruth`).

    >>> data = simulate_pk(5, seed=1)
    >>> list(data.df.columns), list(data.static_df.columns), bool((data.future_df["ds"] > 72).all())
    (['id', 'ds', 'conc', 'dose'], ['id', 'weight', 'sex'], True)
    >>> rows = data.df.dropna(subset=["conc"])
    >>> bool((rows["conc"] > 0).all())
    True
    """
    n_subjects = positive_int(n_subjects, "n_subjects")
    duration = real_number(duration, "duration", positive=True)
    cutoff = real_number(cutoff, "cutoff", positive=True)
    if cutoff >= duration:
        raise ValueError(f"cutoff must lie before the study's end (duration={duration}), got {cutoff}")
    interval = real_number(dosing_interval, "dosing_interval", positive=True)
    per_day = real_number(samples_per_day, "samples_per_day", positive=True)
    sigma = real_number(sigma, "sigma", positive=True)
    rng = np.random.default_rng(seed)
    static, params = _subjects(n_subjects, rng)
    doses = _dosing(static["id"].to_numpy(), duration, interval, rng)
    samples = _sampling(static["id"].to_numpy(), duration, per_day, rng)
    truth = PKTruth(params, doses, sigma)
    clean = truth.concentration(samples["id"].to_numpy(), samples["ds"].to_numpy())
    samples["conc"] = clean * np.exp(rng.normal(0.0, sigma, len(samples)))
    rows = pd.concat([samples.assign(dose=np.nan), doses.assign(conc=np.nan)], ignore_index=True)
    # A sample taken at a dose's time shares its row (one row per subject and time).
    df = rows.groupby(["id", "ds"], as_index=False, sort=True)[["conc", "dose"]].first()
    future = doses[doses["ds"] > cutoff].reset_index(drop=True)
    return PKData(df, static, future, truth)
