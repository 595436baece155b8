"""The filter loop's block plan: every series through its own gaps, no step too long, and the
model's results independent of the plan up to the solver's error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctflow.data import from_dataframe, load_double_ou
from ctflow.models import GRUODEBayes
from ctflow.models.lockstep import plan_blocks
from ctflow.ode import SolverOptions, fixed_step_plan


def padded_gaps(gaps: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max((len(g) for g in gaps), default=0)
    dts = torch.zeros(len(gaps), n, dtype=torch.float64)
    for b, g in enumerate(gaps):
        dts[b, : len(g)] = torch.tensor(g, dtype=torch.float64)
    return dts, torch.tensor([len(g) for g in gaps])


def walk(plan, n_rows: int) -> tuple[list[list[int]], list[list[float]], float]:
    """Per row: the indices it observes in order, the time it covered before each, the longest step."""
    seen: list[list[int]] = [[] for _ in range(n_rows)]
    covered: list[list[float]] = [[] for _ in range(n_rows)]
    since = np.zeros(n_rows)
    longest = 0.0
    for j, n in enumerate(plan.n_steps):
        span, steps = plan.span[j].numpy(), plan.row_steps[j]
        assert (steps <= n).all() and (span[steps == 0] == 0).all()
        if steps.any():
            longest = max(longest, float((span[steps > 0] / steps[steps > 0]).max()))
        order = plan.order[j].numpy()
        assert (np.diff(steps[order]) <= 0).all()  # sorted by step count, largest first
        assert plan.counts[j] == [int((steps > t).sum()) for t in range(n)]
        since += span
        for b in np.nonzero(plan.reach[j].numpy())[0]:
            seen[b].append(int(plan.index[j, b]))
            covered[b].append(float(since[b]))
            since[b] = 0.0
    return seen, covered, longest


gap_lists = st.lists(
    st.lists(st.floats(0.0, 3.0, allow_nan=False).map(lambda x: round(x, 3)), min_size=0, max_size=8),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(
    gaps=gap_lists,
    step=st.sampled_from([0.05, 0.3, 1.0]),
    policy=st.sampled_from(["auto", "greedy", "index"]),
)
def test_every_row_observes_its_indices_in_order_after_exactly_its_gaps(gaps, step, policy):
    dts, lengths = padded_gaps(gaps)
    plan = plan_blocks(dts, lengths, step, policy=policy)
    seen, covered, longest = walk(plan, len(gaps))
    for b, g in enumerate(gaps):
        assert seen[b] == list(range(len(g)))
        np.testing.assert_allclose(covered[b], g, atol=1e-9)
    assert longest <= step * (1 + 1e-9)


def test_the_index_policy_is_the_loop_over_observation_indices():
    batch = from_dataframe(load_double_ou(40, seed=3))
    dts = torch.diff(torch.cat([torch.zeros(len(batch), 1), batch.times], dim=1), dim=1)
    options = SolverOptions("euler", step_size=0.1, max_steps=4)
    plan = plan_blocks(dts, batch.lengths, 0.1, max_steps=4, policy="index")
    assert plan.n_steps == fixed_step_plan(dts, options)
    assert torch.equal(plan.span, dts.T)
    assert torch.equal(plan.reach.bool(), (torch.arange(dts.shape[1])[:, None] < batch.lengths[None]))


def test_a_gap_past_max_steps_takes_max_steps_longer_steps():
    dts, lengths = padded_gaps([[10.0, 0.1], [0.1, 0.1]])
    plan = plan_blocks(dts, lengths, 0.1, max_steps=5, policy="greedy", jump_cost=3.5)
    seen, _, _ = walk(plan, 2)
    assert seen == [[0, 1], [0, 1]]
    assert plan.n_steps == [5, 1]  # five steps of 2.0 reach both series' first observations
    assert torch.allclose(plan.span[0] / 5, torch.tensor([2.0, 0.02], dtype=torch.float64))


def test_planning_pays_for_each_series_own_gaps():
    """One series with long gaps no longer makes every series take its steps."""
    batch = from_dataframe(load_double_ou(500, seed=0))
    dts = torch.diff(torch.cat([torch.zeros(len(batch), 1), batch.times], dim=1), dim=1)
    index = plan_blocks(dts, batch.lengths, 0.05, policy="index")
    greedy = plan_blocks(dts, batch.lengths, 0.05, policy="greedy")
    distinct = torch.unique(batch.times[batch.pad_mask]).numel()
    assert greedy.total_steps < 0.4 * index.total_steps
    assert len(greedy) < 0.4 * distinct  # far fewer updates than a loop over timestamps
    assert greedy.cost() < 0.5 * index.cost()
    assert plan_blocks(dts, batch.lengths, 0.05).n_steps == greedy.n_steps  # "auto" plans here


def test_auto_keeps_the_index_loop_where_planning_would_not_pay():
    """Steps sized to the typical gap, at most two per gap (the estimator's default): the greedy
    plan saves little, and "auto" keeps the loop over indices (and its results) as they were."""
    batch = from_dataframe(load_double_ou(500, seed=0))
    dts = torch.diff(torch.cat([torch.zeros(len(batch), 1), batch.times], dim=1), dim=1)
    median = float(dts[batch.pad_mask].median())
    index = plan_blocks(dts, batch.lengths, median, max_steps=2, policy="index")
    greedy = plan_blocks(dts, batch.lengths, median, max_steps=2, policy="greedy")
    assert greedy.cost() > 0.75 * index.cost()
    chosen = plan_blocks(dts, batch.lengths, median, max_steps=2)
    assert chosen.n_steps == index.n_steps and torch.equal(chosen.span, index.span)


def test_plan_rejects_negative_gaps():
    with pytest.raises(ValueError, match="precede"):
        plan_blocks(torch.tensor([[0.5, -0.1]]), torch.tensor([2]), 0.1)


@pytest.mark.parametrize(
    "solver", [{"method": "euler", "step_size": 0.01}, {"method": "exp_euler", "step_size": 0.02}]
)
def test_the_model_gives_the_same_results_under_either_plan(solver):
    """Both plans integrate the same ODE with steps of at most ``step_size``: losses, gradients
    (static conditioning of the field included) and filtered states agree to the solver's error,
    and the greedy plan has fewer steps."""
    batch = from_dataframe(load_double_ou(30, seed=2, t_max=4.0, min_obs=4, max_obs=9))
    batch.static = torch.randn(len(batch), 2, generator=torch.Generator().manual_seed(0))
    results = {}
    for planning in ("index", "greedy"):
        torch.manual_seed(0)
        model = GRUODEBayes(2, 12, 8, 8, solver=solver, planning=planning, carry_forward=True, static_dim=2)
        torch.nn.init.normal_(model.ode.context.weight, std=0.5)  # a field that depends on the series
        loss = model.loss(batch)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[planning] = (loss.detach(), grad, model.filter(batch).h.detach(), model.nfe.nfe_forward)
    (l_i, g_i, h_i, nfe_i), (l_g, g_g, h_g, nfe_g) = results["index"], results["greedy"]
    assert torch.allclose(l_i, l_g, atol=2e-3)
    assert torch.allclose(h_i, h_g, atol=5e-3)
    assert torch.allclose(g_i, g_g, atol=5e-3)
    assert nfe_g < nfe_i
