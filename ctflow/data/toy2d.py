"""Seedable 2-D toy densities for testing density estimators.

Every sampler returns an ``(n, 2)`` float32 numpy array of independent draws, scaled so the data
sit roughly within ``[-3, 3]^2``. The densities are known, so :func:`true_log_density` gives the
exact (or numerically integrated) log-density of any point: the mean of ``-true_log_density`` over
a large test set is the best NLL a model can reach.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..checks import choice, integer, positive_int, real_number

__all__ = [
    "two_moons",
    "eight_gaussians",
    "checkerboard",
    "rings",
    "TOY2D",
    "load_toy2d",
    "true_log_density",
]

# Two moons are shifted and scaled so that the noiseless shape has mean 0 and unit RMS spread.
_MOONS_CENTER = np.array([0.5, 0.25])
_MOONS_SCALE = math.sqrt(2.0)
_EIGHT_RADIUS = 2.0
_EIGHT_STD = 0.2
_RING_RADII = (0.75, 1.5, 2.25)
_RING_NOISE = 0.08
_CHECKER_SIZE = 4  # a 4 x 4 board of unit squares covering [-2, 2]^2


def _rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(integer(seed, "seed", allow_none=True))


def _moon_centres(t: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Points on the noiseless moons (already standardised) at angles ``t`` in ``[0, pi]``."""
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    return (np.stack([x, y], axis=-1) - _MOONS_CENTER) * _MOONS_SCALE


def two_moons(n: int, noise: float = 0.05, seed: int | None = None) -> np.ndarray:
    """Two interleaving half circles with isotropic Gaussian noise.

    The shape is that of ``sklearn.datasets.make_moons`` but sampled i.i.d. (uniform angle, each
    moon with probability 1/2), then centred and scaled by ``sqrt(2)`` to unit RMS spread.
    ``noise`` is the noise standard deviation before that scaling (as in scikit-learn).
    """
    n = positive_int(n, "n")
    noise = real_number(noise, "noise", positive=False)
    rng = _rng(seed)
    t = rng.uniform(0.0, math.pi, n)
    upper = rng.random(n) < 0.5
    x = _moon_centres(t, upper) + rng.normal(0.0, noise * _MOONS_SCALE, (n, 2))
    return x.astype(np.float32)


def _eight_centres() -> np.ndarray:
    angles = np.arange(8) * (math.pi / 4)
    return _EIGHT_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def eight_gaussians(n: int, seed: int | None = None) -> np.ndarray:
    """Equal mixture of 8 Gaussians (std 0.2) with means evenly spaced on a circle of radius 2."""
    n = positive_int(n, "n")
    rng = _rng(seed)
    centres = _eight_centres()[rng.integers(0, 8, n)]
    return (centres + rng.normal(0.0, _EIGHT_STD, (n, 2))).astype(np.float32)


def checkerboard(n: int, seed: int | None = None) -> np.ndarray:
    """Uniform density on the 8 "black" unit squares of a 4 x 4 board covering ``[-2, 2]^2``.

    The density is 1/8 on its support, so the best achievable NLL is ``log 8`` (about 2.079 nats).
    """
    n = positive_int(n, "n")
    rng = _rng(seed)
    k = _CHECKER_SIZE
    row = rng.integers(0, k, n)
    # In each row the black squares are the columns with the parity of the row.
    col = 2 * rng.integers(0, k // 2, n) + row % 2
    cells = np.stack([col, row], axis=1)
    x = cells + rng.random((n, 2)) - k / 2
    return x.astype(np.float32)


def rings(n: int, seed: int | None = None) -> np.ndarray:
    """Three concentric circles (radii 0.75, 1.5, 2.25, equally likely) with Gaussian noise (std 0.08)."""
    n = positive_int(n, "n")
    rng = _rng(seed)
    radius = np.asarray(_RING_RADII)[rng.integers(0, len(_RING_RADII), n)]
    angle = rng.uniform(0.0, 2 * math.pi, n)
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return (x + rng.normal(0.0, _RING_NOISE, (n, 2))).astype(np.float32)


TOY2D: dict[str, Callable[..., np.ndarray]] = {
    "two_moons": two_moons,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "rings": rings,
}
"""Samplers by name; each is called as ``sampler(n, seed=seed)``."""


def _check_name(name: str) -> str:
    return choice(name, "toy dataset", TOY2D)


def load_toy2d(name: str, n: int, seed: int | None = None) -> np.ndarray:
    """Draw ``n`` points of the toy dataset ``name`` (one of :data:`TOY2D`) as float32 ``(n, 2)``."""
    return TOY2D[_check_name(name)](positive_int(n, "n"), seed=seed)


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def _log_mixture(x: np.ndarray, centres: np.ndarray, std: float, chunk: int = 2048) -> np.ndarray:
    """log of the equal-weight mixture of isotropic Gaussians N(centre, std^2 I) at each row of x."""
    out = np.empty(len(x))
    log_norm = -math.log(2 * math.pi * std**2) - math.log(len(centres))
    for i in range(0, len(x), chunk):
        d2 = ((x[i : i + chunk, None, :] - centres[None, :, :]) ** 2).sum(-1)
        out[i : i + chunk] = log_norm + _logsumexp(-0.5 * d2 / std**2, axis=1)
    return out


def true_log_density(name: str, x: np.ndarray, *, noise: float = 0.05, n_quad: int = 2048) -> np.ndarray:
    """Log-density of the toy distribution ``name`` at each row of ``x`` (shape ``(n, 2)``).

    Exact for ``eight_gaussians`` and ``checkerboard`` (``-inf`` off the board's black squares);
    for ``two_moons`` and ``rings`` the integral over the curve is taken with ``n_quad`` points
    per curve (the error is far below the Monte Carlo error of a test-set mean). ``noise`` is the
    ``two_moons`` noise level the data were drawn with.
    """
    _check_name(name)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must have shape (n, 2), got {x.shape}")
    if name == "eight_gaussians":
        return _log_mixture(x, _eight_centres(), _EIGHT_STD)
    if name == "checkerboard":
        cell = np.floor(x + _CHECKER_SIZE / 2)
        inside = np.all((cell >= 0) & (cell < _CHECKER_SIZE), axis=1)
        black = (cell.sum(1) % 2) == 0
        return np.where(inside & black, -math.log(_CHECKER_SIZE**2 / 2), -np.inf)
    # Midpoint rule over the angle; both curves are traversed at uniform speed.
    if name == "two_moons":
        if not noise > 0:
            raise ValueError("true_log_density('two_moons') needs noise > 0")
        t = (np.arange(n_quad) + 0.5) * (math.pi / n_quad)
        centres = np.concatenate(
            [_moon_centres(t, np.ones_like(t, bool)), _moon_centres(t, np.zeros_like(t, bool))]
        )
        return _log_mixture(x, centres, noise * _MOONS_SCALE)
    t = (np.arange(n_quad) + 0.5) * (2 * math.pi / n_quad)
    circle = np.stack([np.cos(t), np.sin(t)], axis=1)
    centres = np.concatenate([r * circle for r in _RING_RADII])
    return _log_mixture(x, centres, _RING_NOISE)
