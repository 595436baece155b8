"""The flow contract: ``Transform``, ``Compose``, ``Inverse``, ``StandardNormal`` and ``Flow``.

Conventions
-----------
* ``Transform.forward(x, context) -> (z, logabsdet)`` maps data to latent (the normalizing
  direction) and returns ``log|det dz/dx|`` per sample; ``inverse(z, context) -> (x, logabsdet)``
  maps back and returns ``log|det dx/dz|``. So ``log p(x) = log p_base(z) + logabsdet``.
* Shapes are ``(batch, dim)`` for vectors and ``(batch, C, H, W)`` for images; ``logabsdet`` is
  always ``(batch,)``.
* ``context`` is an optional conditioning matrix ``(batch, context_dim)``; transforms that do not
  use it accept and ignore it. ``Flow`` broadcasts a ``(context_dim,)`` or ``(1, context_dim)``
  context to the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..checks import positive_int

__all__ = [
    "Transform",
    "Compose",
    "Inverse",
    "StandardNormal",
    "Flow",
    "broadcast_context",
    "set_validation",
    "validation_enabled",
]

_VALIDATE = True


def set_validation(enabled: bool) -> None:
    """Turn argument checks that need a device sync (finiteness of inputs and outputs) on or off.

    On by default. Shape and type checks are always made; only the value checks, which read a
    flag back from the device, are switched off.
    """
    global _VALIDATE
    _VALIDATE = bool(enabled)


def validation_enabled() -> bool:
    """Whether finiteness checks are made (see :func:`set_validation`)."""
    return _VALIDATE


def broadcast_context(context: Tensor | None, batch_size: int) -> Tensor | None:
    """Return ``context`` as a ``(batch_size, C)`` matrix.

    A ``(C,)`` or ``(1, C)`` context is expanded to every row (no copy); a ``(batch_size, C)`` one is
    returned unchanged. Any other shape is a ``ValueError``.
    """
    if context is None:
        return None
    if not isinstance(context, Tensor):
        raise TypeError(f"context must be a torch.Tensor or None, got {type(context).__name__}")
    if context.dim() == 1:
        return context.unsqueeze(0).expand(batch_size, -1)
    if context.dim() != 2:
        raise ValueError(
            f"context must have shape (context_dim,) or (batch, context_dim), got {tuple(context.shape)}"
        )
    if context.shape[0] == batch_size:
        return context
    if context.shape[0] == 1:
        return context.expand(batch_size, -1)
    raise ValueError(
        f"context has {context.shape[0]} rows but the batch has {batch_size}; "
        "pass one context row per sample, or a single row to share"
    )


class Transform(nn.Module):
    """An invertible map with a tractable log-determinant.

    Subclasses implement :meth:`forward` (data to latent) and :meth:`inverse` (latent to data).
    ``analytic_inverse`` tells whether :meth:`inverse` is closed form (``True``) or solved
    numerically (``False``); a transform with no inverse at all raises ``NotImplementedError``.
    """

    analytic_inverse: bool = True

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no inverse")


class Compose(Transform):
    """Apply transforms in sequence (data to latent in the given order)."""

    def __init__(self, transforms: Iterable[Transform]):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        for i, t in enumerate(self.transforms):
            if not isinstance(t, Transform):
                raise TypeError(f"transforms[{i}] is {type(t).__name__}, expected a ctflow Transform")

    @property
    def analytic_inverse(self) -> bool:  # type: ignore[override]
        return all(t.analytic_inverse for t in self.transforms)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for t in self.transforms:
            x, ladj = t(x, context)
            total = total + ladj
        return x, total

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for t in reversed(self.transforms):
            z, ladj = t.inverse(z, context)
            total = total + ladj
        return z, total

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, i: int) -> Transform:
        return self.transforms[i]


class Inverse(Transform):
    """Swap the two directions of a transform.

    Used to put a transform's fast direction where it is needed: e.g. IAF is an inverted MAF step,
    and variational posteriors built from planar/radial/Sylvester layers sample in closed form.
    """

    def __init__(self, transform: Transform):
        super().__init__()
        self.base_transform = transform

    @property
    def analytic_inverse(self) -> bool:  # type: ignore[override]
        return True

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.base_transform.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.base_transform(z, context)


class StandardNormal(nn.Module):
    """Standard normal base density over an event of shape ``shape``."""

    def __init__(self, shape: int | tuple[int, ...]):
        super().__init__()
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        self._log_norm = -0.5 * math.log(2 * math.pi) * math.prod(self.shape)

    def log_prob(self, z: Tensor) -> Tensor:
        event_dims = tuple(range(1, z.dim()))
        return self._log_norm - 0.5 * z.square().sum(event_dims)

    def sample(self, n: int) -> Tensor:
        return torch.randn(n, *self.shape, dtype=self._anchor.dtype, device=self._anchor.device)


class Flow(nn.Module):
    """A normalizing flow used as a distribution: ``log_prob``, ``sample``, ``rsample_and_log_prob``.

    Args:
        transform: the data-to-latent transform (often a :class:`Compose`).
        base: base density over the latent (default: standard normal over ``dim``).
        dim: event size, an int for vectors or a shape tuple for images.
        context_dim: size of the conditioning vector (0 for an unconditional flow).

    >>> import torch
    >>> from ctflow.flows import Compose, Flow, ReversePermutation, Scaling
    >>> flow = Flow(Compose([Scaling(2), ReversePermutation(2)]), dim=2)  # the identity at first
    >>> round(flow.log_prob(torch.zeros(1, 2)).item(), 4)  # the standard normal's -log(2 pi)
    -1.8379
    >>> flow.log_prob(torch.randn(5, 2)).shape, flow.sample(3).shape
    (torch.Size([5]), torch.Size([3, 2]))
    """

    def __init__(
        self,
        transform: Transform,
        dim: int | tuple[int, ...],
        context_dim: int = 0,
        base: nn.Module | None = None,
    ):
        super().__init__()
        self.transform = transform
        self.event_shape = (dim,) if isinstance(dim, int) else tuple(dim)
        self.context_dim = int(context_dim)
        self.base = base if base is not None else StandardNormal(self.event_shape)

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def _check_input(self, x: Tensor, name: str = "x") -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"{name} must have shape (batch, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )

    def _context(self, context: Tensor | None, batch: int) -> Tensor | None:
        if self.context_dim == 0:
            if context is not None:
                raise ValueError("this flow is unconditional (context_dim=0) but a context was given")
            return None
        if context is None:
            raise ValueError(f"this flow is conditional: pass context of shape (batch, {self.context_dim})")
        context = broadcast_context(context, batch)
        if context.shape[1] != self.context_dim:
            raise ValueError(f"context must have {self.context_dim} columns, got {context.shape[1]}")
        return context

    @staticmethod
    def _check_finite(what: str, *tensors: Tensor) -> None:
        if not _VALIDATE:
            return
        ok = None
        for t in tensors:
            flag = torch.isfinite(t).all()
            ok = flag if ok is None else ok & flag
        if ok is not None and not bool(ok):  # the one read-back (a device sync)
            raise ValueError(
                f"{what} is not finite: the input has NaN/inf entries or magnitudes the flow "
                "cannot represent in this dtype (rescale the data or use float64)"
            )

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of each row of ``x``: shape ``(batch,)``."""
        self._check_input(x)
        context = self._context(context, x.shape[0])
        z, ladj = self.transform(x, context)
        lp = self.base.log_prob(z) + ladj
        self._check_finite("log_prob", x, lp)
        return lp

    def _n_and_context(self, n: int | None, context: Tensor | None) -> tuple[int, Tensor | None]:
        if n is None:
            if context is None or context.dim() != 2:
                raise ValueError("give n, or a (n, context_dim) context for one sample per row")
            n = context.shape[0]
        n = positive_int(n, "n")
        return n, self._context(context, n)

    def sample(self, n: int | None = None, context: Tensor | None = None) -> Tensor:
        """Draw ``n`` samples, shape ``(n, *event_shape)``; a ``(n, C)`` context gives one per row."""
        n, context = self._n_and_context(n, context)
        with torch.no_grad():
            x, _ = self.transform.inverse(self.base.sample(n), context)
        return x

    def rsample_and_log_prob(
        self, n: int | None = None, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparametrised samples and their log-density (what a variational posterior needs)."""
        n, context = self._n_and_context(n, context)
        z = self.base.sample(n)
        x, ladj = self.transform.inverse(z, context)
        return x, self.base.log_prob(z) - ladj
