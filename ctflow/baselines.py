"""Naive probabilistic baselines: a level from the past values plus empirical residuals per horizon."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from .checks import positive_int, real_number
from .data.prepare import PreparedSeries, check_frame, prepare_series, query_grid
from .data.timecodec import TimeCodec
from .forecast import Forecast

__all__ = ["LastValueBaseline", "SampledForecasts", "SmoothedLevelBaseline"]


class SampledForecasts:
    """The prediction methods of :class:`ctflow.Forecaster`, from the draws of ``forecast``:
    quantiles and intervals are sample quantiles of ``n_samples`` draws (default 500)."""

    def forecast(self, df: pd.DataFrame, times: Any = None, horizon: Any = None, **kwargs: Any) -> Forecast:
        raise NotImplementedError

    def predict(self, df: pd.DataFrame, times: Any = None, horizon: Any = None) -> pd.DataFrame:
        """Point forecasts (means): id, time and one column per variable, one row per query."""
        return self.forecast(df, times, horizon).mean

    def predict_quantiles(
        self,
        df: pd.DataFrame,
        times: Any = None,
        horizon: Any = None,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        n_samples: int | None = None,
    ) -> pd.DataFrame:
        """Marginal quantiles: id, time and ``{variable}_q{100 q}`` columns."""
        return self.forecast(df, times, horizon, n_samples=n_samples).quantile(quantiles)

    def predict_table(
        self,
        df: pd.DataFrame,
        times: Any = None,
        horizon: Any = None,
        quantiles: Sequence[float] = (0.025, 0.1, 0.5, 0.9, 0.975),
        n_samples: int | None = None,
    ) -> pd.DataFrame:
        """Long frame: id, time, variable, mean and one column ``q{100 q}`` per level."""
        return self.forecast(df, times, horizon, n_samples=n_samples).to_frame(quantiles)

    def predict_interval(
        self,
        df: pd.DataFrame,
        times: Any = None,
        horizon: Any = None,
        coverage: Sequence[float] = (0.8, 0.95),
        n_samples: int | None = None,
    ) -> pd.DataFrame:
        """Central intervals: ``{variable}_lower_{pct}`` and ``{variable}_upper_{pct}`` columns."""
        return self.forecast(df, times, horizon, n_samples=n_samples).interval(coverage)

    def sample(
        self,
        df: pd.DataFrame,
        times: Any = None,
        horizon: Any = None,
        n_samples: int | None = None,
        paths: bool = False,
        seed: int | None = None,
    ) -> np.ndarray:
        """Draws ``(n_samples, n_queries, n_variables)`` in original units."""
        return self.forecast(df, times, horizon, n_samples=n_samples, paths=paths, seed=seed).samples


class LastValueBaseline(SampledForecasts, BaseEstimator):
    """Persistence forecast with an empirical error distribution that widens with the horizon.

    The forecast of variable ``d`` at time ``t`` is its last observed value ``y_d(s)`` in the
    context plus a residual drawn from the training residuals ``y_d(t') - y_d(s')`` of every pair
    of observations ``s' < t'`` of ``d`` within a training series whose gap ``t' - s'`` falls in
    the same horizon bin as ``t - s`` (``n_bins`` bins at quantiles of the training gaps). A
    variable never observed in a series' context is forecast by its training distribution.

    A scikit-learn estimator with the prediction API of :class:`ctflow.Forecaster` (``fit``,
    ``forecast``, ``predict``, ``predict_quantiles``, ``predict_table``, ``predict_interval``,
    ``sample``, ``score``) on the same long frames, so one table can compare them.

    >>> from ctflow.data import load_double_ou
    >>> df = load_double_ou(20, seed=0)
    >>> baseline = LastValueBaseline().fit(df)
    >>> list(baseline.predict(df, horizon=[0.5]).columns)
    ['unique_id', 'ds', 'y1', 'y2']
    """

    def __init__(self, n_bins: int = 10, max_pairs: int = 200_000, random_state: int | None = 0):
        self.n_bins, self.max_pairs, self.random_state = n_bins, max_pairs, random_state

    def fit(
        self,
        df: pd.DataFrame,
        id_col: str = "unique_id",
        time_col: str = "ds",
        value_cols: Sequence[str] | None = None,
        time_unit: str | None = None,
    ) -> LastValueBaseline:
        values = check_frame(df, id_col, time_col, value_cols)
        self.codec_ = TimeCodec.fit(df[time_col], df[id_col], time_unit, time_col)
        self.id_col_, self.time_col_, self.value_cols_ = id_col, time_col, values
        self._fit_level()
        series = prepare_series(df, id_col, time_col, values, self.codec_)
        rng = np.random.default_rng(self.random_state)
        times, vals, mask = series.raw.times.numpy(), series.raw.values.numpy(), series.raw.mask.numpy() > 0
        self.edges_: list[np.ndarray] = []
        self.residuals_: list[list[np.ndarray]] = []
        self.marginal_: list[np.ndarray] = []
        for d in range(len(values)):
            self.marginal_.append(vals[:, :, d][mask[:, :, d]])
            gaps, res = [], []
            for b in range(len(series)):
                obs = np.flatnonzero(mask[b, :, d])
                if len(obs) < 2:
                    continue
                t, y = times[b, obs], vals[b, obs, d]
                i, j = np.triu_indices(len(obs), k=1)
                gaps.append(t[j] - t[i])
                res.append(y[j] - self._levels(t, y, d)[i])
            if not gaps:
                self.edges_.append(np.array([np.inf]))
                self.residuals_.append([self.marginal_[-1] - self.marginal_[-1].mean()])
                continue
            gap, r = np.concatenate(gaps), np.concatenate(res)
            if len(gap) > self.max_pairs:
                keep = rng.choice(len(gap), self.max_pairs, replace=False)
                gap, r = gap[keep], r[keep]
            inner = np.unique(np.quantile(gap, np.linspace(0, 1, self.n_bins + 1)[1:-1]))
            bins = np.searchsorted(inner, gap, side="right")
            self.edges_.append(inner)
            self.residuals_.append([r[bins == k] if (bins == k).any() else r for k in range(len(inner) + 1)])
        return self

    def _fit_level(self) -> None:
        """Check the options of the level once the time codec is known (none here)."""

    def _levels(self, t: np.ndarray, y: np.ndarray, d: int) -> np.ndarray:
        """The level after each observation of one series' variable ``d``: the value itself."""
        return y

    def _last_values(self, context: PreparedSeries) -> tuple[np.ndarray, np.ndarray]:
        """Per series and variable: last observed value and its time (NaN when never observed)."""
        raw = context.raw
        mask = raw.mask.numpy() > 0
        n_rows = mask.shape[1]
        idx = np.where(mask, np.arange(n_rows)[None, :, None], -1).max(1)  # (B, D)
        rows = np.arange(len(raw))[:, None]
        safe = np.maximum(idx, 0)
        last = np.where(idx >= 0, raw.values.numpy()[rows, safe, np.arange(mask.shape[2])], np.nan)
        when = np.where(idx >= 0, raw.times.numpy()[rows, safe], np.nan)
        return last, when

    def _check_fitted(self) -> None:
        if not hasattr(self, "codec_"):
            raise ValueError(f"this {type(self).__name__} is not fitted yet: call fit first")

    def score(self, df: pd.DataFrame, y: Any = None) -> float:
        """Mean log-likelihood per observed value of one-step-ahead predictions (higher is better),
        as :meth:`ctflow.Forecaster.score`: each value is scored by a Gaussian at the previous
        value of its variable with the standard deviation of the training residuals of the same
        horizon bin, or by the variable's training Gaussian for its first observation."""
        self._check_fitted()
        check_frame(df, self.id_col_, self.time_col_, self.value_cols_)
        series = prepare_series(df, self.id_col_, self.time_col_, self.value_cols_, self.codec_)
        times, vals, mask = series.raw.times.numpy(), series.raw.values.numpy(), series.raw.mask.numpy() > 0
        total, count = 0.0, 0
        for d in range(len(self.value_cols_)):
            sd = np.array([max(r.std(), 1e-8) for r in self.residuals_[d]])
            m_mean, m_sd = self.marginal_[d].mean(), max(self.marginal_[d].std(), 1e-8)
            for b in range(len(series)):
                obs = np.flatnonzero(mask[b, :, d])
                if not len(obs):
                    continue
                t, y = times[b, obs], vals[b, obs, d]
                mu = np.concatenate(([m_mean], self._levels(t, y, d)[:-1]))
                bins = np.searchsorted(self.edges_[d], np.diff(t), side="right")
                s = np.concatenate(([m_sd], sd[bins]))
                total += float((-0.5 * ((y - mu) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)).sum())
                count += len(obs)
        return total / count

    def forecast(
        self,
        df: pd.DataFrame,
        times: pd.DataFrame | None = None,
        horizon: Sequence[Any] | None = None,
        n_samples: int | None = None,
        paths: bool = False,
        seed: int | None = None,
    ) -> Forecast:
        """Samples at the queries (same arguments as ``Forecaster.forecast``): independent draws
        per query (``paths=True`` is refused: the baseline has no joint paths). ``n_samples``
        defaults to 500; ``seed`` to ``random_state``."""
        self._check_fitted()
        if paths:
            raise ValueError(f"{type(self).__name__} draws each query independently: use paths=False")
        n_samples = positive_int(500 if n_samples is None else n_samples, "n_samples")
        check_frame(df, self.id_col_, self.time_col_, self.value_cols_)
        context = prepare_series(df, self.id_col_, self.time_col_, self.value_cols_, self.codec_)
        grid = query_grid(context, self.codec_, self.id_col_, self.time_col_, times=times, horizon=horizon)
        last, when = self._last_values(context)
        rng = np.random.default_rng(self.random_state if seed is None else seed)
        q_times = grid.times[grid.series, grid.slot]
        samples = np.empty((n_samples, grid.n_queries, len(self.value_cols_)))
        for d in range(len(self.value_cols_)):
            base = last[grid.series, d]
            gap = q_times - when[grid.series, d]
            bins = np.searchsorted(self.edges_[d], gap, side="right")
            for k in np.unique(bins[np.isfinite(base)]):
                sel = np.flatnonzero((bins == k) & np.isfinite(base))
                pool = self.residuals_[d][k]
                samples[:, sel, d] = base[sel] + rng.choice(pool, size=(n_samples, len(sel)))
            unseen = np.flatnonzero(~np.isfinite(base))
            if len(unseen):
                samples[:, unseen, d] = rng.choice(self.marginal_[d], size=(n_samples, len(unseen)))
        ids = pd.Series(context.ids[grid.series])
        queries = pd.DataFrame({self.id_col_: ids.to_numpy(), self.time_col_: self.codec_.decode(q_times)})
        return Forecast(
            queries,
            self.value_cols_,
            samples,
            history=context.history,
            id_col=self.id_col_,
            time_col=self.time_col_,
        )


class SmoothedLevelBaseline(LastValueBaseline):
    """Exponential smoothing in continuous time, shrunk to the training mean, with empirical residuals.

    The level of variable ``d`` after its observations ``y_1 .. y_n`` at times ``t_1 .. t_n`` is
    ``(sum_k w_k y_k + shrinkage * m_d) / (sum_k w_k + shrinkage)`` with weights
    ``w_k = exp(-(t_n - t_k) / time_scale)`` and ``m_d`` the training mean: an exponentially
    weighted mean for irregular times (Wright 1986, "Forecasting data published at irregular time
    intervals using an extension of Holt's method"), pulled towards the population mean when few
    recent observations support it. Forecasts add training residuals of the same horizon bin, as
    :class:`LastValueBaseline` (its limit ``time_scale -> 0``, ``shrinkage = 0``).

    Args:
        time_scale: decay time of the weights: a number in the time unit of the data (of the
            inferred or given ``time_unit`` for datetimes) or a timedelta.
        shrinkage: weight of the training mean, in observations.
    """

    def __init__(
        self,
        time_scale: float | pd.Timedelta = 1.0,
        shrinkage: float = 0.0,
        n_bins: int = 10,
        max_pairs: int = 200_000,
        random_state: int | None = 0,
    ):
        super().__init__(n_bins=n_bins, max_pairs=max_pairs, random_state=random_state)
        self.time_scale, self.shrinkage = time_scale, shrinkage

    def fit(self, df: pd.DataFrame, *args: Any, **kwargs: Any) -> SmoothedLevelBaseline:
        real_number(self.shrinkage, "shrinkage", positive=False)
        return super().fit(df, *args, **kwargs)

    def _fit_level(self) -> None:
        try:
            self.decay_time_ = float(self.codec_.offsets([self.time_scale])[0])
        except (TypeError, ValueError) as err:
            message = (
                str(err).replace("horizon offsets", "time_scale").replace("horizon offset", "time_scale")
            )
            raise type(err)(f"{message} (time_scale={self.time_scale!r})") from None

    def _smoothed(self, times: np.ndarray, values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Levels after each row of series ``(B, N)`` times and ``(B, N, D)`` values observed where
        ``mask``: the recursion over rows runs on every series and variable at once."""
        prior = np.array([m.mean() if len(m) else 0.0 for m in self.marginal_])
        weighted = np.zeros(values.shape[::2])
        weight = np.zeros_like(weighted)
        seen_at = np.zeros_like(weighted)
        out = np.empty(values.shape)
        for k in range(values.shape[1]):
            hit = mask[:, k]
            t = times[:, k, None]
            decay = np.exp(-np.where(hit, t - seen_at, 0.0) / self.decay_time_)
            weighted = np.where(hit, weighted * decay + np.where(hit, values[:, k], 0.0), weighted)
            weight = np.where(hit, weight * decay + 1.0, weight)
            seen_at = np.where(hit, t, seen_at)
            den = weight + self.shrinkage  # zero before a variable's first observation (no level)
            np.divide(weighted + self.shrinkage * prior, den, out=out[:, k], where=den > 0)
            out[:, k][den == 0] = np.nan
        return out

    def _levels(self, t: np.ndarray, y: np.ndarray, d: int) -> np.ndarray:
        values = np.zeros((1, len(y), len(self.marginal_)))
        values[0, :, d] = y
        mask = np.zeros(values.shape, dtype=bool)
        mask[0, :, d] = True
        return self._smoothed(t[None], values, mask)[0, :, d]

    def _last_values(self, context: PreparedSeries) -> tuple[np.ndarray, np.ndarray]:
        last, when = super()._last_values(context)
        raw = context.raw
        levels = self._smoothed(raw.times.numpy(), raw.values.numpy(), raw.mask.numpy() > 0)
        return np.where(np.isfinite(last), levels[:, -1], last), when
