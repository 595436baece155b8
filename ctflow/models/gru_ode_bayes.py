"""GRU-ODE-Bayes with Gaussian or normalizing-flow emission densities.

De Brouwer, Simm, Arany & Moreau (2019), "GRU-ODE-Bayes: Continuous modeling of
sporadically-observed time series".

Batching without a loop over timestamps: the filter loop runs in blocks planned from the batch's
gaps (:mod:`ctflow.models.lockstep`). In a block every series advances over its own interval at
once (per-series time rescaling, see :func:`ctflow.ode.integrate_intervals` and
:func:`ctflow.ode.integrate_ragged`), each with the solver steps its own gap needs; the series
that reached an observation are then scored under the predicted density (pre-jump), updated by
the GRU-Bayes jump and scored again (post-jump). The Python loop runs over a few dozen blocks for
the double-OU data, not over the distinct timestamps of the batch (about 200), and no value is
read back from the device inside it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..checks import choice, positive_int, probability
from ..data.irregular import IrregularBatch
from ..dynamics.gru_ode import GRUBayes, GRUODECell, InputJump
from ..dynamics.neural_flows import FLOWS, build_flow
from ..ode import FUSED_METHODS, NFECounter, SolverOptions, integrate_ragged
from .base import QueryInputs, SequenceModel
from .emissions import LastValueEmission, MaskedEmission, resolve_emission
from .lockstep import BlockPlan, plan_blocks

__all__ = ["GRUODEBayes", "FilterState", "PredictiveDistribution"]


@dataclass
class FilterState:
    """Hidden state of each series after its last observation, and that observation's time.

    With ``carry_forward`` models, also each variable's last observed value ``last (B, D)``, the
    time it was observed ``last_time (B, D)`` and whether it has been ``seen (B, D)``; with
    ``trend`` models, running sums ``sums (B, D, 5)`` of ``[1, t, y, t^2, t y]`` over each
    variable's observations (its count, mean and least-squares line). With static covariates,
    ``static (B, S)``, which the emission also sees. With inputs, each input's last given value
    ``u_last (B, E)``, the time it was given ``u_time`` and whether it has been ``u_seen``.
    """

    h: Tensor
    time: Tensor
    last: Tensor | None = None
    last_time: Tensor | None = None
    seen: Tensor | None = None
    sums: Tensor | None = None
    static: Tensor | None = None
    u_last: Tensor | None = None
    u_time: Tensor | None = None
    u_seen: Tensor | None = None

    def _fields(self) -> tuple[Tensor | None, ...]:
        return (
            self.h,
            self.time,
            self.last,
            self.last_time,
            self.seen,
            self.sums,
            self.static,
            self.u_last,
            self.u_time,
            self.u_seen,
        )

    def repeat(self, n: int) -> FilterState:
        """``n`` copies of every series, copy-major: row ``i * B + b`` is copy ``i`` of series ``b``."""

        def rep(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.repeat(n, *([1] * (x.dim() - 1)))

        return FilterState(*(rep(x) for x in self._fields()))

    def observe(self, y: Tensor, mask: Tensor, t: Tensor) -> FilterState:
        """The carried values after observing ``y`` where ``mask`` at times ``t (B,)``."""
        if self.last is None:
            return self
        hit = mask > 0
        sums = None
        if self.sums is not None:
            tt = t.unsqueeze(-1).to(y).expand_as(y)
            terms = torch.stack([torch.ones_like(y), tt, y, tt * tt, tt * y], dim=-1)
            sums = self.sums + terms * hit.unsqueeze(-1).to(y)
        return dataclasses.replace(
            self,
            last=torch.where(hit, y, self.last),
            last_time=torch.where(hit, t.unsqueeze(-1).to(self.last), self.last_time),
            seen=torch.where(hit, torch.ones_like(self.seen), self.seen),
            sums=sums,
        )

    def observe_inputs(self, u: Tensor, mask: Tensor, t: Tensor) -> FilterState:
        """The last given inputs after the inputs ``u`` given where ``mask`` at times ``t (B,)``."""
        if self.u_last is None:
            return self
        hit = mask > 0
        return dataclasses.replace(
            self,
            u_last=torch.where(hit, u, self.u_last),
            u_time=torch.where(hit, t.unsqueeze(-1).to(u), self.u_time),
            u_seen=torch.where(hit, torch.ones_like(self.u_seen), self.u_seen),
        )


class PredictiveDistribution:
    """The emission density at query points: hidden states ``h (B, Q, H)``."""

    def __init__(self, emission: MaskedEmission, h: Tensor):
        self.emission, self.h = emission, h

    def log_prob(self, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log-density of the observed values ``(B, Q)``; ``mask`` defaults to all observed."""
        mask = torch.ones_like(y) if mask is None else mask
        # Flattened to rows: some emissions (the joint flow) take 2-D contexts only.
        lead = y.shape[:-1]
        flat = self.emission.log_prob(
            y.reshape(-1, y.shape[-1]), mask.reshape(-1, y.shape[-1]), self.h.reshape(-1, self.h.shape[-1])
        )
        return flat.reshape(lead)

    def mean(self, n_samples: int = 256) -> Tensor:
        """Marginal means ``(B, Q, D)`` (exact for every built-in emission)."""
        return self.emission.mean(self.h, n_samples)

    def variance(self, n_samples: int = 256) -> Tensor:
        """Marginal variances ``(B, Q, D)``."""
        return self.emission.variance(self.h, n_samples)

    def cdf(self, y: Tensor) -> Tensor:
        """Marginal CDFs at ``y (B, Q, D)``."""
        return self.emission.cdf(y, self.h)

    def cdf_function(self) -> Callable[[Tensor], Tensor]:
        """The marginal CDFs as a function of ``y (B, Q, D)``, the emission network evaluated once."""
        return self.emission.cdf_function(self.h)

    def quantile(self, q: float | Tensor, n_samples: int = 1000) -> Tensor:
        """Marginal quantiles ``(B, Q, D)`` at level ``q`` (exact for every built-in emission)."""
        return self.emission.quantile(self.h, q, n_samples)

    def sample(self, n: int) -> Tensor:
        """Marginal samples at each query point, independently: ``(n, B, Q, D)``."""
        return self.emission.marginal_sample(self.h, n)


class GRUODEBayes(SequenceModel):
    """GRU-ODE-Bayes: GRU-ODE between observations, GRU-Bayes jumps at observations.

    De Brouwer et al. (2019), "GRU-ODE-Bayes: Continuous modeling of sporadically-observed time
    series". The emission ``p(y | h(t))`` is ``"gaussian"`` (the paper's diagonal Gaussian),
    ``"mixlogistic"`` (a conditional mixture-of-logistics flow per variable) or ``"maf"`` (a joint
    masked autoregressive flow over the observed variables); every one gives an exact, normalised
    density over the observed subset.

    Args:
        n_variables: ``D``.
        hidden_size: size of ``h``.
        p_hidden: hidden width of the emission network.
        prep_hidden: width of the per-variable GRU-Bayes preprocessing.
        emission: emission name or a :class:`MaskedEmission` instance with ``context_dim = hidden_size``.
        static_dim: size of static covariates, which set the initial state, condition the
            vector field's gates and which the emission also sees (0: none, a learned ``h0``).
        n_inputs: number of exogenous inputs (doses, treatments) in the batches' ``inputs``: at a
            row with inputs the state jumps (:class:`ctflow.dynamics.gru_ode.InputJump`) after
            the row's targets are scored and used; inputs are never scored.
        future_inputs: indices of the inputs known in advance (applied in forecasts, see
            :meth:`predict`); the others are past-only, and training's forecast cuts hide them
            after the cut as forecasting will. None: every input.
        solver: integration between observations (fixed-step ``exp_euler``/``euler``/``midpoint``/
            ``rk4`` with ``step_size`` the largest step in time units, or adaptive ``dopri5`` etc.).
            The default, exponential Euler with steps of at most one time unit, reaches the
            paper's double-OU accuracy in a third of the time of its Euler steps of 0.05
            (``experiments/results/double_ou_steps.md``).
        dynamics: ``"ode"`` (the GRU-ODE, integrated by ``solver``) or a neural flow that gives
            the state after an interval in one call, without a solver
            (:mod:`ctflow.dynamics.neural_flows`: ``"gru_flow"``, ``"resnet_flow"``,
            ``"coupling_flow"``; Biloš et al. 2021, "Neural Flows: Efficient Alternative to
            Neural ODEs").
        planning: how the filter loop over a batch is laid out for a fused fixed-step solver
            (:mod:`ctflow.models.lockstep`): ``"greedy"`` blocks of solver steps sized to the
            series' own gaps, each series updated when a block reaches its next observation;
            ``"index"``: one block per observation index, as long as the batch's longest gap at
            that index; ``"auto"``: the greedy blocks where they cost clearly less. No step is
            longer than ``step_size`` either way.
        post_jump_weight: weight of the post-jump negative log-likelihood in the loss.
        update_dropout: in training, the probability that an observation row is scored but not
            used to update the state, so the model also learns to predict further ahead than the
            next observation (what multi-step forecasts need).
        forecast_cut: in training, the probability that a series is cut after a random number
            (at least one) of its observations; the observations after the cut are scored but not
            used to update the state, which trains the multi-step predictive that forecasts from
            a context use.
        trend: with ``carry_forward``, the emission also sees, per variable, the series' mean so
            far, its least-squares line extrapolated to the query time (both relative to the last
            value) and the log count of observations: a level to revert to, a course to keep
            beyond the training range (growth curves) and how much to trust them.
        start_time: time at which every series starts from ``h0`` (``None``: its first observation).
        carry_forward: the emission also sees each variable's last observed value, whether it
            was observed and the log of one plus the time since, and models the change from that
            value (:class:`ctflow.models.emissions.LastValueEmission`): persistence is then the
            default the hidden state corrects, which suits slowly varying, sparsely measured
            variables such as laboratory values.

    >>> import torch
    >>> from ctflow.data import from_dataframe, load_double_ou
    >>> from ctflow.models import GRUODEBayes
    >>> batch = from_dataframe(load_double_ou(4, seed=0, t_max=2.0, min_obs=3, max_obs=6))
    >>> model = GRUODEBayes(2, hidden_size=8, p_hidden=8, prep_hidden=4)
    >>> state = model.filter(batch)  # every series after its last observation
    >>> times = batch.times[:, -1:] + torch.tensor([0.5, 1.0])  # (B, Q) query times
    >>> model.predict(state, times).sample(10).shape  # (n, B, Q, D) marginal draws
    torch.Size([10, 4, 2, 2])
    >>> model.sample_paths(state, times, n=5).shape  # joint draws of whole paths
    torch.Size([5, 4, 2, 2])
    """

    def __init__(
        self,
        n_variables: int,
        hidden_size: int = 50,
        p_hidden: int = 25,
        prep_hidden: int = 25,
        emission: str | MaskedEmission = "gaussian",
        emission_options: dict | None = None,
        static_dim: int = 0,
        n_inputs: int = 0,
        future_inputs: Sequence[int] | None = None,
        solver: SolverOptions | dict | None = None,
        dynamics: str = "ode",
        planning: str = "auto",
        post_jump_weight: float = 0.1,
        update_dropout: float = 0.0,
        forecast_cut: float = 0.0,
        start_time: float | None = 0.0,
        carry_forward: bool = False,
        trend: bool = False,
    ):
        super().__init__()
        positive_int(n_variables, "n_variables")
        positive_int(hidden_size, "hidden_size")
        self.n_variables, self.hidden_size = n_variables, hidden_size
        self.carry_forward = bool(carry_forward)
        if trend and not self.carry_forward:
            raise ValueError("trend=True needs carry_forward=True")
        self.trend = bool(trend)
        n_blocks = (3 if self.carry_forward else 0) + (3 if self.trend else 0)
        context_dim = hidden_size + static_dim + 3 * n_inputs + n_blocks * n_variables
        options = {"hidden": (p_hidden,), **(emission_options or {})}
        if options.get("linear_skip") == "features":  # the carried features, not the state
            options["linear_skip"] = n_blocks * n_variables or True
        emission = resolve_emission(emission, n_variables, context_dim, options)
        if self.carry_forward and not isinstance(emission, LastValueEmission):
            emission = LastValueEmission(emission)
        self.emission = emission
        self.dynamics = choice(dynamics, "dynamics", ("ode", *FLOWS))
        self.planning = choice(planning, "planning", ("auto", "greedy", "index"))
        if self.dynamics == "ode":
            self.ode = GRUODECell(hidden_size, context_dim=static_dim)
        else:
            self.flow = build_flow(self.dynamics, hidden_size)
        self.bayes = GRUBayes(n_variables, emission.n_statistics, prep_hidden, hidden_size)
        self.static_dim = static_dim
        self._register_inputs(n_inputs, future_inputs)
        if self.n_inputs:
            self.input_jump = InputJump(self.n_inputs, hidden_size)
        if static_dim:
            self.init_net = nn.Sequential(nn.Linear(static_dim, hidden_size), nn.Tanh())
        else:
            self.h0 = nn.Parameter(torch.zeros(hidden_size))
        if isinstance(solver, dict):
            solver = SolverOptions(**solver)
        self.solver = solver or SolverOptions(method="exp_euler", step_size=1.0)
        self.post_jump_weight = float(post_jump_weight)
        self.update_dropout = probability(update_dropout, "update_dropout")
        self.forecast_cut = probability(forecast_cut, "forecast_cut", include_one=True)
        self.start_time = start_time
        self.nfe = NFECounter()

    # ------------------------------------------------------------------ building blocks

    def initial_state(self, batch: IrregularBatch) -> FilterState:
        ref = self._reference()
        b = batch.times.shape[0]
        static = self._batch_static(batch, ref, self.static_dim)
        h = self.h0.to(ref).expand(b, -1) if static is None else self.init_net(static)
        if self.start_time is None:
            t0 = batch.times[:, 0].to(ref) if batch.times.shape[1] else ref.new_zeros(b)
        else:
            t0 = torch.full((b,), float(self.start_time), dtype=ref.dtype, device=ref.device)
        u = ref.new_zeros(b, self.n_inputs) if self.n_inputs else None
        inputs = {"u_last": u, "u_time": u, "u_seen": u}
        if not self.carry_forward:
            return FilterState(h, t0, static=static, **inputs)
        zeros = ref.new_zeros(b, self.n_variables)
        sums = ref.new_zeros(b, self.n_variables, 5) if self.trend else None
        return FilterState(h, t0, zeros, zeros, zeros, sums, static, **inputs)

    def context(self, h: Tensor, state: FilterState, t: Tensor) -> Tensor:
        """The emission's context at times ``t``: ``h (..., H)``, the series' static covariates if
        any, each input's last given value, whether given and the log of one plus the time since
        (with inputs), plus with ``carry_forward`` the carried values of ``state`` (rows of
        ``h``'s leading dimension) and the time since them."""
        extra = h.dim() - 2
        blocks = [h]
        if state.static is not None:
            s = state.static
            blocks.append(s.view(s.shape[0], *([1] * extra), -1).expand(*h.shape[:-1], s.shape[-1]))
        if state.u_last is not None:
            shape_u = (*h.shape[:-1], self.n_inputs)

            def spread_u(x: Tensor) -> Tensor:
                return x.view(x.shape[0], *([1] * extra), -1).expand(shape_u)

            given = spread_u(state.u_seen)
            since = (t.unsqueeze(-1) - spread_u(state.u_time)).clamp_min(0)
            blocks += [spread_u(state.u_last) * given, given, torch.log1p(since) * given]
        if not self.carry_forward:
            return torch.cat(blocks, dim=-1) if len(blocks) > 1 else h
        shape = (*h.shape[:-1], self.n_variables)

        def spread(x: Tensor) -> Tensor:
            return x.view(x.shape[0], *([1] * extra), -1).expand(shape)

        last, last_time, seen = spread(state.last), spread(state.last_time), spread(state.seen)
        elapsed = (t.unsqueeze(-1) - last_time).clamp_min(0)
        if self.trend:
            blocks += self._history_features(state, t, last, seen, spread)
        blocks += [last * seen, seen, torch.log1p(elapsed) * seen]
        return torch.cat(blocks, dim=-1)

    def _history_features(self, state: FilterState, t: Tensor, last: Tensor, seen: Tensor, spread) -> list:
        """Per variable: running mean minus last value, least-squares line at ``t`` minus last
        value (0 until two distinct times), log count; clamped to +-10 standard deviations."""
        n, st, sy, stt, sty = (spread(state.sums[..., k]) for k in range(5))
        count = n.clamp_min(1.0)
        mean = sy / count
        var_t = stt / count - (st / count) ** 2
        lined = var_t > 1e-6
        slope = torch.where(lined, (sty / count - (st / count) * mean) / var_t.clamp_min(1e-6), 0.0)
        line = mean + slope * (t.unsqueeze(-1) - st / count)
        to_mean = ((mean - last) * seen).clamp(-10.0, 10.0)
        to_line = torch.where(lined, line - last, 0.0).clamp(-10.0, 10.0)
        return [to_mean, to_line, torch.log1p(n)]

    def _plan(self, dts: Tensor) -> list[int | None]:
        return self._step_plan(dts, self.solver, self.dynamics != "ode")

    def _advance(self, h: Tensor, dt: Tensor, n_steps: int | None, static: Tensor | None = None) -> Tensor:
        if self.dynamics != "ode":
            return self.flow(h, dt)  # F(h, 0) = h: padding intervals leave the state as it is
        return self._integrate(self.ode.bind(static), h, dt, self.solver, n_steps, self.nfe)

    # ------------------------------------------------------------------ sequence-model API

    def _run(self, batch: IrregularBatch, score: bool) -> tuple[FilterState, Tensor, Tensor]:
        state = self.initial_state(batch)
        h = state.h
        times = batch.times.to(h)
        values, mask = batch.values.to(h), batch.mask.to(h)
        dts = self._intervals(state.time, times)
        if self.start_time is not None:
            self._check_start(dts, f"start_time={self.start_time}")
        plan = self._schedule(dts, batch.lengths)
        rows = torch.arange(h.shape[0], device=h.device)
        inputs = self._batch_inputs(batch, h)
        cut = self._training_cuts(batch.lengths.to(h.device)) if score and self.training else None
        nll_pre = h.new_zeros(())
        nll_post = h.new_zeros(())
        for j in range(len(plan)):
            h = self._advance_block(h, plan, j, state.static)
            k, reach = plan.index[j], plan.reach[j].unsqueeze(-1)
            y, m, t = values[rows, k], mask[rows, k] * reach, times[rows, k]
            context = self.context(h, state, t)
            log_prob, stats = self.emission.log_prob_and_statistics(y, m, context)
            if score:
                nll_pre = nll_pre - log_prob.sum()
            if score and self.training:
                nll_pre = nll_pre + self.emission.auxiliary_nll(y, m, context).sum()
            if score and self.training and self.update_dropout:
                keep = torch.rand(m.shape[0], 1, device=m.device) >= self.update_dropout
                m = m * keep.to(m.dtype)
            if cut is not None:
                m = m * (k < cut).to(m.dtype).unsqueeze(-1)
            h = self.bayes(h, stats, m)
            if score and self.post_jump_weight:
                # The carried values before this observation: after it, the change would be zero.
                nll_post = nll_post - self.emission.log_prob(y, m, self.context(h, state, t)).sum()
            state = state.observe(y, m, t)
            if inputs is not None:
                u, u_mask = inputs[0][rows, k], inputs[1][rows, k] * reach
                if cut is not None:  # past-only inputs after the cut are unknown, as in forecasts
                    u_mask = u_mask * (1 - (k >= cut).to(h.dtype).unsqueeze(-1) * self.past_only.to(h))
                h = self.input_jump(h, u, u_mask)
                state = state.observe_inputs(u, u_mask, t)
        final = FilterState(h, self._last_times(times, batch.lengths, state.time), *state._fields()[2:])
        return final, nll_pre, nll_post

    def _advance_block(self, h: Tensor, plan: BlockPlan, j: int, static: Tensor | None) -> Tensor:
        """The rows of ``h`` after block ``j`` of ``plan``: each its own steps in a ragged block."""
        if not plan.ragged[j]:
            return self._advance(h, plan.span[j], plan.n_steps[j], static)
        order = plan.order[j]
        field = self.ode.bind(None if static is None else static.index_select(0, order))
        step = plan.step[j].index_select(0, order)
        # index_select, not h[order]: its gradient is an index_add, several times cheaper
        moved = integrate_ragged(field, h.index_select(0, order), step, plan.counts[j], self.solver, self.nfe)
        return torch.empty_like(moved).index_copy(0, order, moved)

    def _schedule(self, dts: Tensor, lengths: Tensor) -> BlockPlan:
        """The filter loop's blocks (:mod:`ctflow.models.lockstep`): planned per series' gaps for
        a fused fixed-step solver, one block per observation index otherwise."""
        fixed = self.dynamics == "ode" and self.solver.spec.fixed_step
        policy = self.planning if fixed and self.solver.method in FUSED_METHODS else "index"
        step_size = self.solver.step_size if fixed else math.inf
        return plan_blocks(dts, lengths, step_size, self.solver.max_steps if fixed else None, policy)

    def _training_cuts(self, lengths: Tensor) -> Tensor | None:
        """Index of each series' first observation not used for updates (its length if uncut)."""
        if not self.forecast_cut:
            return None
        cut_here = torch.rand(lengths.shape, device=lengths.device) < self.forecast_cut
        first = 1 + (torch.rand(lengths.shape, device=lengths.device) * (lengths - 1).clamp_min(0)).long()
        return torch.where(cut_here & (lengths > 1), first, lengths)

    def loss(self, batch: IrregularBatch) -> Tensor:
        """Mean negative log-likelihood per observed value: pre-jump + weighted post-jump."""
        _, nll_pre, nll_post = self._run(batch, score=True)
        return self._per_observed_value(nll_pre + self.post_jump_weight * nll_post, batch)

    def nll_terms(self, batch: IrregularBatch) -> tuple[Tensor, Tensor]:
        """Total pre-jump NLL (nats) and number of observed values (for evaluation)."""
        _, nll_pre, _ = self._run(batch, score=True)
        return nll_pre, batch.mask.sum().to(nll_pre)

    def filter(self, batch: IrregularBatch) -> FilterState:
        """State of every series after its last observation."""
        state, _, _ = self._run(batch, score=False)
        return state

    def predict(
        self, state: FilterState, times: Tensor, inputs: QueryInputs | None = None
    ) -> PredictiveDistribution:
        """Predictive densities at ``times (B, Q)`` (no further observations assumed); known-future
        ``inputs`` at the query times act after each query's prediction."""
        times = self._check_query_times(times, state.h.shape[0], state.h)
        inputs = self._check_inputs(inputs, times)
        dts = self._intervals(state.time, times)
        plan = self._plan(dts)
        h, hs = state.h, []
        if inputs is not None:  # the inputs change the state and the carried inputs along the way
            contexts = []
            for k, n_steps in enumerate(plan):
                h = self._advance(h, dts[:, k], n_steps, state.static)
                contexts.append(self.context(h, state, times[:, k]))
                h = self.input_jump(h, inputs.values[:, k], inputs.mask[:, k])
                state = state.observe_inputs(inputs.values[:, k], inputs.mask[:, k], times[:, k])
            if contexts:
                return PredictiveDistribution(self.emission, torch.stack(contexts, dim=1))
        for k, n_steps in enumerate(plan):
            h = self._advance(h, dts[:, k], n_steps, state.static)
            hs.append(h)
        h_all = torch.stack(hs, dim=1) if hs else state.h.new_zeros(state.h.shape[0], 0, self.hidden_size)
        return PredictiveDistribution(self.emission, self.context(h_all, state, times))

    def sample_paths(
        self, state: FilterState, times: Tensor, n: int, inputs: QueryInputs | None = None
    ) -> Tensor:
        """Joint samples ``(n, B, Q, D)`` over the query times: sample, update as if observed,
        apply the known-future ``inputs`` given at that time, continue."""
        times = self._check_query_times(times, state.h.shape[0], state.h)
        inputs = self._check_inputs(inputs, times)
        self._check_n_paths(n)
        b = state.h.shape[0]
        rep = state.repeat(n)
        dts = self._intervals(state.time, times)
        plan = self._plan(dts)
        dts = dts.repeat(n, 1)
        times = times.repeat(n, 1)
        h, out = rep.h, []
        full = torch.ones(h.shape[0], self.n_variables, dtype=h.dtype, device=h.device)
        observed = None
        if inputs is not None:
            if inputs.is_query is not None:
                observed = inputs.is_query.repeat(n, 1).unsqueeze(-1)
            inputs = QueryInputs(inputs.values.repeat(n, 1, 1), inputs.mask.repeat(n, 1, 1))
        for k, n_steps in enumerate(plan):
            h = self._advance(h, dts[:, k], n_steps, rep.static)
            context = self.context(h, rep, times[:, k])
            y = self.emission.sample(context, 1)[0]  # all variables jointly
            out.append(y)
            m = full if observed is None else full * observed[:, k]  # cells with inputs only: no draw
            h = self.bayes(h, self.emission.statistics(y, m, context), m)
            rep = rep.observe(y, m, times[:, k])
            if inputs is not None:
                h = self.input_jump(h, inputs.values[:, k], inputs.mask[:, k])
                rep = rep.observe_inputs(inputs.values[:, k], inputs.mask[:, k], times[:, k])
        paths = torch.stack(out, dim=1) if out else h.new_zeros(h.shape[0], 0, self.n_variables)
        return paths.view(n, b, -1, self.n_variables)

    def extra_repr(self) -> str:
        solver = f"solver={self.solver.method}, step_size={self.solver.step_size}"
        if self.dynamics != "ode":
            solver = f"dynamics={self.dynamics}"
        return f"{solver}, carry_forward={self.carry_forward}, trend={self.trend}"
