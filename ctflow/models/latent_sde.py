"""Latent SDE: a latent ODE whose latent path is a diffusion, fitted by a path-space bound.

Li, Wong, Chen & Duvenaud (2020), "Scalable Gradients for Stochastic Differential Equations".

Generative model: ``z0 ~ N(0, I)``, prior SDE ``dz = h(z) dt + g dW``, emissions ``p(y | z(t))``.
Variational posterior: ``q(z0 | x)`` from the backward ODE-RNN (Gaussian or a flow, as in
:class:`~ctflow.models.LatentODE`), then the posterior SDE ``dz = (h(z) + c(z, ctx_k)) dt + g dW``
where ``ctx_k``, the encoder's summary of observation ``k`` and everything after it, drives the
interval that ends at observation ``k``. With ``u = c / g``:

* ELBO: ``E[log p(x | z) + log p(z0) - log q(z0 | x) - KL]`` with the path KL
  ``int 1/2 |u|^2 dt`` (Girsanov), accumulated along each simulated path;
* importance weights (IWAE bound, forecasting particles): the exact log-ratio of the path
  measures ``-int u.dW - 1/2 int |u|^2 dt`` along the same Brownian path.

Forecasts simulate the prior SDE from importance-resampled posterior particles. With the diffusion
fixed at zero the model is exactly the latent ODE with drift ``h`` (the posterior correction is
then unused).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import choice
from ..data.irregular import IrregularBatch
from ..dynamics.sde import LatentSDEDynamics
from ..ode import fixed_step_plan
from ..sde import SDE_METHODS, integrate_sde_intervals
from .base import QueryInputs
from .latent_ode import LatentODE

__all__ = ["LatentSDE"]


class LatentSDE(LatentODE):
    """Latent SDE (Li, Wong, Chen & Duvenaud 2020, "Scalable Gradients for Stochastic
    Differential Equations") with the recognition network, posteriors and emissions of
    :class:`~ctflow.models.LatentODE`.

    Args (besides those of :class:`LatentODE`, whose ``decoder`` is the prior drift ``h`` here):
        diffusion: initial (or fixed) diffusion of every latent dimension.
        learn_diffusion: learn the diffusion.
        sde_method: torchsde fixed-step scheme (``euler``; the step size is ``solver.step_size``).
        objective: ``"elbo"`` (default; the path KL in closed form) or ``"iwae"``.
    """

    def __init__(
        self,
        n_variables: int,
        latent_dim: int = 16,
        hidden_size: int = 32,
        ode_hidden: int = 64,
        diffusion: float = 0.1,
        learn_diffusion: bool = True,
        sde_method: str = "euler",
        objective: str = "elbo",
        **kwargs,
    ):
        choice(sde_method, "sde_method", SDE_METHODS)
        if kwargs.get("dynamics", "ode") != "ode":
            raise ValueError(
                "a LatentSDE's dynamics are its SDE; neural flows replace ODEs (LatentODE, GRUODEBayes)"
            )
        dynamics = LatentSDEDynamics(latent_dim, hidden_size, ode_hidden, diffusion, learn_diffusion)
        super().__init__(
            n_variables,
            latent_dim=latent_dim,
            hidden_size=hidden_size,
            ode_hidden=ode_hidden,
            objective=objective,
            **kwargs,
        )
        self.dynamics = dynamics
        self.sde_method = sde_method
        if self.solver.method != "euler" or self.solver.step_size is None:
            raise ValueError("LatentSDE needs solver={'method': 'euler', 'step_size': ...} (fixed steps)")

    # ------------------------------------------------------------------ posterior paths
    def _posterior_step(self, state: Tensor, context: Tensor, dt: Tensor, n_steps: int) -> Tensor:
        """Advance the augmented state ``[z, KL, log dP/dQ]`` over one interval per row."""
        latent = self.latent_dim
        g = self.dynamics.diffusion().to(state)

        def split(y: Tensor) -> tuple[Tensor, Tensor]:
            z = y[:, :latent]
            u = self.dynamics.posterior_correction(z, context) / g
            return z, u

        def drift(y: Tensor) -> Tensor:
            z, u = split(y)
            half_sq = 0.5 * u.square().sum(-1, keepdim=True)
            return torch.cat([self.decoder(z) + g * u, half_sq, -half_sq], dim=-1)

        def diffusion(y: Tensor) -> Tensor:
            _, u = split(y)
            b = y.shape[0]
            top = torch.diag_embed(g.expand(b, latent))
            return torch.cat([top, torch.zeros_like(u).unsqueeze(1), -u.unsqueeze(1)], dim=1)

        return integrate_sde_intervals(
            drift, diffusion, state, dt, n_steps, method="euler", counter=self.nfe, noise_type="general"
        )

    def decode_posterior(
        self, z0: Tensor, batch: IrregularBatch, states: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Along posterior paths from ``z0 (S, B, L)``: ``log p(x | path)``, the path KL, the path
        log-ratio ``log dP/dQ`` (each ``(S, B)``) and the latent state at the last observation."""
        s, b, L = z0.shape
        ref = z0
        values, mask, dts, plan = self._observation_steps(batch, ref)
        static = self._batch_static(batch, ref, self.static_dim)
        static_rows = None if static is None else static.repeat(s, 1)
        inputs = self._batch_inputs(batch, ref)
        y = torch.cat([z0.reshape(s * b, L), ref.new_zeros(s * b, 2)], dim=-1)
        log_lik = ref.new_zeros(s * b)
        for k, n_steps in enumerate(plan):
            if n_steps:
                y = self._posterior_step(y, states[:, k].repeat(s, 1), dts[:, k].repeat(s), n_steps)
            z = y[:, :L]
            context = z if static_rows is None else torch.cat([z, static_rows], dim=-1)
            log_lik = self._add_log_lik(log_lik, values[:, k].repeat(s, 1), mask[:, k].repeat(s, 1), context)
            if inputs is not None:
                y = torch.cat([self._jump(z, inputs, k, s), y[:, L:]], dim=-1)
        z_last = y[:, :L].view(s, b, L)
        return log_lik.view(s, b), y[:, L].view(s, b), y[:, L + 1].view(s, b), z_last

    def _log_weights(self, batch: IrregularBatch, n: int, exact: bool) -> tuple[Tensor, Tensor, Tensor]:
        if self.dynamics.deterministic:
            return super().log_weights(batch, n)
        summary, static, states = self._summary(batch, states=True)
        z0, log_q = self.posterior.rsample_and_log_prob(summary, n)
        log_lik, kl, log_ratio, z_last = self.decode_posterior(z0, batch, states)
        path = log_ratio if exact else -kl
        return log_lik + self.prior_log_prob(z0, static) - log_q + path, z_last, log_q

    def log_weights(self, batch: IrregularBatch, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """Importance log-weights with the exact path log-ratio (unbiased for ``p(x)``)."""
        return self._log_weights(batch, n, exact=True)

    def elbo(self, batch: IrregularBatch, n: int = 1) -> Tensor:
        """ELBO per series ``(B,)`` with the path KL in closed form (lower variance)."""
        return self._log_weights(batch, n, exact=False)[0].mean(0)

    # ------------------------------------------------------------------ prior paths (forecasting)
    def _trajectories(
        self, z: Tensor, t0: Tensor, times: Tensor, inputs: QueryInputs | None = None
    ) -> Tensor:
        """One prior-SDE path per particle: latent states ``(S, B, Q, L)`` at ``times (B, Q)``;
        known-future ``inputs`` act after each query."""
        if self.dynamics.deterministic:
            return super()._trajectories(z, t0, times, inputs)
        s, b, L = z.shape
        dts = self._intervals(t0, times)
        plan = fixed_step_plan(dts, self.solver)
        g = self.dynamics.diffusion().to(z)
        flat, out = z.reshape(s * b, L), []
        for k, n_steps in enumerate(plan):
            if n_steps:
                flat = integrate_sde_intervals(
                    self.decoder,
                    lambda y: g.expand_as(y),
                    flat,
                    dts[:, k].repeat(s),
                    n_steps,
                    method=self.sde_method,
                    counter=self.nfe,
                )
            out.append(flat.view(s, b, L))
            flat = self._jump(flat, inputs, k, s)
        if not out:
            return z.new_zeros(s, b, 0, L)
        return torch.stack(out, dim=2)

    def extra_repr(self) -> str:
        g = self.dynamics.diffusion().detach()
        learned = self.dynamics.learn_diffusion
        return f"{super().extra_repr()}, mean diffusion={float(g.mean()):.3g} (learned={learned})"
