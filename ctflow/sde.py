"""SDE integration over per-series intervals, the stochastic counterpart of
:func:`ctflow.ode.integrate_intervals`.

Each row of a state advances by its own duration ``dt_b`` under an Ito SDE; rescaling time per row
(``s in [0, 1]``) puts the whole batch on one clock, so one ``torchsde`` solve advances every series.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .checks import choice

if TYPE_CHECKING:
    from .ode import NFECounter

__all__ = ["SDE_METHODS", "NOISE_TYPES", "integrate_sde_intervals"]

# Fixed-step SDE schemes of torchsde usable with diagonal noise, with the Levy area approximation
# of the Brownian motion each one needs (the stochastic Runge-Kutta scheme samples space-time areas).
_LEVY_AREA = {"euler": "none", "milstein": "none", "srk": "space-time"}
SDE_METHODS = tuple(_LEVY_AREA)
NOISE_TYPES = ("diagonal", "general")


class _RescaledSDE(nn.Module):
    """``dy = dt * f(y) ds + sqrt(dt) * g(y) dW_s`` on ``s in [0, 1]`` (per-row durations ``dt``)."""

    sde_type = "ito"

    def __init__(
        self,
        drift: Callable[[Tensor], Tensor],
        diffusion: Callable[[Tensor], Tensor],
        dt: Tensor,
        noise_type: str,
    ):
        super().__init__()
        self.drift_fn, self.diffusion_fn, self.noise_type = drift, diffusion, noise_type
        self.scale = dt.unsqueeze(-1)
        self.root = dt.clamp_min(0).sqrt().view(-1, *([1] * (2 if noise_type == "general" else 1)))
        self.nfe = 0

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        self.nfe += 1
        return self.scale * self.drift_fn(y)

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        return self.root * self.diffusion_fn(y)


def integrate_sde_intervals(
    drift: Callable[[Tensor], Tensor],
    diffusion: Callable[[Tensor], Tensor],
    y: Tensor,
    dt: Tensor,
    n_steps: int,
    method: str = "euler",
    counter: NFECounter | None = None,
    noise_type: str = "diagonal",
) -> Tensor:
    """Advance ``y (B, K)`` by ``dt (B,)`` under the Ito SDE ``dy = f(y) dt + g(y) dW``, all rows
    in lockstep, with ``n_steps`` fixed steps of torchsde's ``method`` in per-row rescaled time
    (a row with ``dt = 0`` stays put). ``noise_type="diagonal"``: ``g(y)`` has ``y``'s shape;
    ``"general"``: ``g(y)`` is ``(B, K, m)`` for ``m`` Brownian motions (Euler only). ``counter``
    (an :class:`~ctflow.ode.NFECounter`) counts the drift evaluations as forward evaluations.
    """
    choice(noise_type, "noise_type", NOISE_TYPES)
    choice(method, "SDE method", SDE_METHODS)
    if n_steps == 0:
        return y
    import torchsde

    sde = _RescaledSDE(drift, diffusion, dt, noise_type)
    s = torch.tensor([0.0, 1.0], dtype=y.dtype, device=y.device)
    noise_size = (y.shape[0], diffusion(y).shape[-1]) if noise_type == "general" else tuple(y.shape)
    # The Brownian path's entropy comes from torch's generator, so torch.manual_seed repeats runs.
    entropy = int(torch.randint(2**31 - 1, (), device="cpu"))
    bm = torchsde.BrownianInterval(
        0.0,
        1.0,
        size=noise_size,
        dtype=y.dtype,
        device=y.device,
        entropy=entropy,
        levy_area_approximation=_LEVY_AREA[method],
    )
    out = torchsde.sdeint(sde, y, s, bm=bm, method=method, dt=1.0 / n_steps)[-1]
    if counter is not None:
        counter.add(sde.nfe)
    return out
