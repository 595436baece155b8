"""Sequence models by name, rebuilt from a JSON-able configuration (for saving and loading)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import SequenceModel
from .gru_ode_bayes import GRUODEBayes
from .latent_ode import LatentODE
from .latent_sde import LatentSDE

__all__ = ["MODELS", "build_model", "register_model"]

MODELS: dict[str, Callable[..., SequenceModel]] = {
    "gru_ode_bayes": GRUODEBayes,
    "latent_ode": LatentODE,
    "latent_sde": LatentSDE,
}


def register_model(name: str, factory: Callable[..., SequenceModel]) -> None:
    """Make ``factory(n_variables, **kwargs)`` available as ``build_model(name, ...)``."""
    if not isinstance(name, str) or not name:
        raise ValueError("a model name must be a non-empty string")
    MODELS[name] = factory


def build_model(name: str, n_variables: int, **kwargs: Any) -> SequenceModel:
    """The sequence model ``name`` over ``n_variables`` variables (kwargs go to its constructor)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name](n_variables, **kwargs)
