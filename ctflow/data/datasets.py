"""Built-in irregular time-series datasets, returned as long DataFrames (``unique_id``, ``ds``, values).

* :func:`load_double_ou`: the correlated two-dimensional Ornstein-Uhlenbeck benchmark of
  GRU-ODE-Bayes (De Brouwer et al., NeurIPS 2019), simulated on the fly.
* :func:`load_pbcseq`: the Mayo Clinic primary biliary cirrhosis sequential laboratory data
  (R ``survival::pbcseq``), shipped with the package (see ``data/SOURCES.md``).

Pass the frames to :func:`ctflow.data.irregular.from_dataframe` to get tensors.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..checks import choice, in_interval, positive_int

__all__ = [
    "OULatent",
    "PBCSEQ_LABS",
    "PBCSEQ_LOG_LABS",
    "PBCSEQ_STATIC",
    "data_path",
    "load_double_ou",
    "load_pbcseq",
]


class OULatent(NamedTuple):
    """The full simulated paths behind :func:`load_double_ou` (``return_latent=True``)."""

    times: np.ndarray  # (G,) simulation grid, 0, dt, ..., t_max
    paths: np.ndarray  # (n_series, G, 2) latent state on the grid (paths[:, 0] = x0)
    means: np.ndarray  # (n_series, 2) long-run mean of each series
    noise: np.ndarray  # (n_series, G - 1, 2) the correlated Brownian increments dW of each step


def load_double_ou(
    n_series: int = 10_000,
    seed: int | None = 0,
    *,
    t_max: float = 10.0,
    dt: float = 0.05,
    theta: float = 1.0,
    sigma: float = 0.1,
    rho: float = 0.99,
    mean: tuple[float, float] = (1.0, -1.0),
    mean_spread: float = 0.5,
    min_obs: int = 16,
    max_obs: int = 23,
    p_both: float = 0.2,
    p_first: float = 0.4,
    obs_noise: float = 0.0,
    return_latent: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, OULatent]:
    """Sporadically observed, correlated two-dimensional Ornstein-Uhlenbeck series.

    Each series solves ``dx = theta (mu - x) dt + sigma dW`` on ``[0, t_max]`` from ``x0 = 0`` by
    Euler-Maruyama with step ``dt``, where the two components of ``dW`` have correlation ``rho``.
    The long-run mean is ``mu = mean + u`` with ``u`` drawn uniformly from
    ``[-mean_spread, mean_spread]`` independently for each series *and each dimension* (so the two
    means of a series vary independently while the paths stay tightly coupled).

    Observation times: each series gets between ``min_obs`` and ``max_obs`` (inclusive, uniform)
    distinct grid points drawn without replacement from the grid after ``t = 0`` (the start is the
    known ``x0``), about 2 per unit time by default. At each time both dimensions are observed with
    probability ``p_both``, only ``y1`` with ``p_first`` and only ``y2`` otherwise. ``obs_noise``
    adds i.i.d. Gaussian observation noise (0 by default).

    Returns a long frame with columns ``unique_id`` (int, ``0 .. n_series-1``), ``ds`` (float),
    ``y1``, ``y2`` (NaN where not observed), sorted by id and time; with ``return_latent=True``
    also an :class:`OULatent` with the full paths. The same ``seed`` gives the same frame.

    >>> from ctflow.data import load_double_ou
    >>> df = load_double_ou(3, seed=0)
    >>> len(df), df["unique_id"].nunique()
    (53, 3)
    >>> df.head(3).round(3)
       unique_id    ds     y1     y2
    0          0  0.60  0.579 -0.501
    1          0  0.75    NaN -0.625
    2          0  1.05  0.717    NaN
    """
    n_series, min_obs, max_obs, n_steps, rho = _double_ou_args(
        n_series, t_max, dt, rho, min_obs, max_obs, p_both, p_first
    )
    rng = np.random.default_rng(seed)
    means, noise, paths = _simulate_double_ou(
        rng, n_series, n_steps, dt, theta, sigma, rho, mean, mean_spread
    )
    grid = np.round(np.arange(n_steps + 1) * dt, 12)  # 0.15, not 0.15000000000000002
    series, step = _observation_steps(rng, n_series, n_steps, min_obs, max_obs)
    frame = _observe(rng, paths, grid, series, step, obs_noise, p_both, p_first)
    if not return_latent:
        return frame
    latent = OULatent(times=grid, paths=paths.transpose(1, 0, 2), means=means, noise=noise.transpose(1, 0, 2))
    return frame, latent


def _double_ou_args(
    n_series: int,
    t_max: float,
    dt: float,
    rho: float,
    min_obs: int,
    max_obs: int,
    p_both: float,
    p_first: float,
) -> tuple[int, int, int, int, float]:
    """Validate the arguments of :func:`load_double_ou`; return them with the number of steps."""
    n_series = positive_int(n_series, "n_series")
    min_obs, max_obs = positive_int(min_obs, "min_obs"), positive_int(max_obs, "max_obs")
    n_steps = round(t_max / dt)
    if n_steps < 1 or not np.isclose(n_steps * dt, t_max):
        raise ValueError(f"t_max = {t_max} must be a positive multiple of dt = {dt}")
    if not min_obs <= max_obs <= n_steps:
        raise ValueError(f"need min_obs <= max_obs <= {n_steps} grid points, got {min_obs}, {max_obs}")
    rho = in_interval(rho, "rho", -1, 1, closed="both")
    if p_both < 0 or p_first < 0 or p_both + p_first > 1:
        raise ValueError(f"need p_both, p_first >= 0 and p_both + p_first <= 1, got {p_both}, {p_first}")
    return n_series, min_obs, max_obs, n_steps, rho


def _simulate_double_ou(
    rng: np.random.Generator,
    n_series: int,
    n_steps: int,
    dt: float,
    theta: float,
    sigma: float,
    rho: float,
    mean: tuple[float, float],
    mean_spread: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the means and correlated increments; return ``(means, noise, paths)`` (Euler-Maruyama)."""
    means = np.asarray(mean, dtype=np.float64) + rng.uniform(-mean_spread, mean_spread, size=(n_series, 2))
    z = rng.standard_normal((n_steps, n_series, 2))
    noise = np.empty_like(z)
    noise[..., 0] = z[..., 0]
    noise[..., 1] = rho * z[..., 0] + np.sqrt(1.0 - rho**2) * z[..., 1]
    noise *= np.sqrt(dt)
    paths = np.empty((n_steps + 1, n_series, 2))
    paths[0] = 0.0
    drift = theta * dt * means  # x_{k+1} = (1 - theta dt) x_k + theta dt mu + sigma dW_k
    keep = 1.0 - theta * dt
    for k in range(n_steps):
        np.multiply(paths[k], keep, out=paths[k + 1])
        paths[k + 1] += drift
        paths[k + 1] += sigma * noise[k]
    return means, noise, paths


def _observation_steps(
    rng: np.random.Generator, n_series: int, n_steps: int, min_obs: int, max_obs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the observed grid indices; return the series and grid index (1..n_steps) of each row."""
    # A uniform random subset of k_i grid points (indices 1..n_steps) per series.
    n_obs = rng.integers(min_obs, max_obs + 1, size=n_series)
    keys = rng.random((n_series, n_steps))
    if max_obs < n_steps:
        cand = np.argpartition(keys, max_obs - 1, axis=1)[:, :max_obs]
    else:
        cand = np.broadcast_to(np.arange(n_steps), (n_series, n_steps))
    by_key = np.take_along_axis(cand, np.argsort(np.take_along_axis(keys, cand, axis=1), axis=1), axis=1)
    # The n_obs[i] candidates with the smallest keys form a uniform random subset; the others are
    # replaced by a sentinel that sorts last, so each row starts with its chosen indices in order.
    chosen = np.arange(max_obs)[None, :] < n_obs[:, None]
    idx = np.sort(np.where(chosen, by_key, n_steps), axis=1)
    series = np.repeat(np.arange(n_series), n_obs)
    step = idx[chosen] + 1  # grid index in 1..n_steps
    return series, step


def _observe(
    rng: np.random.Generator,
    paths: np.ndarray,
    grid: np.ndarray,
    series: np.ndarray,
    step: np.ndarray,
    obs_noise: float,
    p_both: float,
    p_first: float,
) -> pd.DataFrame:
    """Read the paths at the observed steps, add noise and drop the unobserved dimension."""
    values = paths[step, series]  # (rows, 2)
    if obs_noise > 0:
        values = values + obs_noise * rng.standard_normal(values.shape)
    u = rng.random(len(step))
    observe_1 = u < p_both + p_first
    observe_2 = (u < p_both) | (u >= p_both + p_first)
    return pd.DataFrame(
        {
            "unique_id": series,
            "ds": grid[step],
            "y1": np.where(observe_1, values[:, 0], np.nan),
            "y2": np.where(observe_2, values[:, 1], np.nan),
        }
    )


# ---------------------------------------------------------------------- pbcseq
PBCSEQ_LABS: tuple[str, ...] = ("bili", "chol", "albumin", "alk.phos", "ast", "platelet", "protime")
"""The seven laboratory values of ``pbcseq`` (the value columns of :func:`load_pbcseq`)."""

PBCSEQ_LOG_LABS: tuple[str, ...] = ("bili", "chol", "alk.phos", "ast", "protime")
"""Labs log-transformed by ``load_pbcseq(log_transform=True)``: their sample skewness is 2.8 to 6.2
and drops to between -0.1 and 2.8 on the log scale. Albumin (skewness -0.09) and platelet (0.87,
-0.64 after the log) are left as they are."""

PBCSEQ_STATIC: tuple[str, ...] = ("age", "sex", "trt")
"""Static covariates: age at entry (years), sex (1 = female, 0 = male), trt (1 = D-penicillamine,
0 = placebo)."""

_DAYS_PER_YEAR = 365.25


def data_path(name: str) -> Path:
    """Locate a shipped data file: ``ctflow/_data/`` (installed wheel), then ``<repo>/data/``.

    Raises FileNotFoundError naming every path tried.
    """
    candidates: list[Path] = []
    try:
        packaged = importlib.resources.files("ctflow").joinpath("_data", name)
        candidates.append(Path(str(packaged)))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - ctflow is always importable here
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "data" / name)
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"data file {name!r} not found; tried: {tried}")


def load_pbcseq(log_transform: bool = False, time_unit: str = "days", static: bool = False) -> pd.DataFrame:
    """The Mayo Clinic PBC sequential laboratory data: 312 patients, 1,945 visits, 7 labs.

    Args:
        log_transform: take the natural log of the right-skewed labs :data:`PBCSEQ_LOG_LABS`
            (bili, chol, alk.phos, ast, protime; all strictly positive).
        time_unit: ``"days"`` (day of visit since registration) or ``"years"`` (days / 365.25).
        static: add the per-patient covariates :data:`PBCSEQ_STATIC` (age, sex as 1 = female /
            0 = male, trt as 1 = D-penicillamine / 0 = placebo), for ``static_cols``.

    Returns a long frame ``unique_id`` (patient id, int), ``ds`` (float), the seven labs (NaN
    where not measured; chol is missing at 42% of visits), then the static columns if asked,
    sorted by patient and day. Extra visits (often prompted by a worsening condition) did not
    always include all labs, so missingness may be informative.
    """
    choice(time_unit, "time_unit", ("days", "years"))
    raw = pd.read_csv(data_path("pbcseq.csv"))
    out = pd.DataFrame(
        {
            "unique_id": raw["id"].to_numpy(dtype=np.int64),
            "ds": raw["day"].to_numpy(dtype=np.float64),
        }
    )
    if time_unit == "years":
        out["ds"] = out["ds"] / _DAYS_PER_YEAR
    for lab in PBCSEQ_LABS:
        col = raw[lab].to_numpy(dtype=np.float64)
        out[lab] = np.log(col) if log_transform and lab in PBCSEQ_LOG_LABS else col
    if static:
        out["age"] = raw["age"].to_numpy(dtype=np.float64)
        sex = raw["sex"].astype(str).str.lower()
        if not sex.isin(["f", "m"]).all():
            raise ValueError(f"unexpected sex codes in pbcseq.csv: {sorted(set(sex) - {'f', 'm'})}")
        out["sex"] = (sex == "f").to_numpy(dtype=np.float64)
        out["trt"] = raw["trt"].to_numpy(dtype=np.float64)
    return out.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)
