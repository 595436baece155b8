"""Continuous-time hidden-state dynamics (knows nothing of flows)."""

from .gru_ode import GRUBayes, GRUODECell

__all__ = ["GRUBayes", "GRUODECell"]
