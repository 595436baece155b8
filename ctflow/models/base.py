"""The contract every sequence model keeps, and the helpers its implementations share.

A sequence model is a density over irregularly sampled, partly observed multivariate series
(:class:`~ctflow.data.IrregularBatch` with ``B`` series of up to ``N`` observation rows over ``D``
variables). It is trained by :meth:`SequenceModel.loss`, scored by
:meth:`SequenceModel.nll_terms` and forecasts in two steps: :meth:`SequenceModel.filter`
conditions on the observed context, then :meth:`SequenceModel.predict` gives marginal predictive
densities at later times and :meth:`SequenceModel.sample_paths` joint draws over them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from ..checks import non_negative_int, positive_int
from ..data.irregular import IrregularBatch
from ..ode import NFECounter, SolverOptions, fixed_step_plan, integrate_intervals

__all__ = ["Predictive", "QueryInputs", "SequenceModel"]


class QueryInputs(NamedTuple):
    """Known-future inputs at the query times: ``values (B, Q, E)`` in model units and ``mask (B,
    Q, E)`` (1 where given). An input at a query applies after that query's prediction.
    ``is_query (B, Q)``: 0 at cells that only carry inputs (no draw is made there in a sample
    path, nothing is observed); None: every cell is a query."""

    values: Tensor
    mask: Tensor
    is_query: Tensor | None = None


class Predictive(Protocol):
    """Predictive densities at ``Q`` query times of each of ``B`` series over ``D`` variables.

    ``log_prob`` scores values jointly over the observed variables of each query point; every
    other quantity is per variable (the marginal predictive).
    """

    def log_prob(self, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log-density ``(B, Q)`` in nats of the entries of ``y (B, Q, D)`` where ``mask`` is 1
        (default: all observed)."""

    def mean(self, n_samples: int = 256) -> Tensor:
        """Marginal means ``(B, Q, D)``."""

    def variance(self, n_samples: int = 256) -> Tensor:
        """Marginal variances ``(B, Q, D)``."""

    def cdf(self, y: Tensor) -> Tensor:
        """Marginal CDFs at ``y (B, Q, D)``."""

    def quantile(self, q: float | Tensor, n_samples: int = 1000) -> Tensor:
        """Marginal quantiles ``(B, Q, D)`` at level ``q`` (strictly inside (0, 1))."""

    def sample(self, n: int) -> Tensor:
        """``n`` draws ``(n, B, Q, D)`` from each query point's marginals, independently per point."""


class SequenceModel(nn.Module, abc.ABC):
    """A density over irregularly sampled series that can be trained, scored and forecast from.

    A filter state (what :meth:`filter` returns) is opaque to callers: they pass it back to
    :meth:`predict` and :meth:`sample_paths` of the same model, whose query ``times (B, Q)`` are
    in the batch's time units, one row per series of the filtered batch, non-decreasing within
    each row and not before that series' last observation.

    ``n_particles``: how many states a filter state holds per series (1, or the posterior
    particles of models that forecast from a mixture), which sizes forecasting's chunks.
    """

    n_particles: int = 1

    @abc.abstractmethod
    def loss(self, batch: IrregularBatch) -> Tensor:
        """The training objective, a scalar to minimise, in nats per observed value.

        It is the model's negative log-likelihood of ``batch`` (or a negative bound on it, plus
        any training-only terms) summed over series and divided by the number of observed values
        (1 if there are none); an ensemble sums its members' losses. Training mode may draw
        random numbers (posterior samples, dropout of updates).
        """

    @abc.abstractmethod
    def nll_terms(self, batch: IrregularBatch) -> tuple[Tensor, Tensor]:
        """For evaluation: the total negative log-likelihood of ``batch`` in nats (a scalar
        tensor, summed over every observed value of every series; an estimate or bound where the
        likelihood is intractable) and the number of observed values (a scalar tensor).

        Their ratio is the NLL per observed value; summing both over batches and dividing gives
        it for a whole data set.
        """

    @abc.abstractmethod
    def filter(self, batch: IrregularBatch) -> Any:
        """The state of every series of ``batch`` after its last observation (conditioned on all
        its observations), for :meth:`predict` and :meth:`sample_paths`."""

    @abc.abstractmethod
    def predict(self, state: Any, times: Tensor, inputs: QueryInputs | None = None) -> Predictive:
        """Predictive densities at query ``times (B, Q)`` from a :meth:`filter` state, with no
        further observations assumed: each query point's marginal predictive (:class:`Predictive`).
        ``inputs``: known-future inputs at the query times (models that take inputs)."""

    @abc.abstractmethod
    def sample_paths(self, state: Any, times: Tensor, n: int, inputs: QueryInputs | None = None) -> Tensor:
        """``n >= 1`` joint draws ``(n, B, Q, D)`` of all variables over the query ``times (B, Q)``
        from a :meth:`filter` state: each path is one draw of the whole future (draws at later
        times depend on those at earlier ones), unlike :meth:`Predictive.sample`."""

    n_inputs: int = 0

    def known_inputs(self, batch: IrregularBatch) -> QueryInputs | None:
        """The inputs of the rows of ``batch`` that a forecast may know in advance (as
        :meth:`predict`'s ``inputs`` with ``times = batch.times``), past-only inputs masked out:
        what a forecast of held-out rows is given. None for a batch without inputs."""
        if batch.inputs is None:
            return None
        if not self.n_inputs:
            raise ValueError(
                f"{type(self).__name__} was built without inputs; the batch has {batch.input_names}"
            )
        ref = self._reference()
        known = 1.0 - self.past_only_inputs().to(ref)
        return QueryInputs(batch.inputs.to(ref), batch.input_mask.to(ref) * known)

    def past_only_inputs(self) -> Tensor:
        """``(E,)`` 1 for each input that is not known in advance."""
        past_only = getattr(self, "past_only", None)
        return torch.zeros(self.n_inputs) if past_only is None else past_only

    def _register_inputs(self, n_inputs: int, future_inputs: Sequence[int] | None) -> None:
        """Set ``n_inputs`` and the ``past_only`` mask from the indices of the known-future inputs
        (None: all of them)."""
        self.n_inputs = non_negative_int(n_inputs, "n_inputs")
        known = range(self.n_inputs) if future_inputs is None else [int(i) for i in future_inputs]
        if any(not 0 <= i < self.n_inputs for i in known):
            raise ValueError(f"future_inputs must index the {self.n_inputs} inputs, got {list(known)}")
        past_only = torch.ones(self.n_inputs)
        past_only[list(known)] = 0.0
        self.register_buffer("past_only", past_only, persistent=False)

    def _batch_inputs(self, batch: IrregularBatch, like: Tensor) -> tuple[Tensor, Tensor] | None:
        """The batch's inputs and their mask on ``like``'s dtype and device (None for a model without)."""
        if not self.n_inputs:
            if batch.inputs is not None:
                raise ValueError(f"this model takes no inputs; the batch has {batch.input_names}")
            return None
        if batch.inputs is None or batch.n_inputs != self.n_inputs:
            got = None if batch.inputs is None else batch.input_names
            raise ValueError(f"this model needs a batch with {self.n_inputs} inputs, got {got}")
        return batch.inputs.to(like), batch.input_mask.to(like)

    def _batch_static(self, batch: IrregularBatch, like: Tensor, static_dim: int) -> Tensor | None:
        """The batch's static covariates on ``like``'s dtype and device, checked against
        ``static_dim`` (None for a model without)."""
        if not static_dim:
            return None
        if batch.static is None or batch.static.shape[-1] != static_dim:
            raise ValueError(f"this model needs static covariates with {static_dim} columns")
        return batch.static.to(like)

    def _check_inputs(self, inputs: QueryInputs | None, times: Tensor) -> QueryInputs | None:
        """``inputs`` on ``times``' dtype and device, checked against the model's ``n_inputs``."""
        if inputs is None:
            return None
        if not self.n_inputs:
            raise ValueError(f"{type(self).__name__} was built without inputs; it takes none")
        values, mask = (torch.as_tensor(x).to(times) for x in inputs[:2])
        shape = (*times.shape, self.n_inputs)
        if tuple(values.shape) != shape or tuple(mask.shape) != shape:
            raise ValueError(f"inputs must have shape (B, Q, E) = {shape}, got {tuple(values.shape)}")
        is_query = inputs.is_query if isinstance(inputs, QueryInputs) else None
        if is_query is not None:
            is_query = torch.as_tensor(is_query).to(times)
            if is_query.shape != times.shape:
                raise ValueError(f"is_query must have the shape of times {tuple(times.shape)}")
        return QueryInputs(values, mask, is_query)

    def _reference(self) -> Tensor:
        """A parameter: data are moved to its dtype and device (the model's)."""
        for p in self.parameters():
            return p
        raise RuntimeError(f"{type(self).__name__} has no parameters to take a dtype and device from")

    # ------------------------------------------------------------------ shared helpers

    @staticmethod
    def _last_times(times: Tensor, lengths: Tensor, default: Tensor) -> Tensor:
        """Each series' last observation time ``(B,)`` from padded ``times (B, N)`` and ``lengths
        (B,)``; ``default (B,)`` for a series without observations."""
        lengths = lengths.to(times.device)
        if not times.shape[1]:
            return default
        last = (lengths - 1).clamp_min(0)
        return torch.where(lengths > 0, times.gather(1, last.unsqueeze(1)).squeeze(1), default)

    @staticmethod
    def _intervals(start: Tensor, times: Tensor) -> Tensor:
        """Lengths ``(B, K)`` of the intervals from ``start (B,)`` through ``times (B, K)``."""
        return torch.diff(torch.cat([start.unsqueeze(1), times], dim=1), dim=1)

    @staticmethod
    def _check_start(dts: Tensor, start: str) -> None:
        """Raise a ``ValueError`` if an interval of ``dts`` is negative, i.e. (times being sorted
        within each series) an observation comes before the ``start`` of its series' dynamics."""
        if dts.numel() and float(dts.min()) < 0:
            raise ValueError(f"observation times must be >= {start}")

    @staticmethod
    def _check_query_times(times: Tensor, n_series: int, like: Tensor) -> Tensor:
        """Query ``times`` as a tensor of ``like``'s dtype and device, checked to have shape
        ``(n_series, Q)`` and to be non-decreasing within each series."""
        times = torch.as_tensor(times).to(like)
        if times.dim() != 2 or times.shape[0] != n_series:
            raise ValueError(
                f"times must have shape (n_series={n_series}, n_queries), got {tuple(times.shape)}"
            )
        if times.numel() and bool((torch.diff(times, dim=1) < 0).any()):
            raise ValueError("query times must be non-decreasing within each series")
        return times

    @staticmethod
    def _check_n_paths(n: int) -> None:
        """Raise a ``ValueError`` unless at least one path is asked for."""
        positive_int(n, "n")

    @staticmethod
    def _per_observed_value(total: Tensor, batch: IrregularBatch) -> Tensor:
        """``total`` divided by the number of observed values of ``batch`` (at least 1)."""
        return total / batch.mask.sum().clamp_min(1).to(total)

    @staticmethod
    def _step_plan(dts: Tensor, solver: SolverOptions, solver_free: bool) -> list[int | None]:
        """Fixed-step step counts for each column of intervals ``dts (B, K)`` (one device read);
        none for dynamics without a solver (a neural flow) or an adaptive one."""
        return [None] * dts.shape[1] if solver_free else fixed_step_plan(dts, solver)

    @staticmethod
    def _integrate(
        field: Callable[[Tensor], Tensor],
        x: Tensor,
        dt: Tensor,
        solver: SolverOptions,
        n_steps: int | None,
        counter: NFECounter | None = None,
    ) -> Tensor:
        """States ``x (B, H)`` integrated under ``dx/dt = field(x)`` over intervals ``dt (B,)``, each row
        over its own: ``n_steps`` fixed steps (from :func:`ctflow.ode.fixed_step_plan`; ``0`` leaves
        ``x`` as it is), ``None`` for the solver's own choice."""
        if n_steps == 0:
            return x
        return integrate_intervals(field, x, dt, solver, n_steps, counter=counter)
