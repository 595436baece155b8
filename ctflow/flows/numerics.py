"""Numerical helpers shared by flows whose inverse is solved rather than written down."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..checks import real_number

__all__ = ["bisection_steps", "shuffled_draws", "solve_increasing"]


def bisection_steps(width: float, tol: float) -> int:
    """Halvings needed to shrink a bracket of ``width`` below ``tol``."""
    if width <= tol:
        return 1
    return math.ceil(math.log2(width / tol)) + 1


def solve_increasing(
    g: Callable[[Tensor], Tensor],
    dg: Callable[[Tensor], Tensor] | None,
    target: Tensor,
    lo: Tensor,
    hi: Tensor,
    iters: int | None = None,
    tol: float | None = None,
) -> Tensor:
    """Solve ``g(a) = target`` elementwise for a strictly increasing ``g`` bracketed by ``[lo, hi]``.

    Vectorised bisection without autograd: ``iters`` halvings, or as many as bring the widest
    bracket below ``tol``, by default below the dtype's resolution at the brackets' magnitude
    (no halving beyond what the floats can tell apart). Then, with ``dg`` (``g'``), one Newton
    step with autograd: its value changes by a rounding error but its gradient is the
    implicit-function gradient ``-(dg/dtheta - dtarget/dtheta) / g'(a)``, so the solution can be
    differentiated.
    """
    tol = real_number(tol, "tol", positive=True, allow_none=True)
    if iters is None and lo.numel():
        width = float((hi - lo).detach().max())
        if tol is None:
            magnitude = float(torch.maximum(lo.detach().abs(), hi.detach().abs()).max())
            tol = torch.finfo(lo.dtype).eps * max(magnitude, 1.0)
        iters = bisection_steps(width, tol) if math.isfinite(width) else 80
    elif iters is None:
        iters = 1
    with torch.no_grad():
        lo, hi = lo.detach().clone(), hi.detach().clone()
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            above = g(mid) > target
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        root = 0.5 * (lo + hi)
    if dg is None:
        return root
    return root - (g(root) - target) / dg(root)


def shuffled_draws(x: Tensor, n: int) -> Tensor:
    """The first ``n`` of draws ``x (k, B, Q, D)`` after shuffling them independently per ``(B, Q)``
    (stratified draws from a mixture, each component's draws in one block, become exchangeable)."""
    order = torch.rand(x.shape[:3], device=x.device).argsort(0)[:n]
    return x.gather(0, order.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))
