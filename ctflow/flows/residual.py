"""Residual flows for variational posteriors: planar, radial and Sylvester.

Rezende & Mohamed (2015), "Variational Inference with Normalizing Flows" (planar, radial).
van den Berg, Hasenclever, Tomczak & Welling (2018), "Sylvester Normalizing Flows for Variational
Inference" (orthogonal, Householder and triangular Sylvester flows).

Each layer is the residual map ``f(x) = x + g(x)`` of its paper, implemented as ``forward`` with
its exact log-determinant. Their inverse has no closed form in general; here it is solved
numerically and exactly (to floating-point precision): planar and Sylvester reduce to monotone
scalar equations solved by vectorised bisection, radial to a quadratic. As posteriors, use them
through :class:`~ctflow.flows.base.Inverse` (what ``build("planar", ...)`` does) so that sampling
applies ``f`` in closed form.

With a context, every parameter is ``base + Linear(context)`` (amortised, as in the papers).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import Transform
from .numerics import solve_increasing

__all__ = ["Planar", "Radial", "Sylvester"]


class _Amortised(nn.Module):
    """A flat parameter vector, optionally shifted by a linear function of the context."""

    def __init__(self, init: Tensor, context_dim: int):
        super().__init__()
        self.value = nn.Parameter(init)
        self.context_dim = context_dim
        if context_dim:
            self.hyper = nn.Linear(context_dim, init.numel())
            nn.init.zeros_(self.hyper.weight)
            nn.init.zeros_(self.hyper.bias)

    def forward(self, context: Tensor | None) -> Tensor:
        """Parameters of shape ``(batch or 1, n)``."""
        if not self.context_dim:
            return self.value.unsqueeze(0)
        if context is None:
            raise ValueError(f"this layer needs a context of shape (batch, {self.context_dim})")
        return self.value + self.hyper(context)


def _check_vector(x: Tensor, dim: int, name: str) -> None:
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} expects input of shape (batch, {dim}), got {tuple(x.shape)}")


class Planar(Transform):
    """Planar flow ``f(x) = x + u_hat * tanh(w.x + b)``.

    ``u_hat = u + (m(w.u) - w.u) w / |w|^2`` with ``m(a) = -1 + softplus(a)`` keeps ``w.u_hat > -1``,
    which makes ``f`` invertible (Rezende & Mohamed 2015, "Variational Inference with Normalizing
    Flows", appendix A). ``inverse`` solves the scalar equation for ``w.x`` by bisection.
    """

    analytic_inverse = False

    def __init__(self, dim: int, context_dim: int = 0, init_scale: float = 0.1):
        super().__init__()
        self.dim = dim
        self.params = _Amortised(init_scale * torch.randn(2 * dim + 1), context_dim)

    def _unpack(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        p = self.params(context)
        u, w, b = p[:, : self.dim], p[:, self.dim : 2 * self.dim], p[:, 2 * self.dim]
        wu = (w * u).sum(1, keepdim=True)
        w_sq = w.square().sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        u_hat = u + (F.softplus(wu) - 1.0 - wu) * w / w_sq
        return u_hat, w, b

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_vector(x, self.dim, "Planar")
        u_hat, w, b = self._unpack(context)
        h = torch.tanh((x * w).sum(1) + b)
        z = x + u_hat * h.unsqueeze(1)
        ladj = torch.log1p((1 - h.square()) * (w * u_hat).sum(1))
        return z, ladj

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_vector(z, self.dim, "Planar")
        u_hat, w, b = self._unpack(context)
        wu = (w * u_hat).sum(1)
        target = (w * z).sum(1)
        # alpha = w.x solves alpha + (w.u_hat) tanh(alpha + b) = w.z, increasing since w.u_hat > -1.
        alpha = solve_increasing(
            lambda a: a + wu * torch.tanh(a + b),
            lambda a: 1 + wu * (1 - torch.tanh(a + b).square()),
            target,
            target - wu.abs(),
            target + wu.abs(),
        )
        h = torch.tanh(alpha + b)
        x = z - u_hat * h.unsqueeze(1)
        return x, -torch.log1p((1 - h.square()) * wu)


class Radial(Transform):
    """Radial flow ``f(x) = x + beta * (x - x0) / (alpha + |x - x0|)``.

    ``alpha = softplus(a) > 0`` and ``beta = -alpha + softplus(b) >= -alpha`` keep it invertible
    (Rezende & Mohamed 2015, "Variational Inference with Normalizing Flows"). The inverse is
    closed form: the radius solves a quadratic.
    """

    def __init__(self, dim: int, context_dim: int = 0, init_scale: float = 0.1):
        super().__init__()
        self.dim = dim
        self.params = _Amortised(init_scale * torch.randn(dim + 2), context_dim)

    def _unpack(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        p = self.params(context)
        x0 = p[:, : self.dim]
        alpha = F.softplus(p[:, self.dim])
        beta = -alpha + F.softplus(p[:, self.dim + 1])
        return x0, alpha, beta

    def _ladj(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        h = 1.0 / (alpha + r)
        bh = beta * h
        # d/dr [r (1 + beta h(r))] = 1 + beta h + beta h'(r) r, with h' = -h^2.
        return (self.dim - 1) * torch.log1p(bh) + torch.log1p(bh - beta * h.square() * r)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_vector(x, self.dim, "Radial")
        x0, alpha, beta = self._unpack(context)
        diff = x - x0
        r = diff.norm(dim=1)
        z = x + (beta / (alpha + r)).unsqueeze(1) * diff
        return z, self._ladj(r, alpha, beta)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_vector(z, self.dim, "Radial")
        x0, alpha, beta = self._unpack(context)
        diff = z - x0
        rz = diff.norm(dim=1)
        # |z - x0| = r (alpha + beta + r) / (alpha + r)  =>  r^2 + (alpha + beta - rz) r - alpha rz = 0.
        c = alpha + beta - rz
        r = 0.5 * (torch.sqrt(c.square() + 4 * alpha * rz) - c)
        x = x0 + diff * ((alpha + r) / (alpha + beta + r)).unsqueeze(1)
        return x, -self._ladj(r, alpha, beta)


class Sylvester(Transform):
    """Sylvester flow ``f(x) = x + Q R tanh(R~ Q^T x + b)``.

    van den Berg, Hasenclever, Tomczak & Welling (2018), "Sylvester Normalizing Flows for
    Variational Inference". ``R`` and ``R~`` are upper triangular with diagonals in ``(-1, 1)``
    (through tanh), so ``1 + h' R_ii R~_ii > 0`` and the map is invertible. ``Q`` is:

    * ``"orthogonal"``: ``dim x n_vectors`` with orthonormal columns (QR of a free matrix);
    * ``"householder"``: a product of ``n_householder`` Householder reflections (``dim x dim``);
    * ``"triangular"``: the identity or the reversal permutation (``flip``), ``dim x dim``.

    ``log|det J| = sum_i log(1 + h'_i R_ii R~_ii)``. The inverse is exact: on the span of ``Q``
    the equations are triangular and each unknown solves a monotone scalar equation.
    """

    analytic_inverse = False

    def __init__(
        self,
        dim: int,
        context_dim: int = 0,
        variant: str = "orthogonal",
        n_vectors: int | None = None,
        n_householder: int | None = None,
        flip: bool = False,
        init_scale: float = 0.1,
    ):
        super().__init__()
        variants = ("orthogonal", "householder", "triangular")
        if variant not in variants:
            raise ValueError(f"unknown Sylvester variant {variant!r}; valid: {', '.join(variants)}")
        self.dim, self.variant, self.flip = dim, variant, flip
        m = dim if variant != "orthogonal" else (n_vectors or dim)
        if not 1 <= m <= dim:
            raise ValueError(f"n_vectors must be in 1..{dim}, got {m}")
        self.m = m
        self.n_householder = n_householder or dim
        n_q = {"orthogonal": dim * m, "householder": self.n_householder * dim, "triangular": 0}[variant]
        self.n_q = n_q
        # Layout: [R (m*m), R~ (m*m), b (m), Q parameters (n_q)].
        init = init_scale * torch.randn(2 * m * m + m + n_q)
        self.params = _Amortised(init, context_dim)
        self.register_buffer("triu", torch.triu(torch.ones(m, m), 1))

    def _q(self, q_params: Tensor) -> Tensor:
        batch = q_params.shape[0]
        if self.variant == "orthogonal":
            eye = torch.eye(self.dim, self.m, dtype=q_params.dtype, device=q_params.device)
            q, _ = torch.linalg.qr(q_params.view(batch, self.dim, self.m) + eye)
            return q
        if self.variant == "householder":
            v = q_params.view(batch, self.n_householder, self.dim)
            v = v + torch.eye(self.n_householder, self.dim, dtype=v.dtype, device=v.device)
            v = v / v.norm(dim=2, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
            q = torch.eye(self.dim, dtype=v.dtype, device=v.device).expand(batch, -1, -1)
            for k in range(self.n_householder):
                vk = v[:, k]
                q = q - 2 * (q @ vk.unsqueeze(2)) * vk.unsqueeze(1)
            return q
        eye = torch.eye(self.dim, dtype=q_params.dtype, device=q_params.device)
        if self.flip:
            eye = eye.flip(1)
        return eye.expand(batch, -1, -1)

    def _unpack(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p = self.params(context)
        m, mm = self.m, self.m * self.m
        r1 = p[:, :mm].view(-1, m, m)
        r2 = p[:, mm : 2 * mm].view(-1, m, m)
        b = p[:, 2 * mm : 2 * mm + m]
        r1 = r1 * self.triu + torch.diag_embed(torch.tanh(torch.diagonal(r1, dim1=1, dim2=2)))
        r2 = r2 * self.triu + torch.diag_embed(torch.tanh(torch.diagonal(r2, dim1=1, dim2=2)))
        q = self._q(p[:, 2 * mm + m :])
        return q, r1, r2, b

    def _ladj(self, pre: Tensor, r1: Tensor, r2: Tensor) -> Tensor:
        diag = torch.diagonal(r1, dim1=1, dim2=2) * torch.diagonal(r2, dim1=1, dim2=2)
        return torch.log1p((1 - torch.tanh(pre).square()) * diag).sum(1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_vector(x, self.dim, "Sylvester")
        q, r1, r2, b = self._unpack(context)
        v = (x.unsqueeze(1) @ q).squeeze(1)  # Q^T x, shape (B, m)
        pre = (r2 @ v.unsqueeze(2)).squeeze(2) + b
        z = x + (q @ (r1 @ torch.tanh(pre).unsqueeze(2))).squeeze(2)
        return z, self._ladj(pre, r1, r2)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_vector(z, self.dim, "Sylvester")
        q, r1, r2, b = self._unpack(context)
        batch = z.shape[0]
        r1, r2, b = r1.expand(batch, -1, -1), r2.expand(batch, -1, -1), b.expand(batch, -1)
        c = (z.unsqueeze(1) @ q).squeeze(1)  # Q^T z = v + R tanh(R~ v + b), v = Q^T x.
        # Triangular structure: equation i involves v_i..v_m only; solve from the last one up.
        v = torch.zeros_like(c)
        t = torch.zeros_like(c)  # tanh(R~ v + b), filled as v is solved
        for i in range(self.m - 1, -1, -1):
            rest_r1 = (r1[:, i, i + 1 :] * t[:, i + 1 :]).sum(1)
            rest_pre = (r2[:, i, i + 1 :] * v[:, i + 1 :]).sum(1) + b[:, i]
            a1, a2 = r1[:, i, i], r2[:, i, i]
            target = c[:, i] - rest_r1
            v_i = solve_increasing(
                lambda s, a1=a1, a2=a2, c0=rest_pre: s + a1 * torch.tanh(a2 * s + c0),
                lambda s, a1=a1, a2=a2, c0=rest_pre: 1 + a1 * a2 * (1 - torch.tanh(a2 * s + c0).square()),
                target,
                target - a1.abs(),
                target + a1.abs(),
            )
            v = v.index_copy(1, torch.tensor([i], device=v.device), v_i.unsqueeze(1))
            t = t.index_copy(
                1, torch.tensor([i], device=t.device), torch.tanh(a2 * v_i + rest_pre).unsqueeze(1)
            )
        pre = (r2 @ v.unsqueeze(2)).squeeze(2) + b
        x = z - (q @ (r1 @ torch.tanh(pre).unsqueeze(2))).squeeze(2)
        return x, -self._ladj(pre, r1, r2)
