"""``Forecaster``: probabilistic forecasting of irregular multivariate series, scikit-learn style."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import numbers
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from . import __version__
from .checkpoint import atomic_directory, rng_scope
from .checks import positive_int, probability
from .data.covariates import StaticEncoder
from .data.future import check_future_frame, merge_future_inputs
from .data.irregular import IrregularBatch, collate, holdout_last, show_label, split_series
from .data.prepare import (
    PreparedSeries,
    QueryGrid,
    Scaling,
    check_exog_columns,
    check_frame,
    prepare_series,
    query_grid,
)
from .data.support import Support
from .data.timecodec import TimeCodec
from .distributed import resolve_device
from .forecast import (
    Forecast,
    check_coverage,
    check_quantiles,
    interval_frame,
    interval_levels,
    long_table,
    quantile_frame,
)
from .models.base import QueryInputs
from .models.ensemble import DeepEnsemble
from .models.registry import build_model
from .models.settings import SETTINGS, ModelSettings, model_settings
from .training import evaluate_forecast_nll, evaluate_sequence_nll, fit_model
from .validation import validation_report

__all__ = ["Forecaster"]

LOG = logging.getLogger("ctflow")

FORMAT = "ctflow.Forecaster"
_UNBOUNDED = 10**9  # epochs when only max_steps bounds training
_TAIL = 0.2  # fraction of a validation series' last rows held out
FORMAT_VERSION = 2
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with torch's intra-op threads set to ``n`` (restored afterwards); no-op for None."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


VALIDATION_SCHEMES = ("last", "series")
MIN_WEIGHT_DECAY = 1e-4  # of weight_decay="auto": what large data sets get


def _with_static(series: PreparedSeries, encoder: StaticEncoder, static_df: pd.DataFrame) -> PreparedSeries:
    """``series`` with the encoded static covariates of its series."""
    features = encoder.transform(static_df, list(series.ids), "static_df")
    return dataclasses.replace(series, static=features, static_names=encoder.feature_names)


def _check_target_columns(df: pd.DataFrame, id_col: str, values: Sequence[str]) -> None:
    """A value column with no observed value is an error; columns constant within every series
    (descriptors of the series, not variables over time) are pointed to ``static_df``."""
    empty = [c for c in values if df[c].isna().all()]
    if empty:
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise ValueError(
            f"value column(s) {empty[:5]}{more} have no observed value (every row is NaN); drop them"
        )
    per_series = df.groupby(id_col, sort=False)[list(values)].nunique()
    counts = df.groupby(id_col, sort=False)[list(values)].count()
    constant = [c for c in values if (per_series[c] <= 1).all() and (counts[c] > 1).any()]
    if constant:
        LOG.warning(
            "value column(s) %s never change within a series: forecast as targets, they stay at their "
            "last value; if they describe the series (age, group, dose level), pass them as static_df",
            constant,
        )


def _complementary_rows(rows: pd.Index, train_rows: pd.Index) -> bool:
    """Whether two frames' row labels are disjoint integers that together fill one range, as the
    two sides of a row-wise split of one frame with a default index are."""
    if not (pd.api.types.is_integer_dtype(rows.dtype) and pd.api.types.is_integer_dtype(train_rows.dtype)):
        return False
    if len(rows.intersection(train_rows)):
        return False
    union = rows.append(train_rows)
    return bool(union.is_unique and union.max() - union.min() + 1 == len(union))


def _report_unobserved(series: PreparedSeries, variables: Sequence[str]) -> None:
    """Log the series of a context that have never observed some variable (their forecasts of it
    rest on what the model learned from other series)."""
    never = series.raw.mask.sum(1).numpy() == 0  # (B, D)
    if not never.any():
        return
    rows = np.flatnonzero(never.any(1))
    first = rows[0]
    missing = [variables[d] for d in np.flatnonzero(never[first])]
    LOG.warning(
        "%d of %d series have never observed some variable in the context (e.g. series %s: %s); "
        "their forecasts of it come from the other series alone",
        len(rows),
        len(series),
        show_label(series.ids[first]),
        missing,
    )


def _members(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The models of a deep ensemble, or ``[model]``."""
    return list(model.members) if isinstance(model, DeepEnsemble) else [model]


class Forecaster(BaseEstimator):
    """Probabilistic forecaster for irregularly sampled multivariate time series.

    Fits a continuous-time sequence model (default: GRU-ODE-Bayes, De Brouwer, Simm, Arany &
    Moreau 2019, "GRU-ODE-Bayes: Continuous modeling of sporadically-observed time series") to a
    long DataFrame: one row per (series, time), one column per variable, NaN where a variable was
    not measured. Forecasts condition on any context frame of the same format and give means,
    quantiles, central intervals, marginal samples or joint sample paths at arbitrary future
    times, in the original units.

    Args:
        model: the sequence model and its settings: a settings object of
            :mod:`ctflow.models.settings` (``GRUODEBayesSettings(hidden_size=64)``,
            ``LatentODESettings(...)``, ``LatentSDESettings(...)``) or a model name
            (``"gru_ode_bayes"``, ``"latent_ode"``, ``"latent_sde"``) for its defaults. Its
            parameters are nested sklearn parameters: ``set_params(model__hidden_size=64)``,
            ``GridSearchCV(..., {"model__emission": [...]})``. GRU-ODE-Bayes (the default) starts
            from what persistence knows: its emission models the change from each variable's
            last value, aware of the local slope.
        n_members: size of a deep ensemble (Lakshminarayanan, Pritzel & Blundell 2017, "Simple
            and Scalable Predictive Uncertainty Estimation using Deep Ensembles"): that many
            models of this configuration, each from its own random initialisation, trained side
            by side; forecasts are the equal-weight mixture of theirs. 1: a single model. Fit
            and forecast time grow in proportion.
        max_steps: optimizer steps of the fit, whatever the size of the data (cosine learning
            rate schedule over them); ``max_epochs`` (passes over the training series, None: no
            cap) stops earlier if it comes first and then validates once per pass.
        eval_every: steps between validations (when ``max_epochs`` is None).
        batch_size (series per step), lr, grad_clip: optimisation.
        weight_decay: L2 penalty of Adam, or ``"auto"``: one over the number of observed training
            values, at least 1e-4. The loss is a mean NLL per value, so this is a fixed Gaussian
            prior on the weights: it holds a model fitted to a hundred values close to its
            start (persistence, with the carried last values) and fades as the data grow.
        validation: ``"last"`` picks a fraction ``val_fraction`` of the training series, holds out
            the last fifth of the observations of those with at least 3 and scores the model's
            forecasts of them (meaningful with a handful of series; the model trains on all other
            rows); ``"series"`` holds out a fraction ``val_fraction`` of whole series and scores
            their one-step-ahead NLL.
        refit: after ``validation="last"`` has chosen the number of steps, train anew on every
            observation for that many steps (the held-out rows are each series' newest). The
            ``validation_report_`` describes the model chosen on the held-out rows.
            ``"ensemble"``: keep that chosen model too and forecast the equal-weight mixture of
            both (a two-member deep ensemble for the training cost of one refit).
        val_fraction: the held-out fraction (0: no validation, train on everything).
        patience: validations without improvement of the held-out NLL before stopping (the best
            weights are kept).
        time_limit: wall-clock budget of ``fit`` in seconds (None: no limit).
        n_samples: default number of samples behind quantiles, intervals and forecasts.
        random_state: seed of initialisation, splitting, batching and sampling (CPU runs repeat).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``.
        verbose: show a progress bar with the running loss while fitting.
        support: where each variable lives: ``"real"`` (None, the default), ``"positive"``
            (concentrations, weights, counts), a ``(low, high)`` range (proportions), one for
            every variable or a dict from value columns to these (the others real). A bounded
            variable is modelled through a fixed bijection (log, scaled logit), so its samples,
            quantiles and intervals stay inside the support and its densities, NLL and scores
            are exact in the data's units (change of variables); its predictive mean is estimated
            from ``n_samples`` draws. ``fit`` logs a warning (logger ``"ctflow"``) about real
            variables with no negative value.
        n_threads: torch's intra-op threads while fitting (restored afterwards); None leaves
            torch's setting. One by default: these models run many small tensor operations, for
            which more threads cost more in synchronisation than they save (a Sitka fit took
            28 s on one thread and 78 s on two).

    >>> from ctflow import Forecaster
    >>> from ctflow.data import load_double_ou
    >>> df = load_double_ou(30, seed=0)  # columns unique_id, ds, y1, y2
    >>> model = Forecaster(max_steps=10, eval_every=5, random_state=0).fit(df)
    >>> model.predict_quantiles(df, horizon=[1.0], quantiles=[0.1, 0.9]).columns.tolist()
    ['unique_id', 'ds', 'y1_q10', 'y1_q90', 'y2_q10', 'y2_q90']
    """

    def __init__(
        self,
        model: str | ModelSettings = "gru_ode_bayes",
        n_members: int = 1,
        max_steps: int | None = 1000,
        max_epochs: int | None = None,
        eval_every: int = 50,
        batch_size: int = 32,
        lr: float = 3e-3,
        weight_decay: float | str = "auto",
        grad_clip: float | None = 5.0,
        validation: str = "last",
        refit: bool | str = True,
        val_fraction: float = 0.3,
        patience: int | None = 6,
        time_limit: float | None = None,
        n_samples: int = 500,
        random_state: int | None = None,
        device: str = "auto",
        verbose: bool = False,
        n_threads: int | None = 1,
        support: Any = None,
    ):
        self.model = model
        self.n_members = n_members
        self.max_steps = max_steps
        self.max_epochs = max_epochs
        self.eval_every = eval_every
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.validation = validation
        self.refit = refit
        self.val_fraction = val_fraction
        self.patience = patience
        self.time_limit = time_limit
        self.n_samples = n_samples
        self.random_state = random_state
        self.device = device
        self.verbose = verbose
        self.n_threads = n_threads
        self.support = support

    @property
    def time_unit_(self) -> str | None:
        """The unit the fitted model counts datetime or timedelta times in (None for numbers)."""
        check_is_fitted(self)
        return self.codec_.unit

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:
        text = super().__repr__(N_CHAR_MAX)
        if not hasattr(self, "model_"):
            return text
        unit = "" if self.codec_.kind == "numeric" else f", time unit {self.codec_.describe_unit()}"
        return f"{text}  # fitted: {self.n_series_} series, variables {list(self.value_cols_)}{unit}"

    # ------------------------------------------------------------------ configuration
    def _settings(self) -> ModelSettings:
        return model_settings(self.model)

    def _model_kwargs(
        self,
        encoder: StaticEncoder | None = None,
        exog: Sequence[str] = (),
        future_exog: Sequence[str] = (),
    ) -> dict[str, Any]:
        kwargs = self._settings().model_kwargs()
        if encoder is not None:
            kwargs["static_dim"] = encoder.n_features
        if exog:
            kwargs["n_inputs"] = len(exog)
            kwargs["future_inputs"] = [list(exog).index(c) for c in future_exog]
        return kwargs

    def set_params(self, **params: Any) -> Forecaster:
        """Set parameters, ``model__<name>`` included (sklearn's nested form). A model given by
        name is first replaced by its settings object, so ``model__hidden_size=64`` works on the
        default ``Forecaster()``."""
        nested = any(key.startswith("model__") for key in params)
        if nested and "model" not in params and isinstance(self.model, str):
            self.model = model_settings(self.model)
        return super().set_params(**params)

    def _check_fit_params(self) -> None:
        probability(self.val_fraction, "val_fraction")
        if self.max_epochs is None and self.max_steps is None:
            raise ValueError("set max_steps or max_epochs (both are None: training would never end)")
        for name in ("max_epochs", "max_steps"):
            if getattr(self, name) is not None:
                positive_int(getattr(self, name), name)
        positive_int(self.eval_every, "eval_every")
        positive_int(self.n_members, "n_members")
        if self.n_threads is not None:
            positive_int(self.n_threads, "n_threads")
        if not (isinstance(self.refit, bool) or self.refit == "ensemble"):
            raise ValueError(f"refit must be True, False or 'ensemble', got {self.refit!r}")
        wd = self.weight_decay
        if wd != "auto" and (
            isinstance(wd, bool) or not isinstance(wd, numbers.Real) or not (math.isfinite(wd) and wd >= 0)
        ):
            raise ValueError(f"weight_decay must be 'auto' or a finite number >= 0, got {wd!r}")
        if self.validation not in VALIDATION_SCHEMES:
            raise ValueError(f"validation must be one of {VALIDATION_SCHEMES}, got {self.validation!r}")
        positive_int(self.batch_size, "batch_size")
        positive_int(self.n_samples, "n_samples")
        if self.patience is not None:
            positive_int(self.patience, "patience")

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        df: pd.DataFrame,
        id_col: str = "unique_id",
        time_col: str = "ds",
        value_cols: Sequence[str] | None = None,
        time_unit: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
        static_df: pd.DataFrame | None = None,
        exog_cols: Sequence[str] | None = None,
        future_exog_cols: Sequence[str] | None = None,
    ) -> Forecaster:
        """Fit on a long frame: ``id_col``, ``time_col`` (numbers, datetimes or timedeltas) and
        the value columns (default: every other column; NaN where not measured).

        Datetime times are counted in ``time_unit`` (``"D"``, ``"h"``, ``"min"``, ``"s"``, ...;
        default inferred from the median gap between observations) from the earliest time.
        Each variable is standardised with the training statistics (undone in every output).
        Early stopping follows ``validation`` (see the class docstring); ``validation_report_``
        then holds the held-out scores of the model and of persistence (None without validation).

        ``checkpoint``: a file that training state is written to atomically after every epoch;
        with ``resume=True`` an interrupted fit continues from it (exactly, on CPU, without a
        ``time_limit``). Under ``torchrun --nproc_per_node=N`` the fit is data-parallel
        (``batch_size`` series per process and step) and every process ends with the same model.

        ``static_df``: static covariates, one row per series (``id_col`` and numeric, categorical,
        text or boolean columns; see :class:`ctflow.data.covariates.StaticEncoder`), encoded with
        the training series' statistics and categories, which the model remembers. GRU-ODE-Bayes
        starts each series from a state set by them and conditions its dynamics and emission on
        them; the latent models condition their posterior, prior and emission on them. Every
        prediction method then takes the ``static_df`` of the series it forecasts.

        ``exog_cols``: columns of ``df`` that are inputs (doses, treatments, interventions), not
        targets: given at their rows' times (a row may hold only inputs; NaN where not given),
        conditioned on, never forecast or scored. The models update their state at each input
        after scoring that row's targets, so an input acts on what follows it (the latent
        models' encoders also read them).
        ``future_exog_cols``: those of them known in advance (a dosing schedule); every prediction
        method then takes their planned values after each context's end as ``future_df``. None:
        every input is known-future; ``[]``: every input is past-only (forecasts use the inputs
        in the context alone).
        """
        self._check_fit_params()
        exog = dict(exog_cols=exog_cols, future_exog_cols=future_exog_cols)
        with _torch_threads(self.n_threads):
            return self._fit(
                df, id_col, time_col, value_cols, time_unit, checkpoint, resume, static_df, **exog
            )

    def _fit(
        self,
        df: pd.DataFrame,
        id_col: str,
        time_col: str,
        value_cols: Sequence[str] | None,
        time_unit: str | None,
        checkpoint: str | os.PathLike | None,
        resume: bool,
        static_df: pd.DataFrame | None,
        exog_cols: Sequence[str] | None = None,
        future_exog_cols: Sequence[str] | None = None,
    ) -> Forecaster:
        exog, future_exog = check_exog_columns(df, id_col, time_col, value_cols, exog_cols, future_exog_cols)
        if value_cols is None and exog:
            value_cols = [c for c in df.columns if c not in (id_col, time_col, *exog)]
        values = check_frame(df, id_col, time_col, value_cols)
        support = Support.fit(self.support, values)
        observed = df[values].to_numpy(dtype=np.float64, na_value=np.nan)
        unbounded = support.unbounded_nonnegative(observed, values)
        if unbounded:
            LOG.warning(
                "value column(s) %s hold no negative value; declare support={%r: 'positive'} (or a "
                "(low, high) range) to keep their forecasts in range",
                unbounded,
                unbounded[0],
            )
        df = support.transform_frame(df, values)
        codec = TimeCodec.fit(df[time_col], df[id_col], time_unit, time_col)
        if codec.kind != "numeric":
            how = "given" if time_unit is not None else "inferred from the typical gap between observations"
            LOG.info("time column %r counted in %s, %s", time_col, codec.describe_unit(), how)
        series = prepare_series(df, id_col, time_col, values, codec, input_cols=exog)
        _check_target_columns(df, id_col, values)
        encoder = None
        if static_df is not None:
            encoder = StaticEncoder.fit(static_df, id_col, ids=series.ids)
            series = _with_static(series, encoder, static_df)
        scaling = Scaling.fit(series.raw)
        device = resolve_device(self.device)
        kwargs = self._model_kwargs(encoder, exog, future_exog)
        batch = series.model_batch(scaling)
        seed = self.random_state
        with rng_scope(seed, device):
            model = self._build(len(values), kwargs).to(device)
            train, val, held_out = self._validation_split(batch, seed)
            validate = None
            if held_out is not None:
                context, target = held_out

                def validate() -> float:
                    return evaluate_forecast_nll(model, context, target)

            options = self._fit_options(train, seed)
            refit = bool(self.refit) and held_out is not None and checkpoint is None
            start = time.perf_counter()
            if refit and self.time_limit is not None:  # half the budget to choose, half to refit
                options["time_limit"] = self.time_limit / 2
            history = fit_model(
                model,
                train,
                val,
                max_steps=self.max_steps,
                validate=validate,
                patience=self.patience if (val is not None or validate is not None) else None,
                checkpoint=checkpoint,
                resume=resume,
                **options,
            )
            report = None
            if held_out is not None:
                report = validation_report(model, train, *held_out, seed=seed)
            if refit:
                model, history = self._refit(model, history, batch, kwargs, options, start)
        model.eval()
        self.model_ = model
        self.model_kwargs_ = kwargs
        self.static_encoder_ = encoder
        self.exog_cols_, self.future_exog_cols_ = exog, future_exog
        self.support_ = support
        self.n_models_ = len(_members(model))
        self.codec_ = codec
        self.scaling_ = scaling
        self.id_col_, self.time_col_, self.value_cols_ = id_col, time_col, values
        self.n_variables_ = len(values)
        self.device_ = device
        self.history_ = history
        self.validation_report_ = report
        self.n_series_ = len(batch)
        self.train_rows_ = df.index.copy()
        self.train_spans_ = pd.DataFrame(
            {"last": series.last_time, "rows": series.raw.lengths.numpy()},
            index=pd.Index(series.ids),
        )
        return self

    def _fit_options(self, train: IrregularBatch, seed: int | None) -> dict[str, Any]:
        """The arguments of :func:`fit_model` that the estimator's parameters set."""
        return {
            "epochs": int(self.max_epochs) if self.max_epochs is not None else _UNBOUNDED,
            "eval_every": int(self.eval_every) if self.max_epochs is None else None,
            "batch_size": int(self.batch_size),
            "lr": self.lr,
            "weight_decay": self._weight_decay(train),
            "grad_clip": self.grad_clip,
            "time_limit": self.time_limit,
            "seed": seed,
            "verbose": self.verbose,
            "desc": f"fit {self._settings().name}",
        }

    def _refit(
        self,
        chosen: torch.nn.Module,
        history: dict[str, Any],
        batch: IrregularBatch,
        kwargs: dict[str, Any],
        options: dict[str, Any],
        start: float,
    ) -> tuple[torch.nn.Module, dict[str, Any]]:
        """Train a new model on every observation for the steps validation chose (the held-out
        last rows are the newest stretch of each series, which forecasts need most); with
        ``refit="ensemble"`` keep the chosen model beside it."""
        steps = history["n_steps"] if history["best_epoch"] is None else self._best_steps(history)
        if self.time_limit is not None:
            options["time_limit"] = max(1.0, self.time_limit - (time.perf_counter() - start))
        device = next(chosen.parameters()).device
        model = self._build(batch.n_variables, kwargs).to(device)
        options["weight_decay"] = self._weight_decay(batch)
        refitted = fit_model(model, batch, None, max_steps=max(1, steps), **options)
        refitted["selection"] = history
        if self.refit == "ensemble":
            model = DeepEnsemble([*_members(chosen), *_members(model)])
        return model, refitted

    def _weight_decay(self, train: IrregularBatch) -> float:
        if self.weight_decay == "auto":
            return max(MIN_WEIGHT_DECAY, 1.0 / max(1.0, float(train.mask.sum())))
        return self.weight_decay

    def _build(self, n_variables: int, kwargs: dict[str, Any], count: int | None = None) -> torch.nn.Module:
        """The sequence model, or a deep ensemble of ``count`` (default ``n_members``) of them."""
        members = positive_int(self.n_members if count is None else count, "n_members")
        name = self._settings().name
        if members == 1:
            return build_model(name, n_variables, **kwargs)
        return DeepEnsemble([build_model(name, n_variables, **kwargs) for _ in range(members)])

    def _best_steps(self, history: dict[str, Any]) -> int:
        """Optimizer steps up to the best validation of ``history``."""
        if self.max_epochs is None:
            return (history["best_epoch"] + 1) * int(self.eval_every)
        per_epoch = history["n_steps"] / max(1, history["epochs"])
        return round((history["best_epoch"] + 1) * per_epoch)

    def _validation_split(
        self, batch: IrregularBatch, seed: int | None
    ) -> tuple[IrregularBatch, IrregularBatch | None, tuple[IrregularBatch, IrregularBatch] | None]:
        """``(train, val series, (context, target))`` by the ``validation`` scheme; the parts
        that do not apply are None (no validation when there is too little data)."""
        fraction = float(self.val_fraction)
        if fraction == 0:
            return batch, None, None
        if self.validation == "series":
            if len(batch) < 4:
                return batch, None, None
            train, val = split_series(batch, fraction, seed=seed)
            return train, val, None
        # The last rows of a random part of the series: the other series keep every row, so the
        # model still sees the late stretch of time of panels observed at common times.
        n_val = min(len(batch), max(1, round(fraction * len(batch))))
        chosen = np.zeros(len(batch), dtype=bool)
        chosen[np.random.default_rng(seed).choice(len(batch), n_val, replace=False)] = True
        context, target, has_target = holdout_last(batch.select(np.flatnonzero(chosen), trim=True), _TAIL)
        if not bool(has_target.any()):
            return batch, None, None
        keep = has_target.numpy()
        train = (
            collate([batch.select(np.flatnonzero(~chosen), trim=True), context])
            if (~chosen).any()
            else context
        )
        return train, None, (context.select(keep, trim=True), target.select(keep, trim=True))

    # ------------------------------------------------------------------ shared prediction machinery
    def _context(
        self, df: pd.DataFrame, name: str = "df", static_df: pd.DataFrame | None = None
    ) -> PreparedSeries:
        check_is_fitted(self)
        check_frame(df, self.id_col_, self.time_col_, [*self.value_cols_, *self.exog_cols_], name=name)
        df = self.support_.transform_frame(df, self.value_cols_, name)
        series = prepare_series(
            df,
            self.id_col_,
            self.time_col_,
            self.value_cols_,
            self.codec_,
            name=name,
            input_cols=self.exog_cols_,
        )
        _report_unobserved(series, self.value_cols_)
        encoder = self.static_encoder_
        if encoder is None:
            if static_df is not None:
                raise ValueError("static_df was given, but this model was fitted without static covariates")
            return series
        if static_df is None:
            raise ValueError(
                f"this model was fitted with static covariates {encoder.columns}: pass static_df with a "
                f"row per series of {name}"
            )
        return _with_static(series, encoder, static_df)

    def _queries(
        self, context: PreparedSeries, times: pd.DataFrame | None, horizon: Any, future_df: Any = None
    ) -> QueryGrid:
        """The query grid, with the known-future inputs of ``future_df`` merged in."""
        future = self.future_exog_cols_
        if future_df is None and future:
            raise ValueError(
                f"this model was fitted with the known-future inputs {future}: pass future_df with "
                f"columns {self.id_col_!r}, {self.time_col_!r} and {future} (their planned values after "
                "each series' context; an empty frame with those columns if none are planned)"
            )
        if future_df is not None and not future:
            past = f" (its inputs {self.exog_cols_} are past-only)" if self.exog_cols_ else ""
            raise ValueError(
                f"future_df was given, but this model was fitted without known-future inputs{past}"
            )
        if horizon is not None and self.codec_.kind != "numeric" and not isinstance(horizon, str):
            numbers_given = [h for h in horizon if isinstance(h, numbers.Real) and not isinstance(h, bool)]
            if numbers_given:
                LOG.info(
                    "horizon %s counted in the model's time unit %s",
                    numbers_given,
                    self.codec_.describe_unit(),
                )
        grid = query_grid(context, self.codec_, self.id_col_, self.time_col_, times=times, horizon=horizon)
        if not self.exog_cols_:
            return grid
        if future_df is None:  # past-only inputs: no cell carries any
            shape = (*grid.times.shape, len(self.exog_cols_))
            return dataclasses.replace(grid, inputs=np.zeros(shape), input_mask=np.zeros(shape))
        rows = check_future_frame(
            future_df, context, self.codec_, self.id_col_, self.time_col_, self.exog_cols_, future
        )
        return merge_future_inputs(grid, rows, len(self.exog_cols_))

    def _grid_inputs(self, grid: QueryGrid, rows: np.ndarray, like: torch.Tensor) -> QueryInputs | None:
        """The inputs of the grid rows ``rows`` in model units (None for a model without inputs)."""
        if grid.inputs is None:
            return None
        values = grid.inputs[rows] / self.scaling_.input_scale

        def tensor(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(x, dtype=like.dtype).to(like.device)

        return QueryInputs(tensor(values), tensor(grid.input_mask[rows]), tensor(grid.is_query[rows]))

    def _query_frame(self, context: PreparedSeries, grid: QueryGrid) -> pd.DataFrame:
        ids = pd.Series(context.ids[grid.series])
        if context.raw.id_dtype is not None:
            with contextlib.suppress(TypeError, ValueError):
                ids = ids.astype(context.raw.id_dtype)
        times = self.codec_.decode(grid.times[grid.series, grid.slot])
        return pd.DataFrame({self.id_col_: ids.to_numpy(), self.time_col_: times.to_numpy()})

    def _chunks(self, context: PreparedSeries, grid: QueryGrid, per_query: int):
        """Filter the queried series chunk by chunk (about ``2e6 / per_query`` query slots each);
        yields ``(state, query times, query inputs, local series index, output rows)`` per chunk."""
        model, scaling = self.model_, self.scaling_
        device = next(model.parameters()).device
        queried = np.unique(grid.series)
        position = np.full(len(context), -1)
        position[queried] = np.arange(len(queried))
        # Models that forecast from particles hold that many states per series.
        particles = model.n_particles
        cap = max(16, 4096 // max(1, particles // 4))
        chunk = max(1, min(cap, 2_000_000 // max(1, per_query * grid.times.shape[1])))
        batch = context.model_batch(scaling)
        # Output rows grouped by the chunk of series they belong to (one sort, not a scan per chunk).
        chunk_of = position[grid.series] // chunk
        by_chunk = np.argsort(chunk_of, kind="stable")
        bounds = np.searchsorted(chunk_of[by_chunk], np.arange(0, len(queried) // chunk + 2))
        for c, start in enumerate(range(0, len(queried), chunk)):
            rows = queried[start : start + chunk]
            state = model.filter(batch.select(rows, trim=True).to(device))
            qt = torch.as_tensor(context.model_times(grid.times[rows], scaling, rows), dtype=torch.float32)
            sel = by_chunk[bounds[c] : bounds[c + 1]]
            qt = qt.to(device)
            yield state, qt, self._grid_inputs(grid, rows, qt), position[grid.series[sel]] - start, sel

    def _check_finite(
        self, context: PreparedSeries, grid: QueryGrid, values: np.ndarray, means: np.ndarray | None
    ) -> None:
        """``values (k, Q, D)`` and ``means (Q, D)`` must be finite; else name the series."""
        bad = ~np.isfinite(values).all((0, 2))
        if means is not None:
            bad |= ~np.isfinite(means).all(1)
        if bad.any():
            series = pd.unique(context.ids[grid.series[bad]]).tolist()
            raise ValueError(
                f"the forecasts of series {series[:5]} are not finite: their context lies too far "
                "outside the training data, or the model's weights diverged"
            )

    def _simulate(
        self, context: PreparedSeries, grid: QueryGrid, n_samples: int, paths: bool, want_mean: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Samples ``(n, Q, D)`` (none for ``n = 0``) and means ``(Q, D)`` in original units, series
        chunk by chunk; marginal draws and means come from one predictive per chunk."""
        model = self.model_
        out = np.empty((n_samples, grid.n_queries, self.n_variables_))
        means = np.empty((grid.n_queries, self.n_variables_)) if want_mean else None
        with torch.no_grad():
            per_query = max(1, n_samples) * self.n_variables_
            for state, qt, inputs, local, sel in self._chunks(context, grid, per_query):
                predictive = None
                if n_samples:
                    if paths:
                        draws = model.sample_paths(state, qt, n_samples, inputs)
                    else:
                        predictive = model.predict(state, qt, inputs)
                        draws = predictive.sample(n_samples)
                    out[:, sel] = self._to_data(draws[:, local, grid.slot[sel]])
                if means is not None:
                    predictive = predictive or model.predict(state, qt, inputs)
                    drawn = out[:, sel] if n_samples else None  # every path's marginal is the predictive's
                    means[sel] = self._data_means(predictive, local, grid.slot[sel], drawn)
        self._check_finite(context, grid, out, means)
        return out, means

    def _to_data(self, x: torch.Tensor) -> np.ndarray:
        """Model units to the data's: undo the scaling, then the support's bijection."""
        return self.support_.inverse(self.scaling_.values_from_model(x.double().cpu().numpy()))

    def _data_means(
        self, predictive: Any, local: np.ndarray, slots: np.ndarray, draws: np.ndarray | None = None
    ) -> np.ndarray:
        """Predictive means ``(Q, D)`` in the data's units: exact for real variables, the mean of
        draws for bounded ones (the bijection does not commute with the mean): ``draws (n, Q, D)``
        in the data's units when the caller has them, else ``n_samples`` new ones."""
        means = self.scaling_.values_from_model(predictive.mean()[local, slots].double().cpu().numpy())
        if self.support_.bounded:
            bounded = np.array([k != "real" for k in self.support_.kinds])
            if draws is None:
                draws = self._to_data(predictive.sample(self._n(None))[:, local, slots])
            means[:, bounded] = draws.mean(0)[:, bounded]
        return means

    def _marginal_quantiles(
        self,
        df: pd.DataFrame,
        times: pd.DataFrame | None,
        horizon: Sequence[Any] | None,
        levels: Sequence[float],
        n_samples: int | None,
        want_mean: bool = False,
        static_df: pd.DataFrame | None = None,
        future_df: pd.DataFrame | None = None,
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None]:
        """The query frame, quantiles ``(len(levels), Q, D)`` of each query's marginal predictive
        in original units (exact where the model's predictive has them, every built-in emission;
        else from ``n_samples`` draws) and, with ``want_mean``, the means ``(Q, D)``, all from one
        filter pass."""
        context = self._context(df, static_df=static_df)
        grid = self._queries(context, times, horizon, future_df)
        n = self._n(n_samples)
        model = self.model_
        out = np.empty((len(levels), grid.n_queries, self.n_variables_))
        means = np.empty((grid.n_queries, self.n_variables_)) if want_mean else None
        with torch.no_grad(), rng_scope(self._seed(None), self.device_):
            for state, qt, inputs, local, sel in self._chunks(context, grid, 8 * self.n_variables_):
                predictive = model.predict(state, qt, inputs)
                for i, level in enumerate(levels):
                    # the bijection is increasing: quantiles map through it exactly
                    out[i, sel] = self._to_data(predictive.quantile(level, n)[local, grid.slot[sel]])
                if means is not None:
                    means[sel] = self._data_means(predictive, local, grid.slot[sel])
        self._check_finite(context, grid, out, means)
        return self._query_frame(context, grid), out, means

    def _data_history(self, history: pd.DataFrame) -> pd.DataFrame:
        """The context's observations in the data's units (the support's bijection undone)."""
        if not self.support_.bounded:
            return history
        out = history.copy()
        values = self.support_.inverse(history[self.value_cols_].to_numpy(dtype=np.float64))
        for d, col in enumerate(self.value_cols_):
            out[col] = values[:, d]
        return out

    def _n(self, n_samples: int | None) -> int:
        return positive_int(self.n_samples if n_samples is None else n_samples, "n_samples")

    def _seed(self, seed: int | None) -> int | None:
        return self.random_state if seed is None else seed

    # ------------------------------------------------------------------ public predictions
    def forecast(
        self,
        df: pd.DataFrame,
        times: pd.DataFrame | None = None,
        horizon: Sequence[Any] | None = None,
        n_samples: int | None = None,
        paths: bool = False,
        seed: int | None = None,
        static_df: pd.DataFrame | None = None,
        future_df: pd.DataFrame | None = None,
    ) -> Forecast:
        """Forecast at ``times`` (a frame of id, time query rows) or at ``horizon`` offsets after
        each series' last observation in ``df`` (the context). ``paths=True`` draws joint sample
        paths over each series' queries (sample, update as if observed, continue); otherwise
        independent draws from each query's predictive marginal. ``static_df``: the static
        covariates of the series of ``df``, for a model fitted with them."""
        context = self._context(df, static_df=static_df)
        grid = self._queries(context, times, horizon, future_df)
        n = self._n(n_samples)
        queries = self._query_frame(context, grid)
        with rng_scope(self._seed(seed), self.device_):
            samples, means = self._simulate(context, grid, n, bool(paths), want_mean=True)
        return Forecast(
            queries,
            self.value_cols_,
            samples,
            means,
            history=self._data_history(context.history),
            id_col=self.id_col_,
            time_col=self.time_col_,
            paths=bool(paths),
        )

    def predict(
        self,
        df: pd.DataFrame,
        times: pd.DataFrame | None = None,
        horizon: Sequence[Any] | None = None,
        static_df: pd.DataFrame | None = None,
        future_df: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Point forecasts (predictive means): id, time and one column per variable, one row per query."""
        context = self._context(df, static_df=static_df)
        grid = self._queries(context, times, horizon, future_df)
        out = self._query_frame(context, grid)
        with rng_scope(self._seed(None), self.device_):
            _, means = self._simulate(context, grid, 0, False, want_mean=True)
        values = pd.DataFrame(means, columns=pd.Index(self.value_cols_, dtype=object))
        return pd.concat([out, values], axis=1)

    def predict_quantiles(
        self,
        df: pd.DataFrame,
        times: pd.DataFrame | None = None,
        horizon: Sequence[Any] | None = None,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        n_samples: int | None = None,
        static_df: pd.DataFrame | None = None,
        future_df: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Marginal quantiles: id, time and ``{variable}_q{100 q}`` columns. Exact (solved from
        the predictive CDF) for every built-in emission; ``n_samples`` draws serve only models
        whose predictive has no CDF."""
        levels = check_quantiles(quantiles)
        queries, values, _ = self._marginal_quantiles(
            df, times, horizon, levels, n_samples, static_df=static_df, future_df=future_df
        )
        return quantile_frame(queries, self.value_cols_, levels, values)

    def predict_table(
        self,
        df: pd.DataFrame,
        times: pd.DataFrame | None = None,
        horizon: Sequence[Any] | None = None,
        quantiles: Sequence[float] = (0.025, 0.1, 0.5, 0.9, 0.975),
        n_samples: int | None = None,
        static_df: pd.DataFrame | None = None,
        future_df: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Long frame: id, time, variable, predictive mean and one column ``q{100 q}`` per level
        (exact, as :meth:`predict_quantiles`); the layout of :meth:`Forecast.to_frame`."""
        levels = check_quantiles(quantiles)
        queries, values, means = self._marginal_quantiles(
            df, times, horizon, levels, n_samples, want_mean=True, static_df=static_df, future_df=future_df
        )
        return long_table(queries, self.value_cols_, means, levels, values)

    def predict_interval(
        self,
        df: pd.DataFrame,
        times: pd.DataFrame | None = None,
        horizon: Sequence[Any] | None = None,
        coverage: Sequence[float] = (0.8, 0.95),
        n_samples: int | None = None,
        static_df: pd.DataFrame | None = None,
        future_df: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Central intervals: id, time, ``{variable}_lower_{pct}`` and ``{variable}_upper_{pct}``
        (exact quantiles, as :meth:`predict_quantiles`)."""
        levels = check_coverage(coverage)
        queries, values, _ = self._marginal_quantiles(
            df, times, horizon, interval_levels(levels), n_samples, static_df=static_df, future_df=future_df
        )
        return interval_frame(queries, self.value_cols_, levels, values)

    def sample(
        self,
        df: pd.DataFrame,
        times: pd.DataFrame | None = None,
        horizon: Sequence[Any] | None = None,
        n_samples: int | None = None,
        paths: bool = True,
        seed: int | None = None,
        static_df: pd.DataFrame | None = None,
        future_df: pd.DataFrame | None = None,
    ) -> np.ndarray:
        """Samples ``(n_samples, n_queries, n_variables)`` in original units; joint sample paths
        over each series' queries by default (``paths=False``: independent marginal draws)."""
        return self.forecast(
            df, times, horizon, n_samples, paths=paths, seed=seed, static_df=static_df, future_df=future_df
        ).samples

    def predictive_log_prob(
        self,
        df: pd.DataFrame,
        targets: pd.DataFrame,
        static_df: pd.DataFrame | None = None,
        future_df: pd.DataFrame | None = None,
    ) -> np.ndarray:
        """Log-density, in the data's units, of each row of ``targets`` (id, time and the value
        columns; NaN where not observed) under the model's predictive at its time given the
        context ``df``, the other target rows unseen: one value per row, summed over the row's
        observed variables (0 for a row with none). Each target time must lie after its series'
        last observation in ``df``."""
        context = self._context(df, static_df=static_df)
        missing = [c for c in self.value_cols_ if c not in targets.columns]
        if missing:
            raise ValueError(
                f"targets has no column(s) {missing}; expected the value columns {self.value_cols_}"
            )
        grid = self._queries(context, targets, None, future_df)
        try:
            y = targets[self.value_cols_].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"targets: the value columns {self.value_cols_} must be numeric ({err})") from err
        observed = np.isfinite(y)
        support = self.support_
        outside = observed & ~((y > support.lows) & (y < support.highs))  # density 0 there
        safe = np.where(observed & ~outside, y, support.interior_point)
        log_jacobian = np.where(observed, support.log_jacobian(safe), 0.0).sum(1)
        z = support.forward(safe)
        scaled = np.where(observed, self.scaling_.values_to_model(z), 0.0)
        out = np.empty(grid.n_queries)
        with torch.no_grad(), rng_scope(self._seed(None), self.device_):
            for state, qt, inputs, local, sel in self._chunks(context, grid, self.n_variables_):
                shape = (*qt.shape, self.n_variables_)
                values, mask = np.zeros(shape), np.zeros(shape)
                values[local, grid.slot[sel]] = scaled[sel]
                mask[local, grid.slot[sel]] = observed[sel]
                lp = self.model_.predict(state, qt, inputs).log_prob(
                    torch.as_tensor(values, dtype=qt.dtype, device=qt.device),
                    torch.as_tensor(mask, dtype=qt.dtype, device=qt.device),
                )
                out[sel] = lp[local, grid.slot[sel]].double().cpu().numpy()
        # Model units are (z - mean) / scale with z the support's bijection of the value: a value's
        # density in the data's units is |dz/dy| / scale times it.
        out = out - observed @ np.log(self.scaling_.scale) + log_jacobian
        return np.where(outside.any(1), -np.inf, out)

    def score(self, df: pd.DataFrame, y: Any = None, static_df: pd.DataFrame | None = None) -> float:
        """Mean log-likelihood per observed value of one-step-ahead predictions, in the original
        units of the data (higher is better): each observation is scored by the model's predictive
        density given everything observed before it in its series."""
        context = self._context(df, static_df=static_df)
        self._refuse_split_series(context, df.index)
        batch = context.model_batch(self.scaling_)
        nll = evaluate_sequence_nll(self.model_, batch)
        counts = batch.mask.double().sum((0, 1)).numpy()
        log_jacobian = float((counts * np.log(self.scaling_.scale)).sum() / counts.sum())
        if self.support_.bounded:  # |dz/dy| of the support's bijection, per observed value
            observed = context.raw.mask.numpy() > 0
            y = self.support_.inverse(np.where(observed, context.raw.values.numpy(), 0.0))
            log_jacobian -= float(np.where(observed, self.support_.log_jacobian(y), 0.0).sum() / counts.sum())
        score = -nll - log_jacobian
        if not math.isfinite(score):
            raise ValueError(
                f"the log-likelihood of df is not finite ({score}): its values lie too far outside "
                "the training data"
            )
        return score

    def _refuse_split_series(self, context: PreparedSeries, rows: pd.Index) -> None:
        """A ValueError when ``context`` holds some, but not all, of a training series' rows up to
        its last training time, and its row labels and the training frame's are disjoint integers
        that together fill one range: the rows of one frame split between fitting and scoring (a
        row-wise ``KFold``). Scoring the training rows themselves, them with later rows, or another
        frame is allowed."""
        spans = getattr(self, "train_spans_", None)
        if spans is None or not _complementary_rows(rows, self.train_rows_):
            return
        shared = spans.reindex(context.ids)
        known = shared["rows"].notna().to_numpy()
        if not known.any():
            return
        times = context.raw.times.numpy()[known]
        valid = context.raw.pad_mask.numpy()[known]
        last = shared["last"].to_numpy()[known]
        inside = (valid & (times <= last[:, None])).sum(1)
        split = (inside > 0) & (inside != shared["rows"].to_numpy()[known])
        if split.any():
            sid = show_label(context.ids[np.flatnonzero(known)[np.flatnonzero(split)[0]]])
            raise ValueError(
                f"df holds some, but not all, of the rows the model was fitted on for series {sid} (up to "
                "its last training time): rows of one series were split between fitting and scoring (a "
                "row-wise KFold). "
                "Split by series with ctflow.SeriesSplit (cv=SeriesSplit(5)), or backtest in time with "
                "ctflow.cross_validation"
            )

    # ------------------------------------------------------------------ persistence
    def _config(self) -> dict[str, Any]:
        params = self.get_params(deep=False)
        settings = self._settings()
        params["model"] = {"name": settings.name, "params": settings.get_params()}
        params["device"] = "auto" if not isinstance(params["device"], str) else params["device"]
        try:
            json.dumps(params)
        except TypeError as err:
            raise TypeError(f"every parameter must be JSON-serialisable to save the model: {err}") from err
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "ctflow_version": __version__,
            "params": params,
            "fitted": {
                "model_kwargs": self.model_kwargs_,
                "static_encoder": None if self.static_encoder_ is None else self.static_encoder_.to_dict(),
                "exog_cols": list(self.exog_cols_),
                "support": self.support_.to_dict(),
                "future_exog_cols": list(self.future_exog_cols_),
                "n_models": self.n_models_,
                "id_col": self.id_col_,
                "time_col": self.time_col_,
                "value_cols": list(self.value_cols_),
                "time_codec": self.codec_.to_dict(),
                "scaling": self.scaling_.to_dict(),
                "n_series": self.n_series_,
                "validation_report": self.validation_report_,
            },
        }

    def save(self, path: str | os.PathLike, parents: bool = False) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into the directory ``path`` (whose
        parent folder must exist, unless ``parents``).

        The files are written to a temporary directory that then replaces ``path`` (an existing
        saved model or empty directory) with :func:`ctflow.checkpoint.atomic_directory`, so an
        interrupted save never leaves half a model.
        """
        from safetensors.torch import save_file

        check_is_fitted(self)
        config = self._config()
        target = Path(path)
        if target.exists():
            if not target.is_dir():
                raise ValueError(f"{target} exists and is not a directory")
            extra = {p.name for p in target.iterdir()} - {CONFIG_FILE, WEIGHTS_FILE}
            if extra:
                raise ValueError(
                    f"{target} holds other files ({sorted(extra)[:3]}); refusing to overwrite it"
                )
        state = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}

        def write(folder: Path) -> None:
            save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
            (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))

        return atomic_directory(target, write, parents)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> Forecaster:
        """Load a model written by :meth:`save` (no code is executed from the files)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        source = Path(path)
        if not source.is_dir():
            raise ValueError(f"{source} is not a saved model directory")
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (source / name).is_file():
                raise ValueError(f"{source} is missing {name}; it is not a complete saved model")
        try:
            config = json.loads((source / CONFIG_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{source / CONFIG_FILE} is truncated or not valid JSON: {err}") from err
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ValueError(f"{source / CONFIG_FILE} is not a ctflow Forecaster configuration")
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{source} was saved in format version {config.get('format_version')!r} (ctflow "
                f"{config.get('ctflow_version')}); this ctflow ({__version__}) reads version {FORMAT_VERSION}"
            )
        saved_major = str(config.get("ctflow_version", "")).split(".")[:2]
        if saved_major != __version__.split(".")[:2]:
            raise ValueError(
                f"{source} was saved by ctflow {config.get('ctflow_version')!r}, incompatible with "
                f"ctflow {__version__}"
            )
        try:
            params, fitted = dict(config["params"]), config["fitted"]
            if device is not None:
                params["device"] = device
            saved_model = params["model"]
            params["model"] = SETTINGS[saved_model["name"]](**saved_model["params"])
            est = cls(**params)
            codec = TimeCodec.from_dict(fitted["time_codec"])
            scaling = Scaling.from_dict(fitted["scaling"])
            values = [str(v) for v in fitted["value_cols"]]
            if len(values) != len(scaling.mean):
                raise ValueError("value_cols and scaling disagree in length")
            kwargs = dict(fitted["model_kwargs"])
            static = fitted.get("static_encoder")
            encoder = None if static is None else StaticEncoder.from_dict(static)
            exog = [str(c) for c in fitted.get("exog_cols", [])]
            future_exog = [str(c) for c in fitted.get("future_exog_cols", [])]
            if len(exog) != len(scaling.input_scale if scaling.input_scale is not None else []):
                raise ValueError("exog_cols and the input scaling disagree in length")
            if not set(future_exog) <= set(exog):
                raise ValueError("future_exog_cols are not among exog_cols")
            saved_support = fitted.get("support")
            support = Support.fit(None, values) if saved_support is None else Support.from_dict(saved_support)
            if len(support.kinds) != len(values):
                raise ValueError("the support and value_cols disagree in length")
            model = est._build(len(values), kwargs, int(fitted.get("n_models", est.n_members)))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source / CONFIG_FILE} is incomplete or invalid: {err!r}") from err
        resolved = resolve_device(est.device)
        try:
            state = load_file(str(source / WEIGHTS_FILE))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{source / WEIGHTS_FILE} is truncated or corrupt: {err}") from err
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(
                f"{source / WEIGHTS_FILE} does not match the configuration: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}"
            )
        model.load_state_dict(state)
        model.to(resolved).eval()
        est.model_, est.model_kwargs_, est.static_encoder_ = model, kwargs, encoder
        est.exog_cols_, est.future_exog_cols_ = exog, future_exog
        est.support_ = support
        est.n_models_ = len(_members(model))
        est.codec_, est.scaling_ = codec, scaling
        est.id_col_, est.time_col_, est.value_cols_ = fitted["id_col"], fitted["time_col"], values
        est.n_variables_, est.device_ = len(values), resolved
        est.n_series_ = int(fitted.get("n_series", 0))
        est.history_ = None
        est.validation_report_ = fitted.get("validation_report")
        return est
