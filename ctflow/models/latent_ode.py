"""Latent ODE with an ODE-RNN recognition network and Gaussian or flow posteriors.

Rubanova, Chen & Duvenaud (2019), "Latent ODEs for Irregularly-Sampled Time Series"; the
importance-weighted bound of Burda, Grosse & Salakhutdinov (2016), "Importance Weighted
Autoencoders".

Generative model: ``z0 ~ N(0, I)`` at time 0, ``dz/dt = f(z)``, and each observation drawn from
the emission density ``p(y | z(t))`` (masked to the observed variables, so partly observed rows
are scored exactly). Recognition: an ODE-RNN reads the series backwards and its state at the
first observation parametrises ``q(z0 | x)`` (:class:`~ctflow.models.posterior.Posterior`).

Forecasting conditions on a context by importance sampling: ``n_particles`` draws of ``z0``
from ``q`` are weighted by ``p(x, z0) / q(z0 | x)`` and resampled; each particle's trajectory
carries the predictive density forward, and the forecast is the mixture over particles.
Decoding runs all series (and all samples) in lockstep over observation indices, each series
integrated over its own intervals (:func:`ctflow.ode.integrate_intervals`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..checks import choice, non_negative_int, positive_int
from ..data.irregular import IrregularBatch
from ..dynamics.neural_flows import FLOWS, build_flow
from ..dynamics.odernn import ODEFunc, ODERNNEncoder
from ..flows.numerics import shuffled_draws, solve_increasing
from ..ode import NFECounter, SolverOptions
from .base import QueryInputs, SequenceModel
from .emissions import MaskedEmission, resolve_emission
from .posterior import Posterior

__all__ = ["LatentODE", "MixturePredictive", "ParticleState"]

_LOG_2PI = math.log(2 * math.pi)


@dataclass
class ParticleState:
    """Posterior particles ``z (S, B, L)`` of each series at its last observation ``time (B,)``,
    and the series' static covariates ``(B, S_static)`` for models that take them."""

    z: Tensor
    time: Tensor
    static: Tensor | None = None


class LatentInputJump(nn.Module):
    """The jump of a latent state at an exogenous input: ``z <- z + g([z, u * m, m])`` on the rows
    where some input is given (mask ``m``). The last layer starts at 0 (no jump)."""

    def __init__(self, n_inputs: int, latent_dim: int, hidden: int):
        super().__init__()
        last = nn.Linear(hidden, latent_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(nn.Linear(latent_dim + 2 * n_inputs, hidden), nn.Tanh(), last)

    def forward(self, z: Tensor, u: Tensor, mask: Tensor) -> Tensor:
        given = mask.amax(dim=-1, keepdim=True)
        return z + given * self.net(torch.cat([z, u * mask, mask], dim=-1))


class MixturePredictive:
    """Predictive density at query points: an equal-weight mixture over particles.

    ``h (S, B, Q, L)`` are the particles' latent states at the queries.
    """

    def __init__(self, emission: MaskedEmission, h: Tensor):
        self.emission, self.h = emission, h

    def log_prob(self, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log-density ``(B, Q)`` of ``y (B, Q, D)`` (observed entries of ``mask``)."""
        mask = torch.ones_like(y) if mask is None else mask
        s, d = self.h.shape[0], y.shape[-1]
        # Flattened to rows: some emissions (the joint flow) take 2-D contexts only.
        lp = self.emission.log_prob(
            y.expand(s, *y.shape).reshape(-1, d), mask.expand(s, *mask.shape).reshape(-1, d), self._rows()
        ).view(self.h.shape[:-1])
        return torch.logsumexp(lp, 0) - math.log(s)

    def _rows(self) -> Tensor:
        return self.h.reshape(-1, self.h.shape[-1])

    def _per_particle(self, x: Tensor) -> Tensor:
        return x.view(*self.h.shape[:-1], -1)

    def mean(self, n_samples: int = 256) -> Tensor:
        """``(B, Q, D)``: the average of the particles' emission means (exact given the particles)."""
        return self._per_particle(self.emission.mean(self._rows(), n_samples)).mean(0)

    def variance(self, n_samples: int = 256) -> Tensor:
        """``(B, Q, D)``: the mixture's variance (law of total variance over the particles)."""
        rows = self._rows()
        means = self._per_particle(self.emission.mean(rows, n_samples))
        second = self._per_particle(self.emission.variance(rows, n_samples)) + means.square()
        return second.mean(0) - means.mean(0).square()

    def cdf(self, y: Tensor) -> Tensor:
        """The mixture's marginal CDFs at ``y (B, Q, D)``."""
        return self.emission.cdf(y.expand(self.h.shape[0], *y.shape), self.h).mean(0)

    def cdf_function(self) -> Callable[[Tensor], Tensor]:
        """The mixture's marginal CDFs as a function of ``y (B, Q, D)``, each particle's emission
        network evaluated once."""
        cdf = self.emission.cdf_function(self.h)
        return lambda y: cdf(y.expand(*self.h.shape[:-1], y.shape[-1])).mean(0)

    def quantile(self, q: float | Tensor, n_samples: int = 1000) -> Tensor:
        """Marginal quantiles ``(B, Q, D)`` of the mixture over particles: bisection on its CDF
        (exact given the particles) inside ``[min, max]`` of the particles' own quantiles."""
        own = self.emission.quantile(self.h, q, n_samples)
        try:
            cdf = self.cdf_function()
        except NotImplementedError:  # an emission with a sampler only
            return torch.quantile(self.sample(n_samples), float(q), dim=0)
        level = torch.as_tensor(q, dtype=own.dtype, device=own.device).expand(own.shape[1:])
        return solve_increasing(cdf, None, level, own.min(0).values, own.max(0).values)

    def sample(self, n: int) -> Tensor:
        """Draws ``(n, B, Q, D)`` from each query's mixture, stratified over the particles: every
        particle's emission gives ``ceil(n / S)`` draws (its network evaluated once), which are
        shuffled independently per query and cut to ``n``."""
        s, b, q, _ = self.h.shape
        m = -(-n // s)
        return shuffled_draws(self.emission.marginal_sample(self._rows(), m).view(m * s, b, q, -1), n)


class LatentODE(SequenceModel):
    """Latent ODE (Rubanova, Chen & Duvenaud 2019, "Latent ODEs for Irregularly-Sampled Time Series").

    Args:
        n_variables: ``D``.
        latent_dim: size of ``z``.
        hidden_size: state size of the ODE-RNN encoder.
        ode_hidden: width of the decoder's and encoder's vector fields.
        p_hidden: hidden width of the emission network.
        emission: emission name (``gaussian``, ``mixlogistic``, ``maf``) or a
            :class:`~ctflow.models.emissions.MaskedEmission` over ``latent_dim``.
        posterior: ``gaussian`` or a flow name (``iaf``, ``planar``, ``radial``, ``sylvester``,
            ``realnvp``, ...) conditioned on the encoder state.
        posterior_layers, posterior_hidden: size of the posterior flow.
        objective: ``"elbo"`` or ``"iwae"`` (importance-weighted bound with ``n_samples`` draws).
        n_samples: posterior draws per series in the training objective.
        eval_samples: draws behind the ``log p(x)`` estimate of :meth:`nll_terms`.
        n_particles: posterior particles kept when forecasting.
        solver: decoder integration (default Euler, largest step 0.25 time units).
        encoder_solver: encoder integration (default: as ``solver``).
        decoder: the decoder's vector field ``f(z)`` (default an MLP with tanh layers).
        dynamics: ``"ode"`` (the decoder's ODE and an ODE-RNN encoder, integrated by the
            solvers) or a neural flow (``"gru_flow"``, ``"resnet_flow"``, ``"coupling_flow"``;
            Biloš et al. 2021, "Neural Flows: Efficient Alternative to Neural ODEs") that gives
            the latent state a gap later in one call, and the encoder's state likewise: no solver
            anywhere.
        static_dim: size of static covariates ``s``: the recognition network's summary is
            extended by them, the prior becomes ``N(mu(s), diag sigma(s)^2)`` (standard normal at
            initialisation) and the emission sees ``[z, s]``.
        n_inputs: number of exogenous inputs: the encoder reads them with the values, and the
            latent state jumps at each input (:class:`LatentInputJump`) after the row's targets are
            scored, in decoding and in forecasts given known-future inputs.
        future_inputs: indices of the inputs known in advance (None: all).

    >>> import torch
    >>> from ctflow.data import from_dataframe, load_double_ou
    >>> from ctflow.models import LatentODE
    >>> batch = from_dataframe(load_double_ou(4, seed=0, t_max=2.0, min_obs=3, max_obs=6))
    >>> model = LatentODE(2, latent_dim=4, hidden_size=8, ode_hidden=8, p_hidden=8, n_particles=4)
    >>> state = model.filter(batch)  # posterior particles of every series
    >>> times = batch.times[:, -1:] + torch.tensor([0.5, 1.0])  # (B, Q) query times
    >>> model.sample_paths(state, times, n=3).shape  # (n, B, Q, D) joint draws of whole paths
    torch.Size([3, 4, 2, 2])
    """

    def __init__(
        self,
        n_variables: int,
        latent_dim: int = 16,
        hidden_size: int = 32,
        ode_hidden: int = 64,
        p_hidden: int = 32,
        emission: str | MaskedEmission = "gaussian",
        emission_options: dict | None = None,
        posterior: str = "gaussian",
        posterior_layers: int = 4,
        posterior_hidden: tuple[int, ...] = (64,),
        objective: str = "iwae",
        n_samples: int = 4,
        eval_samples: int = 32,
        n_particles: int = 64,
        solver: SolverOptions | dict | None = None,
        encoder_solver: SolverOptions | dict | None = None,
        decoder: nn.Module | None = None,
        static_dim: int = 0,
        n_inputs: int = 0,
        future_inputs: Sequence[int] | None = None,
        dynamics: str = "ode",
    ):
        super().__init__()
        for name, value in (
            ("n_variables", n_variables),
            ("latent_dim", latent_dim),
            ("hidden_size", hidden_size),
            ("n_samples", n_samples),
            ("eval_samples", eval_samples),
            ("n_particles", n_particles),
        ):
            positive_int(value, name)
        choice(objective, "objective", ("elbo", "iwae"))
        self.n_variables, self.latent_dim = n_variables, latent_dim
        self.objective, self.n_samples = objective, n_samples
        self.eval_samples, self.n_particles = eval_samples, n_particles
        if isinstance(solver, dict):
            solver = SolverOptions(**solver)
        self.solver = solver or SolverOptions(method="euler", step_size=0.25)
        self._register_inputs(n_inputs, future_inputs)
        self.static_dim = non_negative_int(static_dim, "static_dim")
        self.flow_dynamics = choice(dynamics, "dynamics", ("ode", *FLOWS))
        if self.flow_dynamics != "ode" and decoder is not None:
            raise ValueError(f"decoder is an ODE's vector field; with dynamics={dynamics!r} the flow decodes")
        self.encoder = ODERNNEncoder(
            n_variables,
            hidden_size,
            ode_hidden,
            encoder_solver or self.solver,
            n_inputs=self.n_inputs,
            dynamics=self.flow_dynamics,
        )
        summary = hidden_size + self.static_dim
        self.posterior = Posterior(latent_dim, summary, posterior, posterior_layers, posterior_hidden)
        if self.flow_dynamics == "ode":
            self.decoder = decoder if decoder is not None else ODEFunc(latent_dim, ode_hidden, n_layers=2)
        else:
            self.flow = build_flow(self.flow_dynamics, latent_dim)
        options = {"hidden": (p_hidden,), **(emission_options or {})}
        self.emission = resolve_emission(emission, n_variables, latent_dim + self.static_dim, options)
        if self.static_dim:
            self.prior_net = nn.Linear(self.static_dim, 2 * latent_dim)
            nn.init.zeros_(self.prior_net.weight)
            nn.init.zeros_(self.prior_net.bias)
        if self.n_inputs:
            self.input_jump = LatentInputJump(self.n_inputs, latent_dim, ode_hidden)
        self.nfe = NFECounter()

    # ------------------------------------------------------------------ building blocks
    def _plan(self, dts: Tensor) -> list[int | None]:
        return self._step_plan(dts, self.solver, self.flow_dynamics != "ode")

    def _advance(self, z: Tensor, dt: Tensor, n_steps: int | None) -> Tensor:
        if self.flow_dynamics != "ode":
            return self.flow(z, dt)  # F(z, 0) = z: padding intervals leave the state as it is
        return self._integrate(self.decoder, z, dt, self.solver, n_steps, self.nfe)

    def prior_log_prob(self, z: Tensor, static: Tensor | None = None) -> Tensor:
        """``log p(z0)`` of draws ``z (..., B, L)``; given each series' static covariates
        ``(B, S)``, under the conditional prior."""
        if static is None or not self.static_dim:
            return -0.5 * (z.square() + _LOG_2PI).sum(-1)
        mean, log_scale = self.prior_net(static).chunk(2, dim=-1)
        eps = (z - mean) * torch.exp(-log_scale)
        return -0.5 * (eps.square() + _LOG_2PI).sum(-1) - log_scale.sum(-1)

    def _summary(
        self, batch: IrregularBatch, states: bool = False
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The posterior's context (the encoder's summary and the static covariates), the static
        covariates and, with ``states``, the encoder's state after each row."""
        out = self.encoder(batch, return_states=True) if states else (self.encoder(batch), None)
        summary, per_row = out
        static = self._batch_static(batch, summary, self.static_dim)
        if static is not None:
            summary = torch.cat([summary, static], dim=-1)
        return summary, static, per_row

    def _context(self, z: Tensor, static: Tensor | None) -> Tensor:
        """The emission's context: latent states ``z (S, B, ..., L)`` with the series' static
        covariates ``(B, S_static)`` appended."""
        if static is None:
            return z
        shape = (1, static.shape[0], *([1] * (z.dim() - 3)), static.shape[-1])
        return torch.cat([z, static.view(shape).expand(*z.shape[:-1], static.shape[-1])], dim=-1)

    def _jump(self, z: Tensor, inputs: tuple[Tensor, Tensor] | None, k: int, s: int) -> Tensor:
        """Rows ``z (S * B, L)`` after the inputs of row ``k`` (of each of the ``S`` copies)."""
        if inputs is None:
            return z
        return self.input_jump(z, inputs[0][:, k].repeat(s, 1), inputs[1][:, k].repeat(s, 1))

    def _observation_steps(
        self, batch: IrregularBatch, ref: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, list[int | None]]:
        """Values, mask, the intervals ``(B, N)`` from time 0 to each observation and their step plan."""
        times = batch.times.to(ref)
        values, mask = batch.values.to(ref), batch.mask.to(ref)
        dts = self._intervals(times.new_zeros(times.shape[0]), times)
        self._check_start(dts, f"0 (a {type(self).__name__} starts at time 0)")
        return values, mask, dts, self._plan(dts)

    def _add_log_lik(self, log_lik: Tensor, y: Tensor, mask: Tensor, z: Tensor) -> Tensor:
        """``log_lik`` plus the emission's log-density of ``y`` given the context ``z`` (less its
        auxiliary training term in training)."""
        log_lik = log_lik + self.emission.log_prob(y, mask, z)
        if self.training:
            log_lik = log_lik - self.emission.auxiliary_nll(y, mask, z)
        return log_lik

    def decode(self, z0: Tensor, batch: IrregularBatch) -> tuple[Tensor, Tensor]:
        """``log p(x | z0)`` ``(S, B)`` of each series' observations under draws ``z0 (S, B, L)``,
        and the latent state at each series' last observation ``(S, B, L)``."""
        s, b, L = z0.shape
        ref = z0
        values, mask, dts, plan = self._observation_steps(batch, ref)
        static = self._batch_static(batch, ref, self.static_dim)
        static_rows = None if static is None else static.repeat(s, 1)
        inputs = self._batch_inputs(batch, ref)
        z = z0.reshape(s * b, L)
        log_lik = ref.new_zeros(s * b)
        for k, n_steps in enumerate(plan):
            z = self._advance(z, dts[:, k].repeat(s), n_steps)
            context = z if static_rows is None else torch.cat([z, static_rows], dim=-1)
            log_lik = self._add_log_lik(log_lik, values[:, k].repeat(s, 1), mask[:, k].repeat(s, 1), context)
            z = self._jump(z, inputs, k, s)
        return log_lik.view(s, b), z.view(s, b, L)

    def log_weights(self, batch: IrregularBatch, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """Importance log-weights ``log p(x, z) - log q(z | x)`` ``(n, B)`` of ``n`` posterior
        draws per series, the draws' latent states at the last observation, and ``log q``."""
        summary, static, _ = self._summary(batch)
        z0, log_q = self.posterior.rsample_and_log_prob(summary, n)
        log_lik, z_last = self.decode(z0, batch)
        return log_lik + self.prior_log_prob(z0, static) - log_q, z_last, log_q

    # ------------------------------------------------------------------ objectives
    def elbo(self, batch: IrregularBatch, n: int = 1) -> Tensor:
        """Monte Carlo ELBO per series ``(B,)`` from ``n`` draws."""
        return self.log_weights(batch, n)[0].mean(0)

    def iwae_bound(self, batch: IrregularBatch, n: int) -> Tensor:
        """Importance-weighted bound ``log mean_k w_k`` per series ``(B,)``; tends to ``log p(x)``."""
        lw = self.log_weights(batch, n)[0]
        return torch.logsumexp(lw, 0) - math.log(n)

    def log_marginal(self, batch: IrregularBatch, n: int | None = None) -> Tensor:
        """Estimate of ``log p(x)`` per series with ``n`` (default ``eval_samples``) draws."""
        return self.iwae_bound(batch, n or self.eval_samples)

    def loss(self, batch: IrregularBatch) -> Tensor:
        """Negative bound (ELBO or IWAE) per observed value."""
        bound = (
            self.elbo(batch, self.n_samples)
            if self.objective == "elbo"
            else self.iwae_bound(batch, self.n_samples)
        )
        return self._per_observed_value(-bound.sum(), batch)

    def nll_terms(self, batch: IrregularBatch) -> tuple[Tensor, Tensor]:
        """``-log p(x)`` summed over series (IWAE estimate, ``eval_samples`` draws) and the count of
        observed values. By the chain rule this is the sum of one-step-ahead NLLs."""
        lp = self.log_marginal(batch)
        return -lp.sum(), batch.mask.sum().to(lp)

    # ------------------------------------------------------------------ forecasting
    def filter(self, batch: IrregularBatch) -> ParticleState:
        """Importance-resampled posterior particles at each series' last observation."""
        lw, z_last, _ = self.log_weights(batch, self.n_particles)
        probs = torch.softmax(lw.detach().T, dim=-1)  # (B, S)
        pick = torch.multinomial(probs, self.n_particles, replacement=True).T  # (S, B)
        z = z_last.gather(0, pick.unsqueeze(-1).expand(-1, -1, self.latent_dim))
        times = batch.times.to(z_last)
        static = self._batch_static(batch, z_last, self.static_dim)
        return ParticleState(z, self._last_times(times, batch.lengths, times.new_zeros(len(batch))), static)

    def _trajectories(
        self, z: Tensor, t0: Tensor, times: Tensor, inputs: QueryInputs | None = None
    ) -> Tensor:
        """Latent states ``(S, B, Q, L)`` at ``times (B, Q)`` from ``z (S, B, L)`` at ``t0 (B,)``;
        known-future ``inputs`` act after each query."""
        s, b, L = z.shape
        dts = self._intervals(t0, times)
        plan = self._plan(dts)
        flat, out = z.reshape(s * b, L), []
        for k, n_steps in enumerate(plan):
            flat = self._advance(flat, dts[:, k].repeat(s), n_steps)
            out.append(flat.view(s, b, L))
            flat = self._jump(flat, inputs, k, s)
        if not out:
            return z.new_zeros(s, b, 0, L)
        return torch.stack(out, dim=2)

    def predict(
        self, state: ParticleState, times: Tensor, inputs: QueryInputs | None = None
    ) -> MixturePredictive:
        """Predictive mixtures at ``times (B, Q)`` (no further observations assumed)."""
        times = self._check_query_times(times, state.z.shape[1], state.z)
        inputs = self._check_inputs(inputs, times)
        h = self._trajectories(state.z, state.time, times, inputs)
        return MixturePredictive(self.emission, self._context(h, state.static))

    def sample_paths(
        self, state: ParticleState, times: Tensor, n: int, inputs: QueryInputs | None = None
    ) -> Tensor:
        """Joint samples ``(n, B, Q, D)``: a particle per path, its trajectory, emission draws."""
        times = self._check_query_times(times, state.z.shape[1], state.z)
        inputs = self._check_inputs(inputs, times)
        self._check_n_paths(n)
        s, b, L = state.z.shape
        pick = torch.randint(s, (n, b), device=state.z.device)
        z = state.z.gather(0, pick.unsqueeze(-1).expand(-1, -1, L))
        h = self._context(self._trajectories(z, state.time, times, inputs), state.static)  # (n, B, Q, C)
        q = h.shape[2]
        return self.emission.sample(h.reshape(-1, h.shape[-1]), 1)[0].view(n, b, q, -1)

    def extra_repr(self) -> str:
        dynamics = (
            f"solver={self.solver.method}"
            if self.flow_dynamics == "ode"
            else f"dynamics={self.flow_dynamics}"
        )
        return f"objective={self.objective}, n_samples={self.n_samples}, {dynamics}"
