"""Assembling multi-scale flows: levels of steps, each but the last ending in a :class:`Split`."""

from __future__ import annotations

from collections.abc import Callable

from ctflow.checks import positive_int
from ctflow.flows.base import Compose, Transform

from .layers import Split, Unsqueeze
from .model import latent_shape

__all__ = ["LevelBuilder", "multiscale"]

Shape = tuple[int, int, int]
LevelBuilder = Callable[[int, Shape, bool], list[Transform]]
"""``(level, input shape, is_last) -> transforms`` of one level (squeezes included)."""


def multiscale(shape: Shape, n_levels: int, make_level: LevelBuilder) -> Transform:
    """``make_level``'s transforms for level 0, then a split whose kept half goes to level 1, and so on.

    The factored-out half of every level leaves the stack (whitened by its conditional prior), so
    deeper levels work on fewer channels; the latent has the shape of level 0's output.
    ``make_level`` gets the input shape of its level and returns a list that may contain squeezes.
    """
    n_levels = positive_int(n_levels, "n_levels")

    def build(level: int, in_shape: Shape) -> Transform:
        last = level == n_levels - 1
        transforms = make_level(level, in_shape, last)
        out = latent_shape(Compose(transforms), in_shape)
        if not last:
            c, h, w = out
            kept = (c // 2, h, w)
            inner = build(level + 1, kept)
            # The split puts the inner latent back beside the factored-out half, so undo the
            # inner levels' squeezes (a permutation) to give it the kept half's shape.
            while latent_shape(inner, kept) != kept:
                inner = Compose([*inner.transforms, Unsqueeze()])
            transforms.append(Split(c, inner))
        return Compose(transforms)

    return build(0, tuple(shape))
