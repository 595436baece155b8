"""Continuous-time hidden-state dynamics (knows nothing of flows)."""

from .gru_ode import GRUBayes, GRUODECell
from .intervals import integrate_intervals, steps_for

__all__ = ["GRUBayes", "GRUODECell", "integrate_intervals", "steps_for"]
