"""Exogenous inputs: rows of inputs in batches, unscored state jumps, known-future inputs in
forecasts and sample paths, static conditioning of the dynamics, and every defect named."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ctflow import Forecaster
from ctflow.cli import main as cli_main
from ctflow.data import simulate_pk
from ctflow.data.future import check_future_frame, merge_future_inputs
from ctflow.data.irregular import collate, from_dataframe, holdout_last, to_dataframe
from ctflow.data.prepare import QueryGrid
from ctflow.dynamics.gru_ode import GRUODECell
from ctflow.models import GRUODEBayes
from ctflow.models.base import QueryInputs
from ctflow.ode import SolverOptions, integrate_intervals

NAMES = {"id_col": "id", "time_col": "ds"}
TINY = {"max_steps": 3, "val_fraction": 0.0, "random_state": 0, "batch_size": 8}
SETTINGS = {"name": "gru_ode_bayes", "hidden_size": 8, "p_hidden": 8, "prep_hidden": 4}


@pytest.fixture(scope="module")
def pk():
    return simulate_pk(10, seed=3)


@pytest.fixture(scope="module")
def fitted(pk):
    est = Forecaster(model=dict(SETTINGS), **TINY)
    return est.fit(pk.df, value_cols=["conc"], exog_cols=["dose"], static_df=pk.static_df, **NAMES)


def _context(pk, cut: float = 72.0) -> pd.DataFrame:
    return pk.df[pk.df["ds"] <= cut].reset_index(drop=True)


# ---------------------------------------------------------------------------------- batches
def test_input_rows_round_trip_through_batches_and_splits(pk):
    batch = from_dataframe(pk.df, "id", "ds", ["conc"], dtype=torch.float64, input_cols=["dose"])
    assert batch.input_names == ["dose"] and batch.n_inputs == 1
    # every dose row and every sample row is a row; inputs are not values
    assert int(batch.input_mask.sum()) == pk.df["dose"].notna().sum()
    assert int(batch.mask.sum()) == pk.df["conc"].notna().sum()
    back = to_dataframe(batch).sort_values(["id", "ds"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back, pk.df.reset_index(drop=True), check_dtype=False)
    targets_only = to_dataframe(batch, include_inputs=False)
    assert list(targets_only.columns) == ["id", "ds", "conc"] and targets_only["conc"].notna().all()
    context, target, _ = holdout_last(batch, 0.3)
    again = collate(
        [context, target.select(np.arange(len(target)))._replace(ids=target.ids.astype(object) + "_t")]
    )
    assert again.inputs.shape[:2] == again.times.shape
    assert int(context.input_mask.sum() + target.input_mask.sum()) == int(batch.input_mask.sum())
    picked = batch.select([2, 0], trim=True)
    torch.testing.assert_close(picked.inputs[1, : batch.lengths[0]], batch.inputs[0, : batch.lengths[0]])


def test_bad_input_tensors_are_named():
    times = torch.tensor([[0.0, 1.0]])
    values, mask = torch.zeros(1, 2, 1), torch.tensor([[[1.0], [0.0]]])
    good = {"times": times, "values": values, "mask": mask, "lengths": torch.tensor([2])}
    from ctflow.data.irregular import IrregularBatch

    with pytest.raises(ValueError, match=r"inputs must be finite .* input 'dose' is nan"):
        IrregularBatch(
            **good,
            inputs=torch.tensor([[[np.nan], [1.0]]]),
            input_mask=torch.ones(1, 2, 1),
            input_names=["dose"],
        )
    with pytest.raises(ValueError, match="input_mask must contain only 0 and 1"):
        IrregularBatch(**good, inputs=torch.zeros(1, 2, 1), input_mask=torch.full((1, 2, 1), 0.5))
    with pytest.raises(ValueError, match="input_mask or input_names given without inputs"):
        IrregularBatch(**good, input_mask=torch.zeros(1, 2, 1))


# ---------------------------------------------------------------------------------- the model
def _batch(pk):
    """Five subjects, times in units of 12 hours (the dosing interval): short solves in the tests."""
    df = pk.df[pk.df["id"].isin(pk.static_df["id"].iloc[:5])].assign(ds=lambda f: f["ds"] / 12.0)
    return from_dataframe(df, "id", "ds", ["conc"], input_cols=["dose"]).to(dtype=torch.float64)


def _model(**kwargs) -> GRUODEBayes:
    torch.manual_seed(0)
    options = {
        "solver": {"method": "rk4", "step_size": 0.05},
        "hidden_size": 8,
        "p_hidden": 8,
        "prep_hidden": 4,
    }
    return GRUODEBayes(1, n_inputs=1, **{**options, **kwargs}).double().eval()


def test_inputs_are_never_scored(pk):
    """The loss counts target values only, and a row that holds nothing given leaves it as it
    was: rows are scored by their targets alone."""
    batch = _batch(pk)
    model = _model()
    nll, count = model.nll_terms(batch)
    assert int(count) == int(batch.mask.sum()) == int((batch.mask.sum(-1) > 0).sum())
    # The same batch with every input withheld: the dose rows are still rows but give nothing.
    silent = batch._replace(input_mask=torch.zeros_like(batch.input_mask))
    nll_silent, _ = model.nll_terms(silent)
    keep = batch.mask.sum(-1) > 0  # drop the dose-only rows altogether
    frame = to_dataframe(batch, include_inputs=False)
    no_rows = from_dataframe(frame, "id", "ds", ["conc"], dtype=torch.float64)
    no_rows = no_rows._replace(
        inputs=torch.zeros(*no_rows.times.shape, 1, dtype=torch.float64),
        input_mask=torch.zeros(*no_rows.times.shape, 1, dtype=torch.float64),
        input_names=["dose"],
    )
    assert bool(keep.any())
    torch.testing.assert_close(nll_silent, model.nll_terms(no_rows)[0], rtol=1e-6, atol=1e-6)
    assert not torch.isclose(nll, nll_silent)  # the doses do act, through the state


def test_a_known_future_input_changes_forecasts_after_its_time_only(pk):
    model = _model()
    batch = _batch(pk)
    state = model.filter(batch)
    start = state.time[:, None]
    times = start + torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    values = torch.zeros(*times.shape, 1, dtype=torch.float64)
    mask = torch.zeros_like(values)
    values[:, 1], mask[:, 1] = 1.5, 1.0  # a dose given at the second query time, after its prediction
    without = model.predict(state, times).mean()
    with_dose = model.predict(state, times, QueryInputs(values, mask)).mean()
    torch.testing.assert_close(with_dose[:, :2], without[:, :2], rtol=0, atol=0)
    assert (with_dose[:, 2:] - without[:, 2:]).abs().min() > 1e-6
    # In joint sample paths too, and a cell that only carries the input draws nothing.
    torch.manual_seed(1)
    a = model.sample_paths(state, times, 4, QueryInputs(values, mask, torch.ones_like(times)))
    torch.manual_seed(1)
    b = model.sample_paths(state, times, 4)
    torch.testing.assert_close(a[:, :, :2], b[:, :, :2], rtol=0, atol=0)
    assert (a[:, :, 2:] - b[:, :, 2:]).abs().min() > 1e-6


def test_the_lockstep_batch_equals_series_one_by_one_with_inputs(pk):
    model = _model(static_dim=2)
    batch = _batch(pk)
    static = torch.randn(len(batch), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    batch = batch._replace(static=static, static_names=["a", "b"])
    with torch.no_grad():
        model.ode.context.weight.normal_()  # a field that depends on the static covariates
        together = model.nll_terms(batch)[0]
        alone = sum(model.nll_terms(batch.select([i], trim=True))[0] for i in range(len(batch)))
    torch.testing.assert_close(together, alone, rtol=1e-9, atol=1e-9)


def test_past_only_inputs_are_hidden_after_training_cuts():
    model = GRUODEBayes(1, hidden_size=4, p_hidden=4, prep_hidden=2, n_inputs=2, future_inputs=[1])
    torch.testing.assert_close(model.past_only_inputs(), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"future_inputs must index the 2 inputs, got \[2\]"):
        GRUODEBayes(1, n_inputs=2, future_inputs=[2])


def test_static_covariates_condition_the_vector_field():
    cell = GRUODECell(4, context_dim=2)
    h, c = torch.randn(3, 4), torch.randn(3, 2)
    dt = torch.tensor([0.5, 1.0, 2.0])
    options = SolverOptions("exp_euler", step_size=0.1)
    plain = integrate_intervals(cell, h, dt, options)
    torch.testing.assert_close(integrate_intervals(cell.bind(c), h, dt, options), plain)  # U starts at 0
    with torch.no_grad():
        cell.context.weight.normal_()
    bound = cell.bind(c)
    assert (integrate_intervals(bound, h, dt, options) - plain).abs().max() > 1e-3
    # exp_euler's rate/target form and the plain field agree on the bound context
    rate, target = bound.rate_and_target(h)
    torch.testing.assert_close(bound(h), rate * (target - h))
    fine = integrate_intervals(bound, h, dt, SolverOptions("rk4", step_size=0.01))
    coarse = integrate_intervals(bound, h, dt, SolverOptions("exp_euler", step_size=0.001))
    torch.testing.assert_close(coarse, fine, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------------------------- future grid
def test_future_inputs_merge_after_queries_at_the_same_time():
    grid = QueryGrid(np.array([[5.0, 7.0], [3.0, 3.0]]), np.array([0, 0, 1]), np.array([0, 1, 0]))
    from ctflow.data.future import FutureInputs

    future = FutureInputs(
        np.array([0, 0, 0, 1]), np.array([5.0, 6.0, 9.0, 2.5]), np.array([[1.0], [2.0], [3.0], [4.0]])
    )
    merged = merge_future_inputs(grid, future, 1)
    # series 0: query 5, input 5 (after it), input 6, query 7; the input at 9 is past every query
    np.testing.assert_array_equal(merged.times[0], [5.0, 5.0, 6.0, 7.0])
    np.testing.assert_array_equal(merged.slot, [0, 3, 1])
    np.testing.assert_array_equal(merged.input_mask[0, :, 0], [0, 1, 1, 0])
    np.testing.assert_array_equal(merged.inputs[0, :, 0], [0, 1, 2, 0])
    # series 1: the input at 2.5 precedes its only query; padding repeats the last query
    np.testing.assert_array_equal(merged.times[1], [2.5, 3.0, 3.0, 3.0])
    np.testing.assert_array_equal(merged.input_mask[1, :, 0], [1, 0, 0, 0])


# ---------------------------------------------------------------------------------- estimator
def test_forecasts_use_the_planned_doses(pk, fitted):
    context = _context(pk)
    ids = pk.static_df["id"].to_numpy()[:3]
    queries = pd.DataFrame({"id": np.repeat(ids, 2), "ds": np.tile([80.0, 90.0], 3)})
    future = pk.future_df[pk.future_df["id"].isin(ids)]
    kwargs = {"static_df": pk.static_df, "times": queries}
    planned = fitted.predict(context, future_df=future, **kwargs)
    none = fitted.predict(context, future_df=future.iloc[:0], **kwargs)
    assert list(planned.columns) == ["id", "ds", "conc"]
    before = queries["ds"].to_numpy() < future.groupby("id")["ds"].min().reindex(queries["id"]).to_numpy()
    np.testing.assert_array_equal(planned["conc"][before], none["conc"][before])
    assert (planned["conc"][~before] != none["conc"][~before]).all()
    paths = fitted.sample(context, n_samples=20, future_df=future, seed=0, **kwargs)
    assert paths.shape == (20, 6, 1) and np.isfinite(paths).all()


def test_save_and_load_keep_inputs_and_encoders(pk, fitted, tmp_path):
    context = _context(pk)
    kwargs = {"horizon": [2.0, 10.0], "static_df": pk.static_df, "future_df": pk.future_df}
    fitted.save(tmp_path / "m")
    again = Forecaster.load(tmp_path / "m")
    assert again.exog_cols_ == ["dose"] and again.future_exog_cols_ == ["dose"]
    np.testing.assert_array_equal(again.scaling_.input_scale, fitted.scaling_.input_scale)
    pd.testing.assert_frame_equal(again.predict(context, **kwargs), fitted.predict(context, **kwargs))
    pd.testing.assert_frame_equal(
        again.predict_quantiles(context, **kwargs), fitted.predict_quantiles(context, **kwargs)
    )


def test_past_only_inputs_forecast_from_the_context_alone(pk):
    est = Forecaster(model=dict(SETTINGS), **TINY)
    est.fit(pk.df, value_cols=["conc"], exog_cols=["dose"], future_exog_cols=[], **NAMES)
    assert est.future_exog_cols_ == [] and est.model_.past_only_inputs().tolist() == [1.0]
    out = est.predict(_context(pk), horizon=[1.0, 5.0])
    assert np.isfinite(out["conc"]).all()
    with pytest.raises(
        ValueError, match=r"fitted without known-future inputs \(its inputs \['dose'\] are past-only"
    ):
        est.predict(_context(pk), horizon=[1.0], future_df=pk.future_df)


@pytest.mark.parametrize(
    ("fit_kwargs", "error", "message"),
    [
        (
            {"value_cols": ["conc", "dose"], "exog_cols": ["dose"]},
            ValueError,
            r"\['dose'\] are named both as targets",
        ),
        ({"exog_cols": ["route"]}, TypeError, "input column 'route' must be numeric, got dtype "),
        ({"exog_cols": ["rate"]}, ValueError, "df has no input column 'rate'"),
        (
            {"exog_cols": ["dose"], "future_exog_cols": ["conc"]},
            ValueError,
            r"future_exog_cols names \['conc'\]",
        ),
        (
            {"future_exog_cols": ["dose"]},
            ValueError,
            "future_exog_cols names inputs, but exog_cols is not given",
        ),
    ],
)
def test_bad_input_columns_are_named(pk, fit_kwargs, error, message):
    df = pk.df.assign(route="oral")
    kwargs = dict(fit_kwargs)
    model = kwargs.pop("model", dict(SETTINGS))
    if "value_cols" not in kwargs:
        kwargs["value_cols"] = ["conc"]
    with pytest.raises(error, match=message):
        Forecaster(model=model, **TINY).fit(df, **kwargs, **NAMES)


@pytest.mark.parametrize(
    ("future", "error", "message"),
    [
        (None, ValueError, r"fitted with the known-future inputs \['dose'\]: pass future_df"),
        (
            lambda f: f.drop(columns="dose"),
            ValueError,
            r"future_df lacks the known-future input\(s\) \['dose'\]",
        ),
        (lambda f: f.assign(dose=f["dose"].astype(str)), TypeError, "input column 'dose' must be numeric"),
        (
            lambda f: pd.concat([f.iloc[:1].assign(ds=70.0), f]),
            ValueError,
            r"future_df row 0 \(series 's000', time 70.0\) is not after the context's end",
        ),
        (lambda f: f.assign(id="nobody"), ValueError, r"future_df has series \['nobody'\]"),
        (lambda f: pd.concat([f, f.iloc[:1]]), ValueError, "future_df has two rows for series 's000'"),
        (lambda f: f.assign(ds=np.nan), ValueError, "future_df: column 'ds' has a missing or infinite value"),
    ],
)
def test_bad_future_frames_are_named(pk, fitted, future, error, message):
    frame = None if future is None else future(pk.future_df)
    with pytest.raises(error, match=message):
        fitted.predict(_context(pk), horizon=[5.0], static_df=pk.static_df, future_df=frame)


def test_the_context_must_hold_the_inputs(pk, fitted):
    with pytest.raises(ValueError, match=r"lacks the value column\(s\) \['dose'\]"):
        fitted.predict(
            _context(pk).drop(columns="dose"), horizon=[5.0], static_df=pk.static_df, future_df=pk.future_df
        )


def test_check_future_frame_keeps_only_given_inputs(pk, fitted):
    context = fitted._context(_context(pk), static_df=pk.static_df)
    frame = pk.future_df.copy()
    frame.loc[0, "dose"] = np.nan
    rows = check_future_frame(frame, context, fitted.codec_, "id", "ds", ["dose"], ["dose"])
    assert len(rows.times) == len(frame) - 1


def test_the_command_line_takes_inputs_and_planned_doses(pk, tmp_path, capsys):
    data, static, future = tmp_path / "pk.csv", tmp_path / "static.csv", tmp_path / "future.csv"
    pk.df.to_csv(data, index=False)
    pk.static_df.to_csv(static, index=False)
    pk.future_df.to_csv(future, index=False)
    _context(pk).to_csv(tmp_path / "context.csv", index=False)
    model = tmp_path / "model"
    args = [
        "fit",
        str(data),
        "--out",
        str(model),
        "--id-col",
        "id",
        "--time-col",
        "ds",
        "--value-cols",
        "conc",
    ]
    args += ["--exog-cols", "dose", "--static", str(static), "--max-steps", "2", "--val-fraction", "0"]
    assert cli_main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["variables"] == ["conc"]
    out = tmp_path / "fc.csv"
    base = ["forecast", str(model), str(tmp_path / "context.csv"), "--horizon", "5", "20", "-o", str(out)]
    assert cli_main([*base, "--static", str(static), "--future", str(future)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 2 * pk.df["id"].nunique() and set(table["variable"]) == {"conc"}
    assert cli_main([*base, "--static", str(static)]) != 0  # no --future: named, nothing written anew
    assert "pass future_df" in capsys.readouterr().err
    assert (
        cli_main(["evaluate", str(model), str(data), "--static", str(static), "--horizon", "1", "--json"])
        == 0
    )
    assert "crps" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- latent models
def _latent(kind: str, **kwargs):
    from ctflow.models import LatentODE, LatentSDE

    torch.manual_seed(0)
    cls = LatentODE if kind == "ode" else LatentSDE
    solver = {"method": "rk4", "step_size": 0.05} if kind == "ode" else {"method": "euler", "step_size": 0.1}
    model = cls(
        1, latent_dim=3, hidden_size=6, ode_hidden=8, p_hidden=8, n_particles=8, solver=solver, **kwargs
    )
    return model.double().eval()


@pytest.mark.parametrize("kind", ["ode", "sde"])
def test_latent_models_jump_at_inputs_and_see_static_covariates(pk, kind):
    model = _latent(kind, static_dim=2, n_inputs=1)
    with torch.no_grad():
        for p in model.input_jump.parameters():
            p.normal_(0, 0.5)
        model.prior_net.weight.normal_()
    batch = _batch(pk)
    static = torch.randn(len(batch), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    batch = batch._replace(static=static, static_names=["a", "b"])
    z0 = torch.randn(4, len(batch), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    if kind == "ode":
        together, _ = model.decode(z0, batch)
        alone = torch.cat(
            [model.decode(z0[:, [i]], batch.select([i], trim=True))[0] for i in range(len(batch))], 1
        )
        torch.testing.assert_close(together, alone, rtol=1e-6, atol=1e-6)  # lockstep equals one by one
        silent = batch._replace(input_mask=torch.zeros_like(batch.input_mask))
        assert not torch.allclose(model.decode(z0, silent)[0], together)  # the doses act
    prior = model.prior_log_prob(z0, static)
    assert not torch.allclose(prior, model.prior_log_prob(z0))  # the prior depends on s
    # A known-future input changes forecasts after its time only.
    torch.manual_seed(3)
    state = model.filter(batch)
    times = state.time[:, None] + torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    values = torch.zeros(*times.shape, 1, dtype=torch.float64)
    mask = torch.zeros_like(values)
    values[:, 0], mask[:, 0] = 1.0, 1.0
    torch.manual_seed(4)
    a = model.predict(state, times, QueryInputs(values, mask)).mean()
    torch.manual_seed(4)
    b = model.predict(state, times).mean()
    torch.testing.assert_close(a[:, :1], b[:, :1], rtol=0, atol=0)
    assert (a[:, 1:] - b[:, 1:]).abs().max() > 1e-6


def test_a_latent_forecaster_takes_inputs_and_planned_doses(pk):
    est = Forecaster(model={"name": "latent_ode", "latent_dim": 2, "hidden_size": 4}, **TINY)
    est.fit(pk.df, value_cols=["conc"], exog_cols=["dose"], static_df=pk.static_df, **NAMES)
    assert est.model_.n_inputs == 1 and est.model_.static_dim == est.static_encoder_.n_features
    out = est.predict(_context(pk), horizon=[2.0, 8.0], static_df=pk.static_df, future_df=pk.future_df)
    assert np.isfinite(out["conc"]).all()


def test_a_bad_input_column_on_the_command_line_writes_nothing(pk, tmp_path, capsys):
    data = tmp_path / "pk.csv"
    pk.df.assign(route="oral").to_csv(data, index=False)
    model = tmp_path / "model"
    args = ["fit", str(data), "--out", str(model), "--id-col", "id", "--time-col", "ds", "--max-steps", "2"]
    assert cli_main([*args, "--value-cols", "conc", "--exog-cols", "route"]) == 2
    assert "input column 'route' must be numeric" in capsys.readouterr().err
    assert cli_main([*args, "--value-cols", "conc", "--exog-cols", "rate"]) == 2
    assert "no input column 'rate'" in capsys.readouterr().err
    assert cli_main([*args, "--value-cols", "conc", "dose", "--exog-cols", "dose"]) == 2
    assert "named both as targets" in capsys.readouterr().err
    assert not model.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["pk.csv"]
