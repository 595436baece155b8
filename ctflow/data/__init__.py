"""Datasets: seedable 2-D toy densities (numpy only, no heavy imports)."""

from .toy2d import TOY2D, checkerboard, eight_gaussians, load_toy2d, rings, true_log_density, two_moons

__all__ = [
    "TOY2D",
    "checkerboard",
    "eight_gaussians",
    "load_toy2d",
    "rings",
    "true_log_density",
    "two_moons",
]
