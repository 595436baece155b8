"""Planning a batch's filter loop so that each series pays for its own gaps.

A filter that loops over observation *indices* advances every series to its ``k``-th observation
at step ``k``; with a fixed-step solver that step takes as many solver steps as the batch's
longest ``k``-th gap, so one long gap makes every series take many short steps. A loop over the
batch's distinct timestamps has the opposite cost: each series takes only its own steps, but
there is one update per timestamp.

:func:`plan_blocks` lays the loop out in blocks: a block is at most ``n`` solver steps, after
which the series whose next observation the block reached are updated together. In a planned
block each series takes its *own* number of steps (no longer than the solver's ``step_size``):
the series are sorted by that number, and step ``t`` of the block advances only the first rows,
those with more than ``t`` steps to take; a series whose next observation is further than ``n``
steps away takes ``n`` full steps and waits for a later block. So the solver's work is what each
series' own gaps need, as in the timestamp loop, while the updates stay few. ``n`` is chosen
block by block to update the most series per unit of cost. Choosing the largest ``n`` every time,
with every series taking ``n`` equal steps, is the loop over indices exactly (``policy="index"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..checks import choice

__all__ = ["BlockPlan", "plan_blocks", "JUMP_COST", "STEP_OVERHEAD", "PLAN_GAIN"]

# Costs in units of one solver step of the whole batch, forward and backward (measured for the
# GRU-ODE at the paper's sizes, hidden 50 and batch 500, on a CPU): an update (the emission
# scored before and after, the GRU-Bayes cell) costs about JUMP_COST steps; a step over a few
# rows still costs STEP_OVERHEAD of a full one (the fixed cost of its operations).
JUMP_COST = 3.5
STEP_OVERHEAD = 0.25
# The share of the index loop's cost that the planned loop must save to be used by "auto".
PLAN_GAIN = 0.25


@dataclass
class BlockPlan:
    """The blocks of one batch's filter loop.

    In block ``j`` row ``b`` advances by ``span[j, b]`` time units in ``row_steps[j, b]`` equal
    solver steps (at most ``n_steps[j]``; 0 leaves the row as it is), then the rows with
    ``reach[j, b] = 1`` observe their observation ``index[j, b]`` (``index`` is a valid column
    for every row, so that it can be gathered; rows that do not reach are masked out).
    ``ragged[j]`` is False where every row takes the block's ``n_steps[j]`` steps (the loop over
    indices); otherwise ``order[j]`` sorts the rows by their step counts, largest first, step
    ``t`` of the block advances the first ``counts[j][t]`` rows of that order, and row ``b``'s
    steps are ``step[j, b]`` long.
    """

    n_steps: list[int]
    span: Tensor
    index: Tensor
    reach: Tensor
    row_steps: np.ndarray
    step: Tensor
    ragged: list[bool]
    order: Tensor
    counts: list[list[int]]

    def __len__(self) -> int:
        return len(self.n_steps)

    @property
    def total_steps(self) -> int:
        """Solver steps over the whole loop (a ragged step counted once, however many rows)."""
        return sum(self.n_steps)

    def cost(self, jump_cost: float = JUMP_COST, step_overhead: float = STEP_OVERHEAD) -> float:
        """The loop's modelled cost in full-batch solver steps: ``jump_cost`` per block, a full
        step per step of an unragged block, and per step of a ragged one ``step_overhead`` plus
        the share of the rows it advances."""
        n_rows = max(1, self.row_steps.shape[1])
        total = jump_cost * len(self)
        for j, n in enumerate(self.n_steps):
            if self.ragged[j]:
                total += step_overhead * n + (1 - step_overhead) * float(self.row_steps[j].sum()) / n_rows
            else:
                total += n
        return total


def _steps_needed(remaining: np.ndarray, step_ceiling: np.ndarray) -> np.ndarray:
    """Steps of at most ``step_ceiling`` to cover ``remaining`` (0 for nothing left): the
    rounding of :func:`ctflow.ode.steps_for`."""
    need = np.ceil(remaining / step_ceiling - 1e-9)
    return np.where(remaining > 0, np.maximum(need, 1), 0).astype(np.int64)


def plan_blocks(
    dts: Tensor,
    lengths: Tensor,
    step_size: float,
    max_steps: int | None = None,
    policy: str = "auto",
    jump_cost: float = JUMP_COST,
    step_overhead: float = STEP_OVERHEAD,
) -> BlockPlan:
    """Blocks that advance each row of ``dts (B, N)`` (its gaps: to its first observation, then
    between consecutive ones; row ``b`` has ``lengths[b]`` of them) through its observations.

    No step is longer than ``step_size``, except in a gap that would need more than
    ``max_steps`` steps, which takes ``max_steps`` equal ones (as :func:`ctflow.ode.integrate_intervals`
    does). ``policy="index"``: every block reaches every row's next observation and every row
    takes the block's steps (the loop over observation indices); ``"greedy"``: ragged blocks,
    each block's step count ``n`` maximising the rows it updates per unit of cost, ``n *
    step_overhead + jump_cost`` (the rows' own steps are work that every plan does);
    ``"auto"``: the greedy plan where it costs at least :data:`PLAN_GAIN` less than the index
    loop (:meth:`BlockPlan.cost`), else the index loop. Reads ``dts`` back from the device once.
    """
    choice(policy, "policy", ("auto", "greedy", "index"))
    gaps = dts.detach().to("cpu", torch.float64).numpy()
    lengths_np = lengths.detach().to("cpu").numpy().astype(np.int64)
    n_rows, n_cols = gaps.shape
    if n_rows and n_cols and gaps.min() < 0:
        raise ValueError("query or observation times precede the state's time")
    ceiling = np.full_like(gaps, float(step_size))
    if max_steps:
        ceiling = np.maximum(ceiling, gaps / max_steps)
    if policy == "auto":
        greedy = plan_blocks(dts, lengths, step_size, max_steps, "greedy", jump_cost, step_overhead)
        valid = np.arange(n_cols)[None, :] < lengths_np[:, None]
        need = np.where(valid, _steps_needed(gaps, ceiling), 0)
        index_cost = float(need.max(axis=0, initial=0).sum()) + jump_cost * int(valid.any(axis=0).sum())
        if greedy.cost(jump_cost, step_overhead) < (1 - PLAN_GAIN) * index_cost:
            return greedy
        return plan_blocks(dts, lengths, step_size, max_steps, "index", jump_cost, step_overhead)
    rows = np.arange(n_rows)
    k = np.zeros(n_rows, dtype=np.int64)
    remaining = gaps[:, 0].copy() if n_cols else np.zeros(n_rows)
    plan: dict[str, list] = {
        key: [] for key in ("n_steps", "span", "index", "reach", "row_steps", "order", "counts")
    }
    while True:
        active = k < lengths_np
        if not active.any():
            break
        col = np.minimum(k, n_cols - 1)
        row_ceiling = ceiling[rows, col]
        need = _steps_needed(remaining, row_ceiling)
        need_active = need[active]
        if policy == "index":
            n = int(need_active.max())
        else:
            candidates, counts = np.unique(need_active, return_counts=True)
            reached = np.cumsum(counts)
            n = int(candidates[np.argmax(reached / (step_overhead * candidates + jump_cost))])
        reach = active & (need <= n)
        wait = active & ~reach
        span = np.where(reach, remaining, 0.0)
        span[wait] = n * row_ceiling[wait]
        if policy == "index":
            row_steps = np.where(active, n, 0)
        else:
            row_steps = np.where(reach, need, np.where(wait, n, 0))
        order = np.argsort(-row_steps, kind="stable")
        plan["n_steps"].append(n)
        plan["span"].append(span)
        plan["index"].append(col)
        plan["reach"].append(reach)
        plan["row_steps"].append(row_steps)
        plan["order"].append(order)
        plan["counts"].append((n_rows - np.cumsum(np.bincount(row_steps, minlength=n + 1)))[:n].tolist())
        remaining[wait] -= span[wait]
        k[reach] += 1
        more = reach & (k < lengths_np)
        remaining[more] = gaps[rows[more], k[more]]

    def stacked(key: str, dtype: torch.dtype) -> Tensor:
        xs = plan[key]
        return torch.as_tensor(np.stack(xs) if xs else np.zeros((0, n_rows)), dtype=dtype)

    span = stacked("span", torch.float64).to(dts)
    row_steps = np.stack(plan["row_steps"]) if plan["row_steps"] else np.zeros((0, n_rows), np.int64)
    return BlockPlan(
        n_steps=plan["n_steps"],
        span=span,
        index=stacked("index", torch.int64).to(dts.device),
        reach=stacked("reach", torch.float64).to(dts),
        row_steps=row_steps,
        step=span / torch.as_tensor(row_steps).to(span).clamp_min(1),  # one transfer, not one a block
        ragged=[policy != "index"] * len(plan["n_steps"]),
        order=stacked("order", torch.int64).to(dts.device),
        counts=plan["counts"],
    )
